"""The GPU goals of issue 10 as one table: each goal, the measured value, pass / fail / unmeasured.

``scripts/gpu-check.sh`` runs the benchmarks and a short ``maskkit train``, writing JSON into one folder, and
then ``python -m maskkit.bench.goals FOLDER`` prints the table (and writes ``FOLDER/goals.json``). The files it
reads, each optional (a goal whose file is missing is *unmeasured*):

* ``bench-L64.json``: ``maskkit bench`` ViT-L/16, batch 64, compiled by blocks (``--compile-scope blocks``: three
  ViT-L models compiled whole could outlast the part's timeout), variants mae, dense, hf;
* ``bench-L64-eager.json``: the same, eager (transformers against maskkit, eager against eager);
* ``bench-Lauto.json``: ViT-L/16 at the micro-batch ``batch_size: auto`` picks for this GPU, compiled whole;
* ``bench-B64.json``: ViT-B/16, batch 64, with the data pipelines (loader against a plain decode + crop loop, and
  ``data.decode: device``, nvJPEG);
* ``train-B64/metrics.jsonl``: ``maskkit train`` of ViT-B/16 at batch 64 on generated JPEGs, the same
  compile setting as ``bench-B64.json``, writing one checkpoint in its timed windows: the goal's "end to end"
  rate is its steps' steady rate with that checkpoint's cost spread at the shipped ``mae_vit_base_patch16``
  recipe's cadence (``train.ckpt_every`` x ``train.effective_batch`` images);
* ``train-B64-device/metrics.jsonl``: the same run with ``data.decode: device`` (nvJPEG, decoded ahead in a
  thread);
* ``bench-cpu.json``: ``maskkit bench --device cpu --variants mae,official``, ViT-B/16 at the CPU's defaults
  (batch 8, fp32): the CPU parity goal, maskkit's step at least as fast as the official-style one while at
  >= 80% of the same run's GEMM peak (``GPU_CHECK_FULL=1`` only: minutes on a small CPU).

A benchmark that did not run on CUDA measures none of the GPU goals: its file counts as missing; the CPU parity
goal, conversely, counts only a benchmark that ran on the CPU.
``--rehearsal`` (``GPU_CHECK_REHEARSAL=1 bash scripts/gpu-check.sh``, which runs every command on the CPU with
tiny models) counts such files, to check that each goal finds its numbers; the table then says it is a rehearsal.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class GoalRow:
    goal: str
    target: str
    measured: str  # "-" when unmeasured
    status: str  # pass | fail | unmeasured
    value: float | None = None


def _step(bench: dict | None, model: str, variant: str) -> dict | None:
    if not bench:
        return None
    return next((r for r in bench.get("steps", []) if r["model"] == model and r["variant"] == variant), None)


def _settings(bench: dict) -> dict:
    """The settings a bench JSON was run with (``{}`` in the JSON of older benches)."""
    return (bench.get("environment") or {}).get("settings") or {}


def compile_label(settings: dict) -> str:
    """``"compiled"``, ``"compiled by blocks"`` (``--compile-scope blocks``) or ``""`` for a bench's settings."""
    if not settings.get("compile"):
        return ""
    return "compiled by blocks" if settings.get("compile_scope") == "blocks" else "compiled"


def _stopped(bench: dict, row: dict) -> str:
    """``"stopped after 1 of 5 rounds"`` when ``row``'s rounds were cut short by a SIGTERM (a timeout of the GPU
    check), else ``""``: fewer rounds, noisier medians, said next to the value."""
    asked = _settings(bench).get("steps")
    done = row.get("rounds")  # absent in the JSON of older benches: all rounds ran
    return f"stopped after {done} of {asked} rounds" if done is not None and asked and done < asked else ""


def _by_blocks(bench: dict) -> str:
    """``"compiled by blocks"`` for a bench run with ``--compile --compile-scope blocks``, else ``""``."""
    label = compile_label(_settings(bench))
    return label if label == "compiled by blocks" else ""


