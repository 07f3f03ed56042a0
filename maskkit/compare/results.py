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

from maskkit.compare.files import DONE, EVAL_FILE, STATUS_FILE, TIMING_FILE, checkpoint_step, read_json, training_time
from maskkit.compare.plan import Plan, RunPlan
from maskkit.engine.run_folder import CHECKPOINT_NAME

ACCURACIES = (("knn_top1", "kNN top-1 (%)"), ("linear_top1", "linear top-1 (%)"),
              ("finetune_top1", "fine-tune top-1 (%)"))  # each shown when plan.eval.<first word> is set
RUN_COLUMNS = ("variant", "seed", "status", "steps", "epochs", "tokens_per_step", "encoder_tokens", "knn_top1",
               "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1",
               "random_init_finetune_top1", "final_loss",
               "images_per_s", "masker_ms_per_batch", "train_time_s", "eval_time_s", "error", "non_finite", "run_dir")
NUMBERS = ("knn_top1", "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1",
           "random_init_finetune_top1", "final_loss",
           "images_per_s", "masker_ms_per_batch", "train_time_s", "eval_time_s")
AUX_PREFIX = "aux/"  # metrics.jsonl keys of auxiliary losses: aux/<component>.<name>
WARMUP_MOST = 0.5  # a warm-up longer than this share of the steps trained is called out
UNEQUAL = 1.1  # variants whose steps or encoder tokens differ by more than this factor are called out
STALE = "needs re-evaluation"  # a trained run whose eval.json was made with other evaluation settings
NON_FINITE = "non-finite score"  # a finished run with a NaN or infinite number: counted nowhere, named in the report


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
        row, curves[run.run_id] = run_row(out_dir, plan, run)
        rows.append(row)
    return rows, curves


def run_row(out_dir: Path, plan: Plan, run: RunPlan) -> tuple[dict, list[dict]]:
    """The row of ``run`` (see :data:`RUN_COLUMNS`; its numbers only when it is finished) and its loss curve
    (its ``metrics.jsonl`` records), as read from its folder in ``out_dir``."""
    vplan = plan.variant(run.variant)
    run_dir = run.run_dir(out_dir)
    status = read_json(run_dir / STATUS_FILE) or {}
    found = read_json(run_dir / EVAL_FILE)
    current = plan.evaluated_with(found)  # the runner's test: scores of other evaluation settings never count
    scores = found if current else {}
    step = checkpoint_step(run_dir / CHECKPOINT_NAME) or 0
    finished = status.get("status") == DONE and current and step >= run.steps
    if finished:
        state = "done"
    elif status.get("status") == "failed":
        state = "failed"
    elif step == 0:
        state = "missing"
    elif step < run.steps:
        state = f"at step {step}"
    else:
        state = STALE if found else "not evaluated"
    metrics = read_metrics(run_dir / "metrics.jsonl")
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
    for key in ("knn_top1", "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1",
                "random_init_finetune_top1", "masker_ms_per_batch"):
        row[key] = scores.get(key) if finished else None
    # auxiliary losses: their mean over the last logging window, like final_loss
    row["aux"] = {k: v for k, v in metrics[-1].items() if k.startswith(AUX_PREFIX)} if metrics and finished \
        else {}
    return drop_non_finite(row), metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def non_finite_numbers(row: dict) -> list[str]:
    """``key=value`` for each number of a run row (and auxiliary loss) that is NaN or infinite, in column order."""
    numbers = {**{key: row.get(key) for key in NUMBERS}, **row.get("aux", {})}
    return [f"{key}={value}" for key, value in numbers.items() if _is_number(value) and not math.isfinite(value)]


