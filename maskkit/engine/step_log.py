"""What a training loop reports as it goes: one :class:`StepLog` serves pretraining (:class:`~maskkit.engine.
trainer.Trainer`) and fine-tuning (:class:`~maskkit.finetune.FinetuneTrainer`).

Between two records the loss of every step is summed on the device (no host sync per step); a record takes the
window's mean over all processes (one collective), its images/s (wall clock, checkpoints written in the window
included; ``checkpoint_s`` says how much of the window they took), appends a line to ``metrics.jsonl`` (the main
process only) and moves the progress bar.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class StepLog:
    """The loss window, ``metrics.jsonl`` and the progress bar of one training session; a context manager
    around the loop (it opens the metrics file for appending and shows the bar, and closes both).

    ``label``: the bar's name; ``start_step`` of ``total_steps``: where this session starts (a resumed run
    continues its bar and its file); ``effective_batch``: images per optimizer step over all processes;
    ``window``: this process's open window when the run was checkpointed (:meth:`window_state`), so that a
    resumed run's first ``loss_avg`` averages the same steps, in the same order, as the uninterrupted run's."""

    def __init__(self, run_dir: str | Path, dist: Any, device: torch.device, *, label: str, total_steps: int,
                 start_step: int, effective_batch: int, steps_per_epoch: int, console: Console | None = None,
                 show: bool = True, window: tuple[float, int] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.dist = dist
        self.effective_batch = effective_batch
        self.steps_per_epoch = steps_per_epoch
        loss_sum, steps = window or (0.0, 0)
        self.window_loss = torch.tensor(float(loss_sum), device=device)  # the window's step losses, summed on device
        self.window_steps = int(steps)
        self.timed_steps = 0  # the window's steps that this session trained (and timed)
        self.checkpoint_seconds = 0.0  # of the window's wall time, what writing checkpoints took
        self.start_time = self.window_start = time.perf_counter()
        self._file: IO[str] | None = None
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}{task.fields[aux]}  lr {task.fields[lr]:.2e}  "
                                            "{task.fields[ips]:.0f} img/s"),
                                 TimeRemainingColumn(), console=console, disable=not (show and dist.is_main))
        self.task = self.progress.add_task(label, total=total_steps, completed=start_step, loss=float("nan"),
                                           lr=0.0, ips=0.0, aux="")

    def __enter__(self) -> "StepLog":
        if self.dist.is_main:
            self._file = self.path.open("a")
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.__exit__(*exc_info)
        if self._file is not None:
            self._file.close()
            self._file = None

    def window_state(self) -> tuple[float, int]:
        """``(sum of the open window's losses, its steps)`` on this process, for a checkpoint (a host sync)."""
        return float(self.window_loss), self.window_steps

    def add(self, step_loss: torch.Tensor) -> None:
        """One optimizer step's loss (a device scalar) joins the window."""
        self.window_loss += step_loss
        self.window_steps += 1
        self.timed_steps += 1

    def add_checkpoint_time(self, seconds: float) -> None:
        """A checkpoint written in this window took ``seconds`` (part of its wall time, logged apart as
        ``checkpoint_s``, so that a reader can tell the steps' rate from the cost of saving)."""
        self.checkpoint_seconds += seconds

    def record(self, step: int, *, loss: float, lr: float, parts: dict[str, float] | None = None) -> dict:
        """Close the window at ``step`` (collective: every process calls it): ``loss`` is the step's loss
        (already averaged over processes), ``parts`` named loss terms (``loss_main``, ``aux/...``), logged and
        shown beside it. Returns the record written to ``metrics.jsonl``."""
        now = time.perf_counter()
        parts = parts or {}
        record = {"step": step, "epoch": step / self.steps_per_epoch, "loss": loss, **parts,
                  "loss_avg": float(self.dist.mean(self.window_loss)) / max(self.window_steps, 1), "lr": lr,
                  "images_per_s": self.timed_steps * self.effective_batch / max(now - self.window_start, 1e-9),
                  "checkpoint_s": self.checkpoint_seconds, "time": now - self.start_time}
        if self._file is not None:
            try:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
            except OSError as exc:  # a full disk, say: the one-line error names the file
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        aux = "".join(f"  {k.removeprefix('aux/')} {v:.4f}" for k, v in parts.items() if k.startswith("aux/"))
        self.progress.update(self.task, completed=step, loss=loss, lr=lr, ips=record["images_per_s"], aux=aux)
        self.window_loss.zero_()
        self.window_steps, self.timed_steps, self.window_start, self.checkpoint_seconds = 0, 0, now, 0.0
        return record
