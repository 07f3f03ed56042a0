"""The files of a comparison's output folder: their names, and reading and writing them safely.

Shared by the runner (which writes them) and the report (which reads them), so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from maskkit.engine.run_folder import write_text_atomic

STATUS_FILE = "compare.json"
TIMING_FILE = "timing.json"
EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.pt"
PLAN_FILE = "plan.json"

PENDING, PARTIAL, TRAINED, DONE, FAILED = "pending", "partial", "trained", "done", "failed"


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write atomically: readers (and a crash) see the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def checkpoint_step(path: Path) -> int | None:
    """The step of a maskkit checkpoint, without reading its tensors (memory-mapped); None if unreadable."""
    if not path.is_file():
        return None
    for mmap in (True, False):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return int(state["step"])
        except Exception:  # not a zip checkpoint (mmap), truncated, foreign
            continue
    return None


def training_time(timing: dict | None, final_step: int | None = None) -> float | None:
    """Seconds of training behind the final checkpoint: for each session, its time up to the checkpoint the
    next session resumed from (the last session: up to ``final_step`` or its last checkpoint)."""
    if not isinstance(timing, dict) or not timing.get("sessions"):
        return None
    sessions = timing["sessions"]
    total = 0.0
    for i, session in enumerate(sessions):
        end = sessions[i + 1]["start_step"] if i + 1 < len(sessions) else final_step
        marks = [(int(s), float(t)) for s, t in session.get("marks", []) if end is None or s <= end]
        total += max((t for _, t in marks), default=0.0)
    return total