def drop_non_finite(row: dict) -> dict:
    """``row`` with ``non_finite`` set (see :func:`non_finite_numbers`); a row with any is no finished seed: its
    status becomes :data:`NON_FINITE` and all its numbers ``None``, so that its variant's seed count, means and
    paired differences all leave that seed out alike (one NaN score would otherwise leave only its own mean)."""
    row["non_finite"] = non_finite_numbers(row)
    if row["non_finite"]:
        row.update({key: None for key in NUMBERS}, status=NON_FINITE, aux={})
    return row


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (the published table).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom: the table up to 30, beyond it
    the Cornish-Fisher expansion around the normal's 1.95996 (Abramowitz & Stegun 26.7.5; error below 1e-5
    there: 2.040 at 31, 2.000 at 60, 1.980 at 120)."""
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


def seed_stats(values: list[float], interval: bool = False) -> dict:
    """Mean, sample std (n - 1) and count of the finite ``values``; with ``interval`` also ``ci95``, the 95%
    t-interval of the mean (two values or more), e.g. of paired differences over seeds."""
    values = [v for v in values if _is_number(v) and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0, **({"ci95": None} if interval else {})}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    out = {"mean": mean, "std": std, "n": len(values)}
    if interval:
        half = t95(len(values) - 1) * std / math.sqrt(len(values)) if std is not None else None
        out["ci95"] = None if half is None else [mean - half, mean + half]
    return out


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
            "seeds_finished": [r["seed"] for r in mine if r["status"] == "done"],
            "non_finite": {r["seed"]: r["non_finite"] for r in mine if r.get("non_finite")},
        }
        for key in NUMBERS:
            entry[key] = seed_stats([r[key] for r in mine])
        for key, _ in ACCURACIES:
            diffs = [r[key] - by_key[(ref, r["seed"])][key] for r in mine
                     if r[key] is not None and by_key.get((ref, r["seed"]), {}).get(key) is not None]
            entry[f"delta_{key}"] = seed_stats(diffs, interval=True) if v.name != ref else None
        aux_keys = sorted({k for r in mine for k in r.get("aux", {})})
        entry["aux"] = {k: seed_stats([r.get("aux", {}).get(k) for r in mine]) for k in aux_keys}
        out.append(entry)
    return out


def _seeds_text(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds)) if seeds else "no seed"


def _non_finite_findings(summary: list[dict]) -> list[str]:
    """One note per run that gave a NaN or infinite number: which variant, seed and number, and that the seed
    counts nowhere (see :func:`drop_non_finite`)."""
    notes = []
    for s in summary:
        for seed, numbers in (s.get("non_finite") or {}).items():
            run = f"{s['variant']}/seed{seed}"
            notes.append(f"{run} gave a non-finite score ({', '.join(numbers)}): that seed is left out of "
                         f"{s['variant']}'s means, seed count and paired differences; look into runs/{run} "
                         "(deleting its eval.json and rerunning evaluates it again).")
    return notes


def _seed_findings(plan: Plan, summary: list[dict], keys: list[tuple[str, str]]) -> list[str]:
    """Notes on the seeds behind the numbers: a run with a non-finite score, one seed (planned, or the only one
    finished), each paired difference (its interval, or that it rests on one paired seed), and means over
    different sets of seeds."""
    notes = _non_finite_findings(summary)
    ref = reference_variant(plan)
    planned = len(plan.seeds)
    # the seeds each variant finished (``seeds_finished``; a summary without it: its accuracies' counts)
    done = {s["variant"]: s["seeds_finished"] for s in summary if s.get("seeds_finished") is not None}
    counts = [len(seeds) for seeds in done.values()] or \
        [(s.get(key) or {}).get("n") or 0 for s in summary for key, _ in keys]
    one_seed = planned == 1 or (bool(counts) and 0 < max(counts) <= 1)
    if planned == 1:
        notes.append("One seed: the differences between variants have no error bar, and at small budgets they are "
                     "often within seed noise; run seeds: 3 or more before ranking.")
    elif one_seed:
        notes.append(f"One seed finished of the {planned} planned: the differences between variants have no error "
                     "bar, and at small budgets they are often within seed noise; finish the other seeds before "
                     "ranking.")
    for s in summary:
        for key, label in keys:
            delta = s.get(f"delta_{key}")
            if not delta or not delta.get("n"):
                continue
            what = label.split(" (")[0]
            if delta.get("ci95") is None:  # n = 1: a difference without an interval
                if not one_seed:
                    notes.append(f"{s['variant']} vs {ref}, {what}: {100 * delta['mean']:+.2f} points over one "
                                 "paired seed: no interval, so nothing says it is more than seed noise; do not "
                                 "rank on it.")
                continue
            lo, hi = (100 * x for x in delta["ci95"])
            text = (f"{s['variant']} vs {ref}, {what}: {100 * delta['mean']:+.2f} points, 95% interval "
                    f"[{lo:+.2f}, {hi:+.2f}] over {delta['n']} paired seeds")
            if lo <= 0 <= hi:
                notes.append(text + ": within the seeds' spread, no ranking.")
            else:
                notes.append(text + f": {s['variant']} is {'better' if lo > 0 else 'worse'}.")
    covered = {name: seeds for name, seeds in done.items() if seeds}
    if len({tuple(sorted(seeds)) for seeds in covered.values()}) > 1:
        sets = "; ".join(f"{name}: {_seeds_text(sorted(seeds))}" for name, seeds in covered.items())
        notes.append(f"The variants' means cover different seeds ({sets}): a mean over other seeds is not a "
                     f"like-for-like comparison; the paired differences to {ref} use only the seeds both "
                     "finished.")
    return notes


def _compute_findings(plan: Plan) -> list[str]:
    """Notes on the compute the budget leaves unequal: encoder tokens under ``match: epochs`` (the steps are
    equal), steps under ``match: tokens`` (the encoder tokens are), when they differ by more than
    :data:`UNEQUAL` between variants."""
    notes = []
    variants = [v for v in plan.variants if v.steps > 0 and v.tokens_per_step > 0]
    if len(variants) < 2:
        return notes
    tokens = [v.encoder_tokens for v in variants]
    steps = [v.steps for v in variants]
    if max(tokens) > UNEQUAL * min(tokens):
        each = ", ".join(f"{v.name} {v.tokens_per_step:,} a step ({v.encoder_tokens:,} in all)" for v in variants)
        if plan.match == "epochs":
            equal = f"the budget holds the steps equal ({variants[0].steps} each, the same images)"
            advice = "`budget: {match: tokens}` gives every variant the same encoder tokens instead"
        else:
            equal = "the budget matches encoder tokens, but rounding to whole steps leaves them unequal"
            advice = "a larger budget makes the rounding small"
        notes.append(f"Unequal compute: {equal}, but the encoders process different numbers of tokens: {each}; "
                     f"the most is {max(tokens) / min(tokens):.2f}x the least. A variant may score higher for the "
                     f"extra compute alone; {advice}.")
    if max(steps) > UNEQUAL * min(steps):
        each = ", ".join(f"{v.name} {v.steps}" for v in variants)
        notes.append(f"Unequal steps: the budget holds the encoder tokens equal (about "
                     f"{plan.budget_tokens or max(tokens):,} each), but the variants train different numbers of "
                     f"steps: {each}; the most is {max(steps) / min(steps):.2f}x the least. A variant with fewer "
                     "steps sees fewer images and takes fewer optimizer steps; `budget: {match: epochs}` gives "
                     "every variant the same steps instead.")
    return notes


def findings(plan: Plan, summary: list[dict]) -> list[str]:
    """What a reader must know before ranking the variants, in words: a run that gave a non-finite score (its
    seed counts nowhere), a single seed (planned or finished),
    differences within the seeds' spread (the paired interval holds 0) or resting on one paired seed, means over
    different seeds, a variant below the random-init encoder, a warm-up taking most of the budget, compute the
    budget leaves unequal, a quick evaluation. Empty when none applies."""
    notes = []
    keys = accuracy_keys(plan)
    if plan.eval.quick:
        notes.append(f"Quick evaluation: kNN on {plan.eval.train_images} train / {plan.eval.test_images} test "
                     "images and no linear probe; use it to iterate, not to report.")
    notes += _seed_findings(plan, summary, keys)
    for s in summary:
        for key, label in keys:
            mine, base = s.get(key) or {}, s.get(f"random_init_{key}") or {}
            if mine.get("mean") is not None and base.get("mean") is not None and mine["mean"] < base["mean"]:
                notes.append(f"{s['variant']} scores below its encoder at random initialisation "
                             f"({label.split(' (')[0]} "
                             f"{100 * mine['mean']:.2f}% against {100 * base['mean']:.2f}%): its features got "
                             "worse with training at this budget; do not rank it on this run.")
    for v in plan.variants:
        if v.steps and v.warmup_steps > WARMUP_MOST * v.steps:
            notes.append(f"{v.name}: learning-rate warm-up covers {v.warmup_steps} of its {v.steps} steps; the "
                         "run is mostly warm-up, so the comparison says little about the schedule's end.")
    notes += _compute_findings(plan)
    return notes


def accuracy_keys(plan: Plan) -> list[tuple[str, str]]:
    """The accuracies the plan measures: ``(key, column label)``."""
    return [(k, label) for k, label in ACCURACIES if measured(plan, k)]


def measured(plan: Plan, key: str) -> bool:
    """Whether the plan measures accuracy ``key`` (``knn_top1``: ``plan.eval.knn``...; fine-tuning: a mapping)."""
    return getattr(plan.eval, key.split("_")[0]) not in (None, False)