def _ratio_row(goal: str, bound: float, bench: dict | None, model: str, slow: str, fast: str = "mae", *,
               flop_ratio: bool = False) -> GoalRow:
    """``slow``'s seconds per step over ``fast``'s (> 1: ``fast`` is faster) against ``>= bound``.
    ``flop_ratio``: also say the two steps' FLOP ratio, the wall-clock ratio the variants reach at equal
    utilisation (for the sparse against the mask-token encoder the decoder is the same, so a wall-clock ratio
    beyond it needs the sparse encoder's smaller matrices to run at a higher MFU than the dense ones)."""
    a, b = _step(bench, model, slow), _step(bench, model, fast)
    if a is None or b is None:
        return GoalRow(goal, f">= {bound:g}x", "-", "unmeasured")
    value = a["seconds"] / b["seconds"]
    notes = [_by_blocks(bench), _stopped(bench, a) or _stopped(bench, b)]
    if flop_ratio and a.get("flops") and b.get("flops"):
        notes.insert(0, f"FLOPs {a['flops'] / b['flops']:.2f}x")
    note = ", ".join(n for n in notes if n)
    return GoalRow(goal, f">= {bound:g}x", f"{value:.2f}x" + (f" ({note})" if note else ""),
                   "pass" if value >= bound else "fail", value)


def _mfu_row(goal: str, bound: float, bench: dict | None, model: str) -> GoalRow:
    row = _step(bench, model, "mae")
    if row is None:
        return GoalRow(goal, f">= {100 * bound:.0f}%", "-", "unmeasured")
    notes = ", ".join(n for n in (f"batch {row['batch_size']}", _by_blocks(bench), _stopped(bench, row)) if n)
    batch = f" ({notes})"
    return GoalRow(goal, f">= {100 * bound:.0f}%", f"{100 * row['mfu']:.1f}%{batch}",
                   "pass" if row["mfu"] >= bound else "fail", row["mfu"])


def _step_rate_row(goal: str, data: dict | None, step: dict | None, bench: dict | None = None) -> GoalRow:
    """A data pipeline's images/s over a model step's, against ``>= 1`` (the data keeps up). The step's compile
    setting is said next to the value (``bench``'s): an eager step is slower than the compiled one that
    ``train.compile: auto`` trains on CUDA, so a pipeline that keeps up with it may not keep up with training."""
    if data is None or step is None:
        return GoalRow(goal, ">= 1.00", "-", "unmeasured")
    value = data["images_per_s"] / step["images_per_s"]
    setting = compile_label(_settings(bench or {})) or "eager"
    return GoalRow(goal, ">= 1.00", f"{value:.2f} ({data['images_per_s']:.0f} / {step['images_per_s']:.0f} img/s, "
                                    f"{setting} step)", "pass" if value >= 1.0 else "fail", value)


def _parity_row(bench: dict | None, model: str) -> GoalRow:
    """The CPU parity goal: the official-style step's seconds over maskkit's (>= 1: maskkit as fast or
    faster) and maskkit's MFU, which must also reach 80% of the run's GEMM peak; both or it fails."""
    goal = "CPU: official-style / maskkit step time (ViT-B/16), maskkit at >= 80% of the GEMM peak"
    a, b = _step(bench, model, "official"), _step(bench, model, "mae")
    if a is None or b is None:
        return GoalRow(goal, ">= 1.00x", "-", "unmeasured")
    value = a["seconds"] / b["seconds"]
    notes = ", ".join(n for n in (f"MFU {100 * b['mfu']:.1f}%", _stopped(bench, a) or _stopped(bench, b)) if n)
    return GoalRow(goal, ">= 1.00x", f"{value:.2f}x ({notes})",
                   "pass" if value >= 1.0 and b["mfu"] >= 0.8 else "fail", value)


def train_images_per_s(metrics: list[dict]) -> float | None:
    """Steady-state images/s of a run's steps: the median over its logged windows after the first (start-up,
    compilation) of each window's images over its wall time less what checkpoints took in it (``checkpoint_s``;
    a record without it, or without ``time``, counts at its ``images_per_s``)."""
    rates = []
    for before, m in zip(metrics, metrics[1:]):
        if "images_per_s" not in m:
            continue
        seconds = m["time"] - before["time"] if "time" in m and "time" in before else None
        saving = m.get("checkpoint_s") or 0.0
        if seconds is None or not saving or seconds <= saving:
            rates.append(m["images_per_s"])
        else:
            rates.append(m["images_per_s"] * seconds / (seconds - saving))
    return statistics.median(rates) if rates else None


