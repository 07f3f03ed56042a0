"""Stopping a training loop on SIGINT/SIGTERM at a step boundary, every process at the same one.

Both loops (pretraining, :class:`~maskkit.engine.trainer.Trainer`; fine-tuning,
:class:`~maskkit.finetune.FinetuneTrainer`) use one :class:`SignalStop`: ``install`` before the loop,
``requested(dist)`` at every step boundary (then the loop saves a checkpoint and raises
``interrupted(...)``, a :class:`~maskkit.errors.RunInterrupted`), ``settle()`` after the last step,
``restore()`` when the run ends.

Work that has no step boundary (a comparison's evaluation of a trained run) runs under :func:`raise_on_signal`:
the first SIGINT/SIGTERM raises :class:`SignalReceived` where the work is, so the caller can say how to
continue instead of the process ending without a word (SIGTERM's default).
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from maskkit.errors import RunInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def put_back(handlers: dict[int, Any]) -> None:
    """Set each signal's handler in ``handlers`` (from ``signal.getsignal``) again; the default for one set from
    C, which Python cannot put back (``getsignal`` answers None for it)."""
    for sig, handler in handlers.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def catch(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Set ``handler`` for SIGINT and SIGTERM and return the handlers it replaced (for :func:`put_back`); outside
    the main thread, which alone can catch signals, nothing is set and ``{}`` is returned."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    return previous


class SignalReceived(BaseException):
    """Raised by :func:`raise_on_signal`'s handler. A ``BaseException``, like ``KeyboardInterrupt``: no ``except
    Exception`` of the interrupted work takes it for that work's own failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def raise_on_signal() -> Iterator[None]:
    """Within: the first SIGINT or SIGTERM raises :class:`SignalReceived` in the main thread, wherever it is
    (the handlers found on entry are put back first, so a second signal acts as it did before). A loop's
    :class:`SignalStop` installed within takes the signals over while it runs and gives them back. Outside the
    main thread (which alone can catch signals) nothing is caught."""

    def on_signal(signum: int, frame: Any) -> None:
        put_back(previous)
        raise SignalReceived(signum)

    previous = catch(on_signal)
    try:
        yield
    finally:
        put_back(previous)


class SignalStop:
    """The first SIGINT/SIGTERM asks the loop to stop at its next step boundary; the handlers are then put back,
    so a second signal acts at once (Ctrl-C twice). Only the main thread can catch signals: elsewhere
    :meth:`install` does nothing.

    Under torchrun every rank must stop at the same step, within torchrun's 30 s between its SIGTERM and SIGKILL:
    each boundary reads the max of the ranks' signals started at the previous boundary (it ran during the step:
    no wait) and starts the next one, so a signal stops every rank at the second boundary after it arrives."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal that asked for the stop
        self._pending: Callable[[], int] | None = None  # the ranks' max started at the last boundary
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (in the main thread only)."""
        self._previous = catch(self._on_signal)

    def restore(self) -> None:
        """Put the handlers found by :meth:`install` back (see :func:`put_back`)."""
        previous, self._previous = self._previous, {}
        put_back(previous)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.restore()

    def requested(self, dist: Any) -> bool:
        """Whether to stop at this step boundary (``dist``: the run's :class:`~maskkit.engine.distributed.
        DistContext`; a collective under torchrun, which every rank must call at every boundary)."""
        if not dist.enabled:
            return self.signum is not None
        signum = self._pending() if self._pending is not None else 0
        self._pending = None
        if signum:
            self.signum = signum
            return True
        self._pending = dist.start_max(self.signum or 0)
        return False

    def settle(self) -> None:
        """Finish the ranks' stop request started at the last boundary (every rank started it) once the loop
        has ended without stopping."""
        if self._pending is not None:
            self._pending()
            self._pending = None

    def interrupted(self, step: int, checkpoint: Path | None, command: str) -> RunInterrupted:
        """The error a loop stopped at ``step`` raises: the signal, the ``checkpoint`` saved (None if there is
        none) and the command that resumes from it (``maskkit COMMAND --resume CHECKPOINT``)."""
        resume = f"maskkit {command} --resume {shlex.quote(str(checkpoint))}" if checkpoint is not None else None
        return RunInterrupted(self.signum or signal.SIGINT, step, checkpoint, resume)
