"""The one plain line a comparison prints per run event, with or without progress bars.

A run starts (``[2/8] block50/seed0: training (156 steps)``) and ends: finished with its scores
(``[2/8] block50/seed0: done: kNN top-1 71.45%, linear top-1 77.05%, final loss 0.4050, 268 images/s, training
4.9 min, evaluation 41.2 s``) or failed with its reason and where its log is. A run in a worker process
(``--gpus``) gets its lines from the runner, which learns its outcome, prefixed with its GPU (``[gpu 1] ...``).
Everything is read from the run's folder, as the report reads it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from maskkit.compare.files import DONE, PARTIAL, STATUS_FILE, TRAINED
from maskkit.compare.formats import loss, pct, rate, secs
from maskkit.compare.plan import Plan, RunPlan
from maskkit.compare.results import accuracy_keys, run_row

WORKER_LOG = "worker.log"  # a worker process's output, in its run's folder


def position(index: int, total: int, slot: str | None = None) -> str:
    """``[i/n]`` (``index`` counts from 0), after ``[gpu SLOT]`` for a run in a worker process."""
    where = f"[gpu {slot}] " if slot is not None else ""
    return f"{where}[{index + 1}/{total}]"


def started_line(where: str, run: RunPlan, state: str, step: int, log: Path | None = None) -> str:
    """What a run about to go does (``state``/``step``: where it stands), and its worker's log if it has one."""
    what = {PARTIAL: f"resuming at step {step}", TRAINED: "evaluating"}.get(state, "training")
    return f"{where} {run.run_id}: {what} ({run.steps} steps{f'; log: {log}' if log else ''})"


def scores_text(row: dict, plan: Plan) -> str:
    """A finished run's numbers (a row of :func:`~maskkit.compare.results.run_row`), those it has."""
    parts = [f"{label.split(' (')[0]} {pct(100 * row[key])}%" for key, label in accuracy_keys(plan)
             if row.get(key) is not None]
    for key, text in (("final_loss", lambda x: f"final loss {loss(x)}"),
                      ("images_per_s", lambda x: f"{rate(x)} images/s"),
                      ("train_time_s", lambda x: f"training {secs(x)}"),
                      ("eval_time_s", lambda x: f"evaluation {secs(x)}")):
        if row.get(key) is not None:
            parts.append(text(row[key]))
    return ", ".join(parts)


def ended_line(where: str, run: RunPlan, plan: Plan, out_dir: Path, state: str, error: str | None,
               log: Path | None) -> str:
    """A run's outcome: ``done`` and its scores, or ``failed`` (or the state it was left in), the reason and
    ``log``, where to look."""
    if state == DONE:
        row, _ = run_row(out_dir, plan, run)
        return f"{where} {run.run_id}: done: {scores_text(row, plan) or 'no scores'}"
    reason = f": {error}" if error else ""
    return f"{where} {run.run_id}: {state}{reason}{f'; log: {log}' if log else ''}"


def run_log(run: RunPlan, out_dir: Path, worker: bool) -> Path:
    """Where a run's log is: its worker's ``worker.log``; in this process, its ``metrics.jsonl`` (its losses per
    step) once it has one, else its ``compare.json`` (its status, and a failure's reason and recipe)."""
    run_dir = run.run_dir(out_dir)
    if worker:
        return run_dir / WORKER_LOG
    metrics = run_dir / "metrics.jsonl"
    return metrics if metrics.is_file() else run_dir / STATUS_FILE


def say(console: Console, line: str) -> None:
    """Print ``line`` as it is: no markup, no highlighting, never wrapped (one line in a log file)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)
