"""The comparison report: numbers, tables and pictures, readable without maskkit.

Written to ``OUT/report/``:

* ``results.csv`` / ``results.json``: one row per run (variant, seed, steps, encoder tokens, kNN and linear
  top-1, final loss, images/s, wall time...); ``results.json`` also holds one entry per variant with the mean
  and standard deviation over seeds, the paired difference to the reference variant, and the settings.
* ``summary.csv``: one row per variant, mean and std (sample std, n - 1) of every number over its seeds.
* ``report.md`` and ``report.html``: the table and the pictures, with the budget and the protocol spelled out.
* ``loss_curves.png`` (training loss against steps and against encoder tokens processed), ``accuracy.png``
  (bars with error bars), ``accuracy_vs_compute.png`` (accuracy against encoder tokens processed),
  ``reconstructions.png`` (the same test images reconstructed by every variant under its own masks) and
  ``masks.png`` (a strip of mask samples per variant).

Everything is read from the output folder (``plan.json`` and the run folders), so ``maskkit compare SPEC
--report-only`` rebuilds it at any time, and runs still missing show as such.
"""

from __future__ import annotations

import csv
import html
import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

from maskkit.compare.plan import Plan
from maskkit.compare.runner import (DONE, EVAL_FILE, SAMPLES_FILE, STATUS_FILE, TIMING_FILE, checkpoint_step,
                                    read_json, training_time)
from maskkit.engine.trainer import CHECKPOINT_NAME

REPORT_DIR = "report"
ACCURACIES = (("knn_top1", "kNN top-1 (%)"), ("linear_top1", "linear top-1 (%)"),
              ("finetune_top1", "fine-tune top-1 (%)"))  # each shown when plan.eval.<first word> is set
RUN_COLUMNS = ("variant", "seed", "status", "steps", "epochs", "tokens_per_step", "encoder_tokens", "knn_top1",
               "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1", "final_loss",
               "images_per_s", "train_time_s", "eval_time_s", "error", "run_dir")
NUMBERS = ("knn_top1", "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1",
           "final_loss", "images_per_s", "train_time_s", "eval_time_s")


def _measured(plan: Plan, key: str) -> bool:
    """Whether the plan measures accuracy ``key`` (``knn_top1``: ``plan.eval.knn``...; fine-tuning: a mapping)."""
    return getattr(plan.eval, key.split("_")[0]) not in (None, False)


PLOTS = ("loss_curves.png", "accuracy.png", "accuracy_vs_compute.png", "reconstructions.png", "masks.png")


# -- collecting ---------------------------------------------------------------------------------------------


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
        for key in ("knn_top1", "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1"):
            row[key] = scores.get(key) if finished else None
        rows.append(row)
    return rows, curves


def _stats(values: list[float]) -> dict:
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
            entry[key] = _stats([r[key] for r in mine])
        for key, _ in ACCURACIES:
            diffs = [r[key] - by_key[(ref, r["seed"])][key] for r in mine
                     if r[key] is not None and by_key.get((ref, r["seed"]), {}).get(key) is not None]
            entry[f"delta_{key}"] = _stats(diffs) if v.name != ref else None
        out.append(entry)
    return out


# -- formatting ---------------------------------------------------------------------------------------------


def _pm(stat: dict | None, fmt, scale: float = 1.0) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = fmt(stat["mean"] * scale)
    if stat.get("std") is not None:
        text += f" ± {fmt(stat['std'] * scale).lstrip('+')}"  # a spread has no sign
    return text


def _pct(x: float) -> str:
    return f"{x:.2f}"


def _loss(x: float) -> str:
    return f"{x:.4f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}"


def _secs(x: float) -> str:
    return f"{x:.1f} s" if abs(x) < 120 else f"{x / 60:.1f} min"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _show_other_changes(plan: Plan) -> bool:
    return any(v.other_changes for v in plan.variants)


def table_columns(plan: Plan) -> list[str]:
    cols = ["variant", "masker"] + (["other changes"] if _show_other_changes(plan) else [])
    if plan.eval.knn:
        cols.append("kNN top-1 (%)")
    if plan.eval.linear:
        cols.append("linear top-1 (%)")
    if plan.eval.finetune is not None:
        cols.append("fine-tune top-1 (%)")
    return cols + ["final loss", "images/s", "enc. tokens/step", "steps", "enc. tokens", "wall time", "seeds"]