def checkpoint_seconds(metrics: list[dict]) -> float | None:
    """The mean seconds of the checkpoints a run wrote in its logged windows (the GPU check's run writes at most
    one per window), or None if it wrote none there."""
    saves = [m["checkpoint_s"] for m in metrics if m.get("checkpoint_s")]
    return statistics.fmean(saves) if saves else None


def _train_row(goal: str, metrics: list[dict] | None, step: dict | None,
               checkpoint_images: int | None = None) -> GoalRow:
    """A training run's end-to-end images/s over the bench step's, against ``>= 0.90``: its steps' steady rate
    with the checkpoints' cost added back at the shipped recipe's cadence, one every ``checkpoint_images``
    images (a checkpoint measured in the run, spread over so many images, as a real run pays it; the short run
    itself checkpoints far more often than any recipe)."""
    train = train_images_per_s(metrics or [])
    if step is None or train is None:
        return GoalRow(goal, ">= 0.90", "-", "unmeasured")
    saving = checkpoint_seconds(metrics or [])
    if saving is None:
        note = "no checkpoint measured"
    elif not checkpoint_images:
        note = f"checkpoint {saving:.1f} s not counted: the recipe's checkpoint cadence could not be read"
    else:
        per_image = 1 / train + saving / checkpoint_images
        note = (f"checkpoint {saving:.1f} s every {checkpoint_images / 1e6:.3g}M images: "
                f"{100 * saving / checkpoint_images / per_image:.2f}% of the time")
        train = 1 / per_image
    value = train / step["images_per_s"]
    return GoalRow(goal, ">= 0.90", f"{value:.2f} ({train:.0f} / {step['images_per_s']:.0f}; {note})",
                   "pass" if value >= 0.9 else "fail", value)


def recipe_checkpoint_images(recipe: str = "mae_vit_base_patch16") -> int | None:
    """Images between two checkpoints of the shipped ``recipe`` (``train.ckpt_every`` optimizer steps of
    ``train.effective_batch`` images), or None if it saves only at the end or cannot be read."""
    from maskkit.errors import MaskkitError
    from maskkit.recipe import load_recipe
    from maskkit.registry import Registry

    try:
        train = load_recipe(recipe, registry=Registry.from_plugins(autoload=False)).train
    except MaskkitError:
        return None
    return train.ckpt_every * train.effective_batch if train.ckpt_every else None


def on_cuda(bench: dict) -> bool:
    """Whether a ``maskkit bench`` JSON was measured on a CUDA device."""
    return str((bench.get("environment") or {}).get("device", "")).startswith("cuda")


