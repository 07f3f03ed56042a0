"""A comparison's numbers: one row per run read from its folder, and per variant the mean, spread and paired
difference to the reference variant over seeds.

Everything is read from the output folder (``plan.json`` and the run folders); nothing here draws or writes.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from maskkit.compare.files import (DONE, EVAL_FILE, STATUS_FILE, TIMING_FILE, checkpoint_step, read_json,
                                   training_time)
from maskkit.compare.plan import Plan
from maskkit.engine.trainer import CHECKPOINT_NAME

ACCURACIES = (("knn_top1", "kNN top-1 (%)"), ("linear_top1", "linear top-1 (%)"))
RUN_COLUMNS = ("variant", "seed", "status", "steps", "epochs", "tokens_per_step", "encoder_tokens", "knn_top1",
               "linear_top1", "random_init_knn_top1", "random_init_linear_top1", "final_loss", "images_per_s",
               "train_time_s", "eval_time_s", "error", "run_dir")
NUMBERS = ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1", "final_loss",
           "images_per_s", "train_time_s", "eval_time_s")


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, one per step (a step logged twice, by a session that crashed after
    logging it and the resume that redid it, keeps its last record), in step order."""
    records: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[int(record["step"])] = record
            except (ValueError, KeyError, TypeError):
                continue
    return [records[s] for s in sorted(records)]


def collect(out_dir: Path, plan: Plan) -> tuple[list[dict], dict[str, list[dict]]]:
    """Per-run rows (see :data:`RUN_COLUMNS`) and per-run loss curves (``{run_id: metrics records}``)."""
    rows, curves = [], {}
    for run in plan.runs:
        vplan = plan.variant(run.variant)
        run_dir = run.run_dir(out_dir)
        status = read_json(run_dir / STATUS_FILE) or {}
        scores = read_json(run_dir / EVAL_FILE) or {}
        step = checkpoint_step(run_dir / CHECKPOINT_NAME) or 0
        finished = status.get("status") == DONE and bool(scores) and step >= run.steps
        if finished:
            state = "done"
        elif status.get("status") == "failed":
            state = "failed"
        elif step == 0:
            state = "missing"
        else:
            state = f"at step {step}" if step < run.steps else "not evaluated"
        metrics = read_metrics(run_dir / "metrics.jsonl")
        curves[run.run_id] = metrics
        train_time = training_time(read_json(run_dir / TIMING_FILE), final_step=run.steps) if finished else None
        row: dict[str, Any] = {
            "variant": run.variant, "seed": run.seed, "status": state, "steps": run.steps,
            "epochs": round(run.steps / plan.steps_per_epoch, 4), "tokens_per_step": vplan.tokens_per_step,
            "encoder_tokens": run.steps * vplan.tokens_per_step,
            "final_loss": metrics[-1].get("loss_avg", metrics[-1].get("loss")) if metrics and finished else None,
            "images_per_s": (run.steps * plan.effective_batch / train_time) if train_time else None,
            "train_time_s": train_time, "eval_time_s": scores.get("eval_time_s") if finished else None,
            "error": status.get("error") if status.get("status") == "failed" else None,
            "run_dir": str(run_dir.relative_to(out_dir)),
        }
        for key in ("knn_top1", "linear_top1", "random_init_knn_top1", "random_init_linear_top1"):
            row[key] = scores.get(key) if finished else None
        rows.append(row)
    return rows, curves


def seed_stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def reference_variant(plan: Plan) -> str:
    """The variant the others are compared with: the budget's reference, else the first one."""
    return plan.reference or plan.variants[0].name


def summarize(plan: Plan, rows: list[dict]) -> list[dict]:
    """One entry per variant: cost, and mean/std/n of every number over its finished seeds; ``delta_*``: the
    paired difference to the reference variant (same seed, same data order), mean/std/n over seeds."""
    ref = reference_variant(plan)
    by_key = {(r["variant"], r["seed"]): r for r in rows}
    out = []
    for v in plan.variants:
        mine = [r for r in rows if r["variant"] == v.name]
        entry: dict[str, Any] = {
            "variant": v.name, "changes": v.changes, "masker": v.masker, "mask_ratio": v.mask_ratio,
            "tokens_per_image": v.tokens_per_image, "tokens_per_step": v.tokens_per_step, "steps": v.steps,
            "epochs": round(v.epochs, 4), "encoder_tokens": v.encoder_tokens,
            "runs": len(mine), "finished": sum(r["status"] == "done" for r in mine),
        }
        for key in NUMBERS:
            entry[key] = seed_stats([r[key] for r in mine])
        for key, _ in ACCURACIES:
            diffs = [r[key] - by_key[(ref, r["seed"])][key] for r in mine
                     if r[key] is not None and by_key.get((ref, r["seed"]), {}).get(key) is not None]
            entry[f"delta_{key}"] = seed_stats(diffs) if v.name != ref else None
        out.append(entry)
    return out


def accuracy_keys(plan: Plan) -> list[tuple[str, str]]:
    """The accuracies the plan measures: ``(key, column label)``."""
    return [(k, label) for k, label in ACCURACIES if getattr(plan.eval, k.split("_")[0])]