def table_rows(plan: Plan, summary: list[dict]) -> list[list[str]]:
    """The main table (also the terminal's): one row of formatted mean ± std per variant."""
    rows = []
    others = _show_other_changes(plan)
    for s in summary:
        v = plan.variant(s["variant"])
        row = [s["variant"], v.masker_text()] + ([v.other_changes or "-"] if others else [])
        if plan.eval.knn:
            row.append(_pm(s["knn_top1"], _pct, 100))
        if plan.eval.linear:
            row.append(_pm(s["linear_top1"], _pct, 100))
        if plan.eval.finetune is not None:
            row.append(_pm(s["finetune_top1"], _pct, 100))
        row += [_pm(s["final_loss"], _loss), _pm(s["images_per_s"], _rate), f"{s['tokens_per_step']:,}",
                f"{s['steps']} ({s['epochs']:.3g} ep)", _si(s["encoder_tokens"]), _pm(s["train_time_s"], _secs),
                f"{s['finished']}/{s['runs']}"]
        rows.append(row)
    return rows


def delta_rows(plan: Plan, summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    keys = [(k, label) for k, label in ACCURACIES if _measured(plan, k)]
    header = ["variant"] + [f"Δ {label.replace(' (%)', '')} (points)" for _, label in keys]
    rows = []
    for s in summary:
        if s[f"delta_{keys[0][0]}"] is None:
            continue
        rows.append([s["variant"]] + [_pm(s[f"delta_{k}"], lambda x: f"{x:+.2f}", 100) for k, _ in keys])
    return header, rows


def protocol_lines(plan: Plan, meta: dict) -> list[str]:
    ev = plan.eval
    measures = []
    if ev.knn:
        measures.append(f"kNN top-1 (k={ev.k}, cosine similarity, weighted votes exp(sim/T) with T={ev.temperature})")
    if ev.linear:
        measures.append("a linear probe (BatchNorm without affine + linear layer, trained on cached features)")
    if ev.finetune is not None:
        settings = ", ".join(f"{k}={v}" for k, v in ev.finetune.items()) or "maskkit finetune defaults"
        measures.append(f"end-to-end fine-tuning top-1 ({settings}; each run's seed)")
    seeds = ", ".join(map(str, plan.seeds))
    lines = [
        f"Base recipe: `{plan.base}`; spec: `{plan.spec_file}`.",
        f"Budget: {plan.budget_text()}",
        f"Seeds: {seeds}. The seed sets the initialisation and the masks; the data order and augmentations come "
        f"from data_seed {plan.data_seed}, the same for every run, so variants at one seed differ only in what "
        "the variant changes (paired comparison).",
        f"Evaluation: {' and '.join(measures)} on frozen {ev.pool}-pooled encoder features of the train split "
        f"({meta.get('train_images', '?')} images), scored on the test split ({meta.get('test_images', '?')} "
        "images), the same split for every run.",
        "Columns: mean ± sample std over seeds; final loss = mean training loss over the last logging window; "
        "images/s and wall time = training only (all sessions of a resumed run, evaluation excluded); enc. "
        "tokens/step = tokens the encoder processes per optimizer step (prefix + visible patches for a sparse "
        "encoder, all patches for a dense one, times the batch); enc. tokens = per run, in all.",
    ]
    if ev.baseline:
        lines.append("Random init: the same encoder at its initialisation, scored the same way.")
    return lines


# -- plots ----------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(plan: Plan) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {v.name: cmap(i % 10) for i, v in enumerate(plan.variants)}


def plot_loss_curves(plan: Plan, curves: dict[str, list[dict]], path: Path) -> Path:
    plt = _plt()
    colors = _colors(plan)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for v in plan.variants:
        per_seed = [{r["step"]: r.get("loss_avg", r["loss"]) for r in curves.get(run.run_id, [])}
                    for run in plan.runs if run.variant == v.name]
        per_seed = [c for c in per_seed if c]
        if not per_seed:
            continue
        steps = sorted(set.intersection(*(set(c) for c in per_seed)))
        if not steps:
            continue
        values = torch.tensor([[c[s] for s in steps] for c in per_seed], dtype=torch.float64)
        mean = values.mean(0).tolist()
        label = f"{v.name} ({len(per_seed)} seed{'s' if len(per_seed) > 1 else ''})"
        for ax, xs in ((axes[0], steps), (axes[1], [s * v.tokens_per_step for s in steps])):
            ax.plot(xs, mean, color=colors[v.name], label=label, lw=1.5)
            if len(per_seed) > 1:
                ax.fill_between(xs, values.min(0).values.tolist(), values.max(0).values.tolist(),
                                color=colors[v.name], alpha=0.2, lw=0)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("encoder tokens processed")
    for ax in axes:
        ax.set_ylabel("training loss (mean over logging window)")
        ax.grid(alpha=0.3)
    axes[0].set_title("loss against steps")
    axes[1].set_title("loss against compute")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8)
    fig.suptitle("training loss, mean over seeds (band: min to max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_keys(plan: Plan) -> list[tuple[str, str]]:
    return [(k, label) for k, label in ACCURACIES if _measured(plan, k)]


def accuracy_axis(values: list[float]) -> tuple[float, float]:
    """The y range (in %) of the accuracy bars: from a multiple of 5 below the lowest value (seed, mean - std,
    random-init line), leaving room, to just above the highest; the differences between masking strategies
    are often a point or two, invisible on a 0-100 axis."""
    lo, hi = min(values), max(values)
    room = max(2.0, 0.5 * (hi - lo))
    bottom = max(0.0, 5.0 * ((lo - room) // 5.0))
    return bottom, min(100.0, hi + max(1.0, 0.1 * (hi - bottom)))


def plot_accuracy(plan: Plan, rows: list[dict], summary: list[dict], path: Path) -> Path:
    plt = _plt()
    keys = _accuracy_keys(plan)
    shown: list[float] = []  # every value drawn, for the y range
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(plan.variants) * len(keys) + 2), 4.2))
    width = 0.8 / len(keys)
    hatches = ["", "//"]
    colors = _colors(plan)
    for j, (key, label) in enumerate(keys):
        for i, s in enumerate(summary):
            stat = s[key]
            x = i + (j - (len(keys) - 1) / 2) * width
            if stat["mean"] is None:
                continue
            ax.bar(x, 100 * stat["mean"], width * 0.9, color=colors[s["variant"]], hatch=hatches[j % 2],
                   edgecolor="black", lw=0.5, yerr=None if stat["std"] is None else 100 * stat["std"], capsize=4)
            points = [100 * r[key] for r in rows if r["variant"] == s["variant"] and r[key] is not None]
            ax.scatter([x] * len(points), points, color="black", s=10, zorder=3)
            spread = 0.0 if stat["std"] is None else 100 * stat["std"]
            shown += points + [100 * stat["mean"] - spread, 100 * stat["mean"] + spread]
        base = _stats([r.get(f"random_init_{key}") for r in rows])
        if base["mean"] is not None:
            shown.append(100 * base["mean"])
            ax.axhline(100 * base["mean"], color="grey", ls="--" if j == 0 else ":", lw=1,
                       label=f"random init, {label.split(' (')[0]}")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="white", edgecolor="black", hatch=hatches[j % 2], label=label)
               for j, (_, label) in enumerate(keys)]
    handles += ax.get_legend_handles_labels()[0]  # the random-init lines
    ax.set_xticks(range(len(summary)), [s["variant"] for s in summary])
    ax.set_ylabel("top-1 accuracy (%)")
    budget = "encoder tokens" if plan.match == "tokens" else "epochs"
    title = f"frozen-feature accuracy, mean ± std over seeds (dots: seeds); budget: equal {budget}"
    if shown:
        bottom, top = accuracy_axis(shown)
        ax.set_ylim(bottom, top)
        if bottom > 0:
            title += f"; y axis from {bottom:.0f}%"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_compute(plan: Plan, summary: list[dict], path: Path) -> Path:
    plt = _plt()
    keys = _accuracy_keys(plan)
    colors = _colors(plan)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for s in summary:
            stat = s[key]
            if stat["mean"] is None:
                continue
            ax.errorbar(s["encoder_tokens"], 100 * stat["mean"], yerr=None if stat["std"] is None else
                        100 * stat["std"], fmt="o", color=colors[s["variant"]], capsize=4, label=s["variant"])
            ax.annotate(s["variant"], (s["encoder_tokens"], 100 * stat["mean"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=8)
        ax.set_xlabel("encoder tokens processed per run")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_title(f"{label.split(' (')[0]} against compute", fontsize=10)
        xs = [s["encoder_tokens"] for s in summary]
        if xs and max(xs) > 0:
            ax.set_xlim(0, max(xs) * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _load_samples(plan: Plan, out_dir: Path) -> dict[str, dict]:
    """Per variant, the samples of its first seed that has them."""
    found: dict[str, dict] = {}
    for seed in plan.seeds:
        for run in plan.runs:
            if run.seed != seed or run.variant in found:
                continue
            path = run.run_dir(out_dir) / SAMPLES_FILE
            if path.is_file():
                try:
                    found[run.variant] = {**torch.load(path, map_location="cpu", weights_only=True), "seed": seed}
                except Exception:  # a damaged file: leave the variant out of the pictures
                    continue
    return found


def _show(ax, picture: torch.Tensor) -> None:
    """``picture`` uint8 ``[C, H, W]`` on ``ax``, without axes."""
    if picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(picture[:3].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _row_label(ax, text: str) -> None:
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)


def plot_reconstructions(plan: Plan, samples: dict[str, dict], path: Path) -> Path | None:
    plt = _plt()
    variants = [v.name for v in plan.variants if "pictures" in samples.get(v.name, {})]
    if not variants:
        return None
    first = samples[variants[0]]["pictures"]
    k = min(samples[v]["pictures"].shape[0] for v in variants)
    rows = 1 + 2 * len(variants)
    fig, axes = plt.subplots(rows, k, figsize=(1.25 * k + 2.2, 1.25 * rows + 0.5), squeeze=False)
    for col in range(k):
        _show(axes[0][col], first[col, 0])
    _row_label(axes[0][0], "original")
    for i, name in enumerate(variants):
        pics = samples[name]["pictures"]
        for col in range(k):
            _show(axes[1 + 2 * i][col], pics[col, 1])
            ax = axes[2 + 2 * i][col]
            if pics.shape[1] >= 4:
                _show(ax, pics[col, 3])
            else:
                ax.axis("off")
        _row_label(axes[1 + 2 * i][0], f"{name}\nmasked")
        _row_label(axes[2 + 2 * i][0], f"{name}\nreconstructed" if pics.shape[1] >= 4 else f"{name}\n(no pixels)")
    fig.suptitle("the same test images, each variant under its own masks\n(grey: hidden; reconstruction with "
                 f"the visible patches pasted back; seed {samples[variants[0]]['seed']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_masks(plan: Plan, samples: dict[str, dict], path: Path) -> Path | None:
    plt = _plt()
    variants = [v for v in plan.variants if samples.get(v.name, {}).get("masks") is not None
                and samples[v.name]["masks"].shape[0] > 0]
    if not variants:
        return None
    m = min(samples[v.name]["masks"].shape[0] for v in variants)
    fig, axes = plt.subplots(len(variants), m, figsize=(1.2 * m + 2.4, 1.3 * len(variants) + 0.5), squeeze=False)
    for i, v in enumerate(variants):
        masks = samples[v.name]["masks"]
        grid = samples[v.name]["grid"]
        for col in range(m):
            ax = axes[i][col]
            ax.imshow(masks[col].reshape(*grid).float().numpy(), cmap="Greys", vmin=0, vmax=1.4,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        hidden = 100 * masks[:m].float().mean().item()
        _row_label(axes[i][0], f"{v.name}\n{hidden:.0f}% hidden")
    fig.suptitle(f"mask samples per variant (dark: hidden; {grid[0]}x{grid[1]} patch grid)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- writing --------------------------------------------------------------------------------------------------


def _csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def _summary_csv_rows(summary: list[dict]) -> tuple[list[str], list[dict]]:
    columns = ["variant", "changes", "runs", "finished", "steps", "epochs", "tokens_per_step", "encoder_tokens"]
    flat_rows = []
    for s in summary:
        flat = {k: s[k] for k in columns}
        for key in NUMBERS + tuple(f"delta_{k}" for k, _ in ACCURACIES):
            stat = s.get(key) or {}
            for part in ("mean", "std"):
                flat[f"{key}_{part}"] = stat.get(part)
        flat_rows.append(flat)
    for key in NUMBERS + tuple(f"delta_{k}" for k, _ in ACCURACIES):
        columns += [f"{key}_mean", f"{key}_std"]
    return columns, flat_rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_table(plan: Plan, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "status", "steps"]
    header += [label for k, label in ACCURACIES if _measured(plan, k)]
    header += ["final loss", "images/s", "wall time"]
    out = []
    for r in rows:
        line = [f"{r['variant']}/seed{r['seed']}", r["status"], str(r["steps"])]
        for key, _ in _accuracy_keys(plan):
            line.append("-" if r[key] is None else f"{100 * r[key]:.2f}")
        line += ["-" if r["final_loss"] is None else f"{r['final_loss']:.4f}",
                 "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}",
                 "-" if r["train_time_s"] is None else _secs(r["train_time_s"])]
        out.append(line)
    return header, out


def _versions(out_dir: Path, plan: Plan) -> dict:
    for run in plan.runs:
        found = read_json(run.run_dir(out_dir) / "versions.json")
        if found:
            return found
    return {}


def _meta(out_dir: Path, plan: Plan) -> dict:
    for run in plan.runs:
        scores = read_json(run.run_dir(out_dir) / EVAL_FILE)
        if scores:
            return {"train_images": scores.get("train_images"), "test_images": scores.get("test_images")}
    return {}


def write_report(out_dir: str | Path, plan: Plan | None = None) -> Path:
    """Write the report of the comparison in ``out_dir`` into ``out_dir/report`` and return that folder."""
    from maskkit.compare.runner import PLAN_FILE

    out_dir = Path(out_dir)
    plan = plan or Plan.load(out_dir / PLAN_FILE)
    report = out_dir / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    rows, curves = collect(out_dir, plan)
    summary = summarize(plan, rows)
    meta = _meta(out_dir, plan)
    versions = _versions(out_dir, plan)

    _csv(report / "results.csv", list(RUN_COLUMNS), rows)
    columns, flat = _summary_csv_rows(summary)
    _csv(report / "summary.csv", columns, flat)
    name = Path(plan.spec_file).stem
    comparison = {
        "name": name, "spec": plan.spec_file, "description": plan.description, "base": plan.base,
        "budget": {"match": plan.match, "reference": plan.reference, "encoder_tokens": plan.budget_tokens,
                   "text": plan.budget_text()},
        "seeds": list(plan.seeds), "data_seed": plan.data_seed, "steps_per_epoch": plan.steps_per_epoch,
        "batch_size": plan.effective_batch, "train_images": meta.get("train_images", plan.train_images),
        "test_images": meta.get("test_images"), "evaluation": {**_asdict(plan.eval)},
        "reference_variant": reference_variant(plan), "versions": versions,
    }
    (report / "results.json").write_text(json.dumps({"comparison": comparison, "variants": summary, "runs": rows},
                                                    indent=2, default=str) + "\n")

    pictures: dict[str, str] = {}
    samples = _load_samples(plan, out_dir)
    for filename, draw in (("loss_curves.png", lambda p: plot_loss_curves(plan, curves, p)),
                           ("accuracy.png", lambda p: plot_accuracy(plan, rows, summary, p)),
                           ("accuracy_vs_compute.png", lambda p: plot_accuracy_vs_compute(plan, summary, p)),
                           ("reconstructions.png", lambda p: plot_reconstructions(plan, samples, p)),
                           ("masks.png", lambda p: plot_masks(plan, samples, p))):
        if draw(report / filename) is not None:
            pictures[filename] = filename

    header, body = table_columns(plan), table_rows(plan, summary)
    dheader, drows = delta_rows(plan, summary)
    rheader, rbody = _run_table(plan, rows)
    failed = [r for r in rows if r["error"]]
    captions = {"loss_curves.png": "Training loss against steps and against encoder tokens processed",
                "accuracy.png": "Accuracy per variant (bars: mean, whiskers: std, dots: seeds)",
                "accuracy_vs_compute.png": "Accuracy against encoder tokens processed per run",
                "reconstructions.png": "The same test images reconstructed by every variant under its own masks",
                "masks.png": "Mask samples per variant"}
    n_seeds = len(plan.seeds)
    md = [f"# Comparison: {name}", ""]
    if plan.description:
        md += [plan.description, ""]
    md += [f"- {line}" for line in protocol_lines(plan, meta)] + [""]
    md += [f"## Results (mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''})", "", _md_table(header, body), ""]
    if drows:
        md += [f"Paired differences to **{reference_variant(plan)}** (same seed, same data order), in accuracy "
               "points:", "", _md_table(dheader, drows), ""]
    if failed:
        md += ["**Failed runs:**", ""] + [f"- {r['variant']}/seed{r['seed']}: {r['error']}" for r in failed] + [""]
    for filename, caption in captions.items():
        if filename in pictures:
            md += [f"### {caption}", "", f"![{caption}]({filename})", ""]
    md += ["## Runs", "", _md_table(rheader, rbody), "",
           "Files: `results.csv` (one row per run), `summary.csv` (one row per variant: mean and std), "
           "`results.json` (both, and the settings); run folders under `../runs/`.", ""]
    if versions:
        md += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    (report / "report.md").write_text("\n".join(md))

    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:right}td:first-child,th:first-child,td:nth-child(2){text-align:left}th{background:#f3f3f3}"
            "img{max-width:100%;border:1px solid #eee}li{margin:.3em 0}</style></head><body>",
            f"<h1>Comparison: {html.escape(name)}</h1>"]
    if plan.description:
        page.append(f"<p>{html.escape(plan.description)}</p>")
    page.append("<ul>" + "".join(f"<li>{html.escape(line).replace('`', '')}</li>"
                                 for line in protocol_lines(plan, meta)) + "</ul>")
    page += [f"<h2>Results (mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''})</h2>",
             _html_table(header, body)]
    if drows:
        page += [f"<p>Paired differences to <b>{html.escape(reference_variant(plan))}</b> (same seed, same data "
                 "order), in accuracy points:</p>", _html_table(dheader, drows)]
    if failed:
        page.append("<p><b>Failed runs:</b></p><ul>" + "".join(
            f"<li>{html.escape(r['variant'])}/seed{r['seed']}: {html.escape(r['error'])}</li>" for r in failed)
                    + "</ul>")
    for filename, caption in captions.items():
        if filename in pictures:
            page += [f"<h3>{html.escape(caption)}</h3>", f"<img src='{filename}' alt='{html.escape(caption)}'>"]
    page += ["<h2>Runs</h2>", _html_table(rheader, rbody), "</body></html>"]
    (report / "report.html").write_text("\n".join(page))
    return report


def _asdict(obj) -> dict:
    import attrs

    return attrs.asdict(obj)


def rich_table(out_dir: str | Path, plan: Plan | None = None):
    """The report's main table as a :class:`rich.table.Table` (what ``maskkit compare`` prints)."""
    from rich.markup import escape
    from rich.table import Table

    from maskkit.compare.runner import PLAN_FILE

    out_dir = Path(out_dir)
    plan = plan or Plan.load(out_dir / PLAN_FILE)
    rows, _ = collect(out_dir, plan)
    summary = summarize(plan, rows)
    n = len(plan.seeds)
    table = Table(title=f"{Path(plan.spec_file).stem}: mean ± std over {n} seed{'s' if n > 1 else ''}; "
                        f"budget: equal {'encoder tokens' if plan.match == 'tokens' else 'epochs'}")
    for i, column in enumerate(table_columns(plan)):
        table.add_column(column, justify="left" if i < 2 else "right", overflow="fold")
    for row in table_rows(plan, summary):
        table.add_row(*map(escape, row))
    return table