def evaluate(results: dict[str, Any], *, rehearsal: bool = False) -> list[GoalRow]:
    """The goals' rows from ``results``: ``{"L64", "L64-eager", "Lauto", "B64", "cpu": bench JSON,
    "train-B64", "train-B64-device": lists of metrics records, "checkpoint_images": the shipped ViT-B/16
    recipe's images between checkpoints}`` (any may be missing). A bench that did not run on CUDA is left out
    unless ``rehearsal``; ``"cpu"``, one that did."""
    L, B = "vit_large_patch16", "vit_base_patch16"
    l64, l64e, lauto, b64 = (results.get(k) if results.get(k) and (rehearsal or on_cuda(results[k])) else None
                             for k in ("L64", "L64-eager", "Lauto", "B64"))
    rows = [
        _mfu_row("ViT-L/16 MAE MFU at the recipe's auto batch", 0.50, lauto, L),
        _mfu_row("ViT-L/16 MAE MFU at batch 64", 0.35, l64, L),
        _ratio_row("ViT-L/16 vs transformers' ViTMAE (compiled vs compiled, batch 64)", 1.3, l64, L, "hf"),
        _ratio_row("ViT-L/16 vs transformers' ViTMAE (eager vs eager, batch 64)", 1.3, l64e, L, "hf"),
        _ratio_row("ViT-L/16 sparse encoder vs mask-token encoder", 3.0, l64 or l64e, L, "dense", flop_ratio=True),
        _ratio_row("ViT-B/16 sparse encoder vs mask-token encoder", 2.5, b64, B, "dense", flop_ratio=True),
    ]
    bench_b = _step(b64, B, "mae")
    every = results.get("checkpoint_images")
    rows.append(_train_row("maskkit train / bench images/s (ViT-B/16, batch 64)", results.get("train-B64"), bench_b,
                           every))
    rows.append(_train_row("maskkit train, data.decode: device / bench images/s (ViT-B/16, batch 64)",
                           results.get("train-B64-device"), bench_b, every))
    jpeg = next((d for d in (b64 or {}).get("data", []) if d["pipeline"] == "imagefolder"), None)
    if jpeg is None or jpeg.get("ratio") is None:
        rows.append(GoalRow("ImageFolder loader / plain decode + crop loop (same processes)", ">= 0.90", "-",
                            "unmeasured"))
    else:
        lo, hi = jpeg["ratio_range"]
        rows.append(GoalRow("ImageFolder loader / plain decode + crop loop (same processes)", ">= 0.90",
                            f"{jpeg['ratio']:.2f} ({lo:.2f}-{hi:.2f}), {jpeg['workers']} workers",
                            "pass" if jpeg["ratio"] >= 0.9 else "fail", jpeg["ratio"]))
    rows.append(_step_rate_row("JPEG loader (CPU workers) / ViT-B/16 MAE step rate", jpeg, bench_b, b64))
    on_device = next((d for d in (b64 or {}).get("data", []) if d["pipeline"] == "imagefolder-device"), None)
    rows.append(_step_rate_row("GPU decode path (nvJPEG, data.decode: device) / ViT-B/16 MAE step rate", on_device,
                               bench_b, b64))
    cpu = results.get("cpu")
    rows.append(_parity_row(cpu if cpu and not on_cuda(cpu) else None, B))
    return rows


def load_results(folder: Path) -> dict[str, Any]:
    """The JSON files of ``folder`` named in the module docstring (missing or unreadable ones left out)."""
    results: dict[str, Any] = {}
    for key in ("L64", "L64-eager", "Lauto", "B64", "cpu"):
        path = folder / f"bench-{key}.json"
        try:
            results[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    for run in ("train-B64", "train-B64-device"):
        metrics = folder / run / "metrics.jsonl"
        if metrics.is_file():
            results[run] = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    results["checkpoint_images"] = recipe_checkpoint_images()
    return results


def format_table(rows: list[GoalRow], *, rehearsal: bool = False) -> str:
    """A plain-text table (it is printed last by a shell script, into a log)."""
    width = max(len(r.goal) for r in rows)
    measured = max(len(r.measured) for r in rows)
    lines = ["REHEARSAL: CPU numbers of tiny models, which check the script and measure no goal"] if rehearsal else []
    lines += [f"{'goal':<{width}}  {'target':>8}  {'measured':<{measured}}  result", "-" * (width + measured + 24)]
    lines += [f"{r.goal:<{width}}  {r.target:>8}  {r.measured:<{measured}}  {r.status.upper()}" for r in rows]
    passed = sum(r.status == "pass" for r in rows)
    failed = sum(r.status == "fail" for r in rows)
    if rehearsal:
        lines.append(f"rehearsal: {passed + failed} of {len(rows)} goals found their numbers; none is measured")
    else:
        lines.append(f"{passed} passed, {failed} failed, {len(rows) - passed - failed} unmeasured")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m maskkit.bench.goals [--rehearsal] FOLDER``: print the table, write ``FOLDER/goals.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    rehearsal = "--rehearsal" in args
    args = [a for a in args if a != "--rehearsal"]
    if len(args) != 1:
        print("usage: python -m maskkit.bench.goals [--rehearsal] FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    rows = evaluate(load_results(folder), rehearsal=rehearsal)
    print(format_table(rows, rehearsal=rehearsal))
    try:
        (folder / "goals.json").write_text(json.dumps([attrs.asdict(r) for r in rows], indent=2) + "\n")
    except OSError as exc:
        print(f"could not write {folder / 'goals.json'}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
