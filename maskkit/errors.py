"""Errors that reach users as one line: ``file: key.path: what was expected, got what``.

The CLI prints ``str(error)`` and exits with status 2 (``--debug`` shows the traceback). Library code raises
these instead of bare ``ValueError`` wherever the message should name a recipe file or key.
:func:`describe_failure` is the one place that turns *any* exception into the line a user sees and the exit
status: expected failures (maskkit's errors, the OS's, a plugin's) exit 2, anything else is an internal error
(exit 1, rerun with ``--debug``).
"""

from __future__ import annotations

import difflib
import errno
import re
import signal
from pathlib import Path
from typing import Any, Callable


class MaskkitError(Exception):
    """Base class of every error maskkit reports to a user."""


class ConfigError(MaskkitError):
    """A recipe value is wrong.

    ``key`` is the dotted path inside the recipe (``masker.ratio``); ``file`` the recipe file, if any.
    Components raise it with a key relative to themselves (``ConfigError("ratio", ...)``); the builder
    prefixes the component's section (``masker.``) and the file name before it reaches the user.
    """

    def __init__(self, key: str, message: str, *, file: str | None = None):
        self.key = key
        self.message = message
        self.file = file
        super().__init__(self._format())

    def _format(self) -> str:
        where = f"{self.file}: " if self.file else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"

    def within(self, section: str | None = None, file: str | None = None) -> "ConfigError":
        """The same error with ``section.`` prefixed to the key and the file set (if not set yet)."""
        key = self.key
        if section:
            key = f"{section}.{key}" if key else section
        return ConfigError(key, self.message, file=self.file or file)


class UnknownComponentError(ConfigError):
    """A registry name that no loaded plugin provides."""


class PluginError(MaskkitError):
    """A plugin misbehaves: a name clash, a hook returning the wrong type, a misspelled hook."""


class CheckpointError(MaskkitError):
    """A checkpoint file is missing, corrupt, or not one of ours."""


class RunFolderError(MaskkitError):
    """A run folder cannot be used: another run holds it, it already holds a run, or it is a file."""


class TrainingError(MaskkitError):
    """The run cannot go on (a non-finite loss, for instance)."""


def expected(what: str, got: Any) -> str:
    """The standard phrase ``expected WHAT, got VALUE``."""
    return f"expected {what}, got {got!r}"


def did_you_mean(word: Any, choices: Any) -> str:
    """`` (did you mean X?)`` naming the closest of ``choices`` to a misspelled ``word``, else ``""``: the hint
    every "unknown key / argument / hook" line carries."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class NoPixelFormError(MaskkitError, ValueError):
    """A reconstruction picture was asked of a model whose target has no pixel form (HOG, features)."""


class UnreadableImageError(MaskkitError):
    """An image file that cannot be decoded (corrupt, empty, not an image). ``path`` and ``reason`` are kept
    as attributes so the loader can carry them out of a worker process (see ``data.on_bad_image``)."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: unreadable image ({reason})")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class RunInterrupted(MaskkitError):
    """Training stopped on a signal (SIGINT, SIGTERM) at a step boundary, after saving a checkpoint.

    ``resume`` is the command that continues the run; the CLI exits with ``128 + signum`` like a shell.
    ``during``: what the signal stopped when that was not a training loop at a step boundary (``while evaluating
    r75/seed0, trained to step 4``: said instead of ``after step 4``).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None, resume: str | None,
                 during: str | None = None):
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        self.resume = resume
        self.during = during
        super().__init__(self.describe())

    def describe(self) -> str:
        """The one line the CLI prints: the signal, what it stopped, what was saved and how to resume."""
        saved = (f"checkpoint of step {self.step} saved in {self.checkpoint}; resume with: {self.resume}"
                 if self.resume else "nothing was saved (no step trained yet); the run folder can be reused as it is")
        return f"interrupted by {signal.Signals(self.signum).name} {self.during or f'after step {self.step}'}; {saved}"


class WorkersInterrupted(RunInterrupted):
    """A comparison running its runs in worker processes (``--gpus``) stopped on a signal: the workers were
    stopped too (each saving its checkpoint at its next step boundary), and ``resume`` continues every run;
    ``runs``: the ids of the runs the workers were running."""

    def __init__(self, signum: int, runs: tuple[str, ...], resume: str):
        self.runs = runs
        super().__init__(signum, 0, None, resume)

    def describe(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name} while {len(self.runs)} worker(s) ran "
                f"{', '.join(self.runs)}; each was stopped and keeps its last checkpoint (its worker.log says which); "
                f"resume with: {self.resume}")


_OS_HINTS = {
    errno.ENOSPC: "no space left on device (disk full); free some space and resume",
    errno.EDQUOT: "disk quota exceeded; free some space and resume",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of this path is a file, expected a folder",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, without terminal colour codes, at most ``limit`` characters."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def describe_os_error(exc: OSError) -> str:
    """``path: what is wrong with it`` for an OS error (disk full, permissions, a file where a folder should be)."""
    what = _OS_HINTS.get(exc.errno) or (exc.strerror or first_line(str(exc)) or type(exc).__name__).lower()
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {what}" if paths else what


def plugin_place(plugin: str, place: str) -> str:
    """``place`` (``file:line``) as a plugin's failure names it: ``line N`` when the file is the plugin itself (a
    one-file plugin, already named by the failure), else ``file:line``."""
    return f"line {place.removeprefix(f'{plugin}:')}" if place.startswith(f"{plugin}:") else place


def describe_failure(exc: BaseException, blame: Callable[[BaseException], tuple[str, str] | None] | None = None
                     ) -> tuple[int, str]:
    """The exit status and the one line a user sees for ``exc`` (without the ``maskkit: error:`` prefix).

    * maskkit's own errors (bad recipes, checkpoints, data...) and OS errors: status 2;
    * an exception raised inside a plugin's code (``blame(exc)`` gives the plugin's name and the ``file:line``
      of its code that raised, :meth:`maskkit.Registry.plugin_of`): status 2, naming both;
    * a run stopped by a signal: ``128 + signum`` (130 for Ctrl-C);
    * anything else is a bug of maskkit: "internal error", status 1, and a hint to rerun with ``--debug``.
    """
    if isinstance(exc, RunInterrupted):
        return 128 + exc.signum, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, MaskkitError):
        return 2, first_line(str(exc), limit=2000) or type(exc).__name__
    if isinstance(exc, OSError):
        return 2, describe_os_error(exc)
    what = f"{type(exc).__name__}: {first_line(str(exc))}".rstrip(": ")
    blamed = blame(exc) if blame is not None else None
    if blamed is not None:
        plugin, place = blamed
        return 2, f"plugin {plugin!r} failed: {what} ({plugin_place(plugin, place)})"
    if type(exc).__name__ == "OutOfMemoryError":
        return 2, f"out of memory: {first_line(str(exc), 200)}; try a smaller train.batch_size"
    return 1, f"internal error: {what} (rerun with --debug for the traceback, and please report it)"


class MaskError(PluginError):
    """A masker returned something other than what it declares: not a bool ``[B, N]`` tensor, or a hidden count
    that differs from its ``num_hidden`` (which would let a sparse encoder see hidden pixels)."""
