"""The comparison's pictures, each readable on its own: loss curves, accuracy bars, accuracy against compute,
reconstructions and mask samples (titles, axis labels, legends and units on every one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maskkit.compare.files import SAMPLES_FILE
from maskkit.compare.plan import Plan
from maskkit.compare.results import accuracy_keys, seed_stats
from maskkit.visualize import mask_legend, show_mask, show_picture

PLOTS = ("loss_curves.png", "accuracy.png", "accuracy_vs_compute.png", "reconstructions.png", "masks.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _quick(plan: Plan) -> str:
    """The label an accuracy plot's title carries under ``--quick`` (scores on a subset of the splits)."""
    ev = plan.eval
    return f"; QUICK: kNN on {ev.train_images}/{ev.test_images} images" if ev.quick else ""


def _colors(plan: Plan) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {v.name: cmap(i % 10) for i, v in enumerate(plan.variants)}


def plot_loss_curves(plan: Plan, curves: dict[str, list[dict]], path: Path) -> Path:
    """Each variant's training loss (``loss_avg``), mean over the seeds in ``curves`` (``{run_id: metrics
    records}``: the report passes its finished runs) at the steps they all logged, against steps and against
    encoder tokens."""
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
    fig.suptitle("training loss of the finished runs, mean over seeds (band: min to max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    keys = accuracy_keys(plan)
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
        base = seed_stats([r.get(f"random_init_{key}") for r in rows])
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
    title = f"frozen-feature accuracy, mean ± std over seeds (dots: seeds); budget: equal {budget}{_quick(plan)}"
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
    keys = accuracy_keys(plan)
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
        ax.set_title(f"{label.split(' (')[0]} against compute{_quick(plan)}", fontsize=10)
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


def _row_label(ax, text: str) -> None:
    ax.set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8, labelpad=6)


def plot_reconstructions(plan: Plan, samples: dict[str, dict], path: Path) -> Path | None:
    """The same test images (columns) under every variant's masks: a row of originals, then per variant its
    masked images, its reconstructions and its reconstructions with the visible patches pasted back, each row
    labelled with the variant and what it shows."""
    plt = _plt()
    variants = [v.name for v in plan.variants if "pictures" in samples.get(v.name, {})]
    if not variants:
        return None
    first = samples[variants[0]]["pictures"]
    k = min(samples[v]["pictures"].shape[0] for v in variants)
    kinds = ((1, "masked"), (2, "reconstruction"), (3, "reconstruction\n+ visible"))
    rows = 1 + len(kinds) * len(variants)
    fig, axes = plt.subplots(rows, k, figsize=(1.25 * k + 2.4, 1.25 * rows + 0.6), squeeze=False)
    for col in range(k):
        show_picture(axes[0][col], first[col, 0], vmax=255)
        axes[0][col].set_title(f"test image {col + 1}", fontsize=8)
    _row_label(axes[0][0], "original")
    for i, name in enumerate(variants):
        pics = samples[name]["pictures"]
        for j, (index, kind) in enumerate(kinds):
            row = 1 + len(kinds) * i + j
            for col in range(k):
                if pics.shape[1] > index:
                    show_picture(axes[row][col], pics[col, index], vmax=255)
                else:  # a target without pixel form: an empty panel (its frame hidden), the row still labelled
                    axes[row][col].set_xticks([])
                    axes[row][col].set_yticks([])
                    for spine in axes[row][col].spines.values():
                        spine.set_visible(False)
            _row_label(axes[row][0], f"{name}\n{kind}" if pics.shape[1] > index else f"{name}\n(no pixels)")
    fig.suptitle("the same test images, each variant under its own masks (grey: hidden patches); seed "
                 f"{samples[variants[0]]['seed']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mask_images(sample: dict, count: int) -> torch.Tensor | None:
    """The test images a variant's first ``count`` masks are drawn on, in [0, 1] (None: a ``samples.pt`` made
    before they were kept, or with fewer images than masks)."""
    images = sample.get("mask_images")
    if images is None or images.shape[0] < count:
        return None
    return images[:count].float() / 255


def plot_masks(plan: Plan, samples: dict[str, dict], path: Path) -> Path | None:
    """Each variant's mask samples (rows) on the same test images (columns): a masker that looks at the images
    drew them on those, a blind one drew them alone; either way every row shows the same images, so the
    strategies compare on them. A variant whose samples keep no images shows its bare masks."""
    plt = _plt()
    variants = [v for v in plan.variants if samples.get(v.name, {}).get("masks") is not None
                and samples[v.name]["masks"].shape[0] > 0]
    if not variants:
        return None
    m = min(samples[v.name]["masks"].shape[0] for v in variants)
    images = {v.name: _mask_images(samples[v.name], m) for v in variants}
    fig, axes = plt.subplots(len(variants), m, figsize=(1.2 * m + 2.4, 1.3 * len(variants) + 0.9), squeeze=False)
    for i, v in enumerate(variants):
        masks = samples[v.name]["masks"]
        grid = samples[v.name]["grid"]
        shown = images[v.name]
        for col in range(m):
            show_mask(axes[i][col], masks[col], grid, None if shown is None else shown[col])
            if i == 0 and shown is not None:
                axes[i][col].set_title(f"test image {col + 1}", fontsize=8)
        hidden = 100 * masks[:m].float().mean().item()
        _row_label(axes[i][0], f"{v.name}\n{hidden:.0f}% hidden" + ("" if shown is not None else "\n(no images)"))
    kinds = sorted({shown is not None for shown in images.values()}, reverse=True)
    handles = [h for over in kinds for h in mask_legend(over_images=over)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    on = "the same test images (columns)" if any(shown is not None for shown in images.values()) else "bare grids"
    fig.suptitle(f"mask samples per variant on {on}; {grid[0]}x{grid[1]} patch grid; seed "
                 f"{samples[variants[0].name]['seed']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
