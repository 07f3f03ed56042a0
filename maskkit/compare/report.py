"""The comparison report: numbers, tables and pictures, readable without maskkit.

Written to ``OUT/report/``:

* ``results.csv`` / ``results.json``: one row per run (variant, seed, steps, encoder tokens, kNN and linear
  top-1, final loss, images/s, wall time...); ``results.json`` also holds one entry per variant with the mean
  and standard deviation over seeds, the paired difference to the reference variant, and the settings
  (``comparison.quick``: quick mode; both CSV files carry it as a ``quick`` column, ``true`` or ``false``).
* ``summary.csv``: one row per variant, mean and std (sample std, n - 1) of every number over its seeds.
* ``report.md`` and ``report.html``: the table and the pictures, with the budget and the protocol spelled out.
* the pictures of :mod:`maskkit.compare.plots`.

The numbers come from :mod:`maskkit.compare.results` and the pictures from :mod:`maskkit.compare.plots`;
this module formats and writes them. Everything is read from the output folder (``plan.json`` and the run
folders), so ``maskkit compare SPEC --report-only`` rebuilds it at any time, and runs still missing show as
such.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

from maskkit.compare.files import EVAL_FILE, PLAN_FILE, read_json
from maskkit.compare.formats import loss, ms, pct, plus_minus, rate, secs, si
from maskkit.compare.plan import Plan
from maskkit.compare.plots import (  # noqa: F401
    PLOTS,
    _load_samples,
    accuracy_axis,
    plot_accuracy,
    plot_accuracy_vs_compute,
    plot_loss_curves,
    plot_masks,
    plot_reconstructions,
)
from maskkit.compare.results import (  # noqa: F401
    ACCURACIES,
    NUMBERS,
    RUN_COLUMNS,
    accuracy_keys,
    collect,
    findings,
    measured,
    read_metrics,
    reference_variant,
    seed_stats,
    summarize,
)

REPORT_DIR = "report"


# -- formatting ---------------------------------------------------------------------------------------------


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
    return cols + ["final loss", "images/s", "masker ms/batch", "enc. tokens/step", "steps", "enc. tokens",
                   "wall time", "seeds"]


def table_rows(plan: Plan, summary: list[dict]) -> list[list[str]]:
    """The main table (also the terminal's): one row of formatted mean ± std per variant."""
    rows = []
    others = _show_other_changes(plan)
    for s in summary:
        v = plan.variant(s["variant"])
        row = [s["variant"], v.masker_text()] + ([v.other_changes or "-"] if others else [])
        if plan.eval.knn:
            row.append(plus_minus(s["knn_top1"], pct, 100))
        if plan.eval.linear:
            row.append(plus_minus(s["linear_top1"], pct, 100))
        if plan.eval.finetune is not None:
            row.append(plus_minus(s["finetune_top1"], pct, 100))
        row += [plus_minus(s["final_loss"], loss), plus_minus(s["images_per_s"], rate),
                plus_minus(s["masker_ms_per_batch"], ms),
                f"{s['tokens_per_step']:,}", f"{s['steps']} ({s['epochs']:.3g} ep)", si(s["encoder_tokens"]),
                plus_minus(s["train_time_s"], secs), f"{s['finished']}/{s['runs']}"]
        rows.append(row)
    baseline = random_init_row(plan, summary)
    if baseline is not None:
        rows.append(baseline)
    return rows


def random_init_row(plan: Plan, summary: list[dict]) -> list[str] | None:
    """The table's last row: the reference variant's encoder at its initialisation, scored the same way (the
    floor every variant must clear); None when the baseline was not scored."""
    ref = next((s for s in summary if s["variant"] == reference_variant(plan)), None)
    keys = accuracy_keys(plan)
    if ref is None or all((ref.get(f"random_init_{k}") or {}).get("mean") is None for k, _ in keys):
        return None
    row = ["(random init)", f"{ref['variant']}'s encoder, untrained"] + \
        (["-"] if _show_other_changes(plan) else [])
    row += [plus_minus(ref.get(f"random_init_{k}"), pct, 100) for k, _ in keys]
    return row + ["-"] * (len(table_columns(plan)) - len(row))


def delta_interval(stat: dict | None) -> str:
    """``+1.20 [-0.40, +2.80]``: a paired difference in points with its 95% interval (when there is one)."""
    text = plus_minus(stat, lambda x: f"{x:+.2f}", 100)
    if stat and stat.get("ci95"):
        lo, hi = (100 * x for x in stat["ci95"])
        text += f" [{lo:+.2f}, {hi:+.2f}]"
    return text


def delta_rows(plan: Plan, summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    keys = accuracy_keys(plan)
    header = ["variant"] + [f"Δ {label.replace(' (%)', '')} (points, ± std [95% interval])" for _, label in keys]
    rows = []
    for s in summary:
        if s[f"delta_{keys[0][0]}"] is None:
            continue
        rows.append([s["variant"]] + [delta_interval(s[f"delta_{k}"]) for k, _ in keys])
    return header, rows


def aux_rows(summary: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Auxiliary losses (``aux/<component>.<name>`` in metrics.jsonl), mean ± std over seeds of each run's
    last logging window; no rows when no run logged any."""
    keys = sorted({k for s in summary for k in s.get("aux", {})})
    header = ["variant"] + [k.removeprefix("aux/") for k in keys]
    rows = [[s["variant"]] + [plus_minus(s["aux"].get(k), loss) for k in keys] for s in summary if s.get("aux")]
    return header, rows


def protocol_lines(plan: Plan, meta: dict) -> list[str]:
    ev = plan.eval
    measures = []
    if ev.knn:
        measures.append(f"kNN top-1 (k={ev.k}, cosine similarity, weighted votes exp(sim/T) with T={ev.temperature})"
                        + (" on a fixed subset (quick mode)" if ev.quick else ""))
    if ev.linear:
        measures.append("a linear probe (BatchNorm without affine + linear layer, trained on cached features)")
    if ev.finetune is not None:
        settings = ", ".join(f"{k}={v}" for k, v in ev.finetune.items()) or "maskkit finetune defaults"
        measures.append(f"end-to-end fine-tuning top-1 ({settings}; each run's seed)")
    seeds = ", ".join(map(str, plan.seeds))
    lines = [
        f"Base recipe: `{plan.base}`; spec: `{plan.spec_file}`.",
        f"Budget: {plan.budget_text()}",
        f"Schedule: {plan.schedule_text()}.",
        f"Seeds: {seeds}. The seed sets the initialisation and the masks; the data order and augmentations come "
        f"from data_seed {plan.data_seed}, the same for every run, so variants at one seed differ only in what "
        "the variant changes (paired comparison).",
        f"Evaluation: {' and '.join(measures)} on frozen {ev.pool}-pooled encoder features of the train split "
        f"({meta.get('train_images', '?')} images), scored on the test split ({meta.get('test_images', '?')} "
        "images), the same split for every run.",
        "Columns: mean ± sample std over seeds; final loss = mean training loss over the last logging window; "
        "images/s and wall time = training only (all sessions of a resumed run, evaluation excluded); enc. "
        "tokens/step = tokens the encoder processes per optimizer step (prefix + visible patches for a sparse "
        "encoder, all patches for a dense one, times the batch); enc. tokens = per run, in all; masker ms/batch "
        f"= milliseconds the masker takes to draw one batch's masks ({plan.batch_size} samples) on the run's "
        "device, without gradients (median of 20 draws; a masker that looks at the images draws on the first "
        "test images, and its time includes any model forward it runs).",
    ]
    if ev.baseline:
        lines.append("Random init: the same encoder at its initialisation (the seed's), scored the same way; "
                     "shown as the table's last row.")
    return lines


# -- writing --------------------------------------------------------------------------------------------------


def _csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


# Accuracies are fractions in results.json and percentages in the CSV files and the tables; the CSV column
# names carry the unit (knn_top1_pct; paired differences: delta_knn_top1_points).
PERCENT_KEYS = ("knn_top1", "linear_top1", "finetune_top1", "random_init_knn_top1", "random_init_linear_top1",
                "random_init_finetune_top1")


QUICK_COLUMN = "quick"  # both CSV files, every row: results.json's comparison.quick, written true or false


def _csv_name(key: str) -> str:
    if key.startswith("delta_"):
        return f"{key}_points"
    return f"{key}_pct" if key in PERCENT_KEYS else key


def _with_quick(columns: list[str], after: str) -> list[str]:
    """``columns`` with ``quick`` (results.json's ``comparison.quick``, per row) right after ``after``."""
    at = columns.index(after) + 1
    return columns[:at] + [QUICK_COLUMN] + columns[at:]


def _quick_text(quick: bool) -> str:
    """``true`` or ``false``, as results.json writes ``comparison.quick``."""
    return json.dumps(bool(quick))


def _run_csv_rows(rows: list[dict], quick: bool = False) -> tuple[list[str], list[dict]]:
    """results.csv: one row per run; ``quick`` (whether the scores are quick mode's subset kNN); accuracies in
    percent (``*_pct``), auxiliary losses as ``aux/...``; ``non_finite``: the NaN or infinite numbers that keep a
    finished run out of its variant's counts."""
    aux = sorted({k for r in rows for k in r.get("aux", {})})
    columns = _with_quick([_csv_name(c) for c in RUN_COLUMNS], after="status") + aux
    flat = []
    for r in rows:
        out = {_csv_name(k): (100 * v if k in PERCENT_KEYS and v is not None else v) for k, v in r.items()
               if k != "aux"}
        out["non_finite"] = "; ".join(r.get("non_finite") or []) or None  # knn_top1=nan: what left the seed out
        flat.append({**out, QUICK_COLUMN: _quick_text(quick), **r.get("aux", {})})
    return columns, flat


def _summary_csv_rows(summary: list[dict], quick: bool = False) -> tuple[list[str], list[dict]]:
    """summary.csv: one row per variant; ``quick`` as in results.csv; mean and std of every number over its
    seeds, and the paired differences to the reference variant with their 95% interval."""
    columns = ["variant", "changes", "runs", "finished", "steps", "epochs", "tokens_per_step", "encoder_tokens"]
    keys = NUMBERS + tuple(f"delta_{k}" for k, _ in ACCURACIES)
    flat_rows = []
    for s in summary:
        flat = {k: s[k] for k in columns}
        flat[QUICK_COLUMN] = _quick_text(quick)
        for key in keys:
            stat = s.get(key) or {}
            scale = 100 if key in PERCENT_KEYS or key.startswith("delta_") else 1
            for part in ("mean", "std"):
                flat[f"{_csv_name(key)}_{part}"] = None if stat.get(part) is None else scale * stat[part]
            if key.startswith("delta_"):
                ci = stat.get("ci95") or [None, None]
                flat[f"{_csv_name(key)}_ci95_low"], flat[f"{_csv_name(key)}_ci95_high"] = \
                    (None if x is None else scale * x for x in ci)
        flat_rows.append(flat)
    for key in keys:
        columns += [f"{_csv_name(key)}_mean", f"{_csv_name(key)}_std"]
        if key.startswith("delta_"):
            columns += [f"{_csv_name(key)}_ci95_low", f"{_csv_name(key)}_ci95_high"]
    return _with_quick(columns, after="finished"), flat_rows


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
    header += [label for k, label in ACCURACIES if measured(plan, k)]
    header += ["final loss", "images/s", "wall time"]
    out = []
    for r in rows:
        line = [f"{r['variant']}/seed{r['seed']}", r["status"], str(r["steps"])]
        for key, _ in accuracy_keys(plan):
            line.append("-" if r[key] is None else pct(100 * r[key]))
        line += ["-" if r["final_loss"] is None else loss(r["final_loss"]),
                 "-" if r["images_per_s"] is None else rate(r["images_per_s"]),
                 "-" if r["train_time_s"] is None else secs(r["train_time_s"])]
        out.append(line)
    return header, out


def _versions(out_dir: Path, plan: Plan) -> dict:
    for run in plan.runs:
        found = read_json(run.run_dir(out_dir) / "versions.json")
        if found:
            return found
    return {}


def _meta(out_dir: Path, plan: Plan) -> dict:
    """The split sizes the scores were made on, from the first ``eval.json`` made with the plan's settings."""
    for run in plan.runs:
        scores = read_json(run.run_dir(out_dir) / EVAL_FILE)
        if plan.evaluated_with(scores):
            return {"train_images": scores.get("train_images"), "test_images": scores.get("test_images")}
    return {}


def write_report(out_dir: str | Path, plan: Plan | None = None) -> Path:
    """Write the report of the comparison in ``out_dir`` into ``out_dir/report`` and return that folder."""
    out_dir = Path(out_dir)
    plan = plan or Plan.load(out_dir / PLAN_FILE)
    report = out_dir / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    rows, curves = collect(out_dir, plan)
    summary = summarize(plan, rows)
    meta = _meta(out_dir, plan)
    versions = _versions(out_dir, plan)

    _csv(report / "results.csv", *_run_csv_rows(rows, plan.eval.quick))
    columns, flat = _summary_csv_rows(summary, plan.eval.quick)
    _csv(report / "summary.csv", columns, flat)
    name = Path(plan.spec_file).stem
    comparison = {
        "name": name, "spec": plan.spec_file, "description": plan.description, "base": plan.base,
        "budget": {"match": plan.match, "reference": plan.reference, "encoder_tokens": plan.budget_tokens,
                   "text": plan.budget_text()},
        "seeds": list(plan.seeds), "data_seed": plan.data_seed, "steps_per_epoch": plan.steps_per_epoch,
        "batch_size": plan.effective_batch, "train_images": meta.get("train_images", plan.train_images),
        "test_images": meta.get("test_images"), "evaluation": {**_asdict(plan.eval)},
        "reference_variant": reference_variant(plan), "versions": versions, "quick": plan.eval.quick,
        "schedule": plan.schedule_text(), "units": "accuracies and their differences as fractions (0.5 = 50%)",
    }
    notes = findings(plan, summary)
    (report / "results.json").write_text(json.dumps({"comparison": comparison, "findings": notes,
                                                     "variants": summary, "runs": rows}, indent=2, default=str) + "\n")

    pictures: dict[str, str] = {}
    samples = _load_samples(plan, out_dir)
    # the runs the table counts: a failed or unfinished run would cut its variant's mean curve to the steps it reached
    finished = {f"{r['variant']}/seed{r['seed']}" for r in rows if r["status"] == "done"}
    curves = {run_id: records for run_id, records in curves.items() if run_id in finished}
    for filename, draw in (("loss_curves.png", lambda p: plot_loss_curves(plan, curves, p)),
                           ("accuracy.png", lambda p: plot_accuracy(plan, rows, summary, p)),
                           ("accuracy_vs_compute.png", lambda p: plot_accuracy_vs_compute(plan, summary, p)),
                           ("reconstructions.png", lambda p: plot_reconstructions(plan, samples, p)),
                           ("masks.png", lambda p: plot_masks(plan, samples, p))):
        if draw(report / filename) is not None:
            pictures[filename] = filename

    header, body = table_columns(plan), table_rows(plan, summary)
    dheader, drows = delta_rows(plan, summary)
    aheader, arows = aux_rows(summary)
    rheader, rbody = _run_table(plan, rows)
    failed = [r for r in rows if r["error"]]
    captions = {"loss_curves.png": "Training loss against steps and against encoder tokens processed",
                "accuracy.png": "Accuracy per variant (bars: mean, whiskers: std, dots: seeds)",
                "accuracy_vs_compute.png": "Accuracy against encoder tokens processed per run",
                "reconstructions.png": "The same test images reconstructed by every variant under its own masks",
                "masks.png": "Mask samples per variant"}
    n_seeds = len(plan.seeds)
    quick = " (QUICK evaluation: a subset, kNN only)" if plan.eval.quick else ""
    md = [f"# Comparison: {name}{quick}", ""]
    if plan.description:
        md += [plan.description, ""]
    if notes:
        md += ["## Read before ranking", ""] + [f"- **{note}**" for note in notes] + [""]
    md += [f"- {line}" for line in protocol_lines(plan, meta)] + [""]
    md += [f"## Results (mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''})", "", _md_table(header, body), ""]
    if drows:
        md += [f"Paired differences to **{reference_variant(plan)}** (same seed, same data order), in accuracy "
               "points:", "", _md_table(dheader, drows), ""]
    if arows:
        md += ["Auxiliary losses (last logging window, mean ± std over seeds):", "", _md_table(aheader, arows), ""]
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
            f"<h1>Comparison: {html.escape(name + quick)}</h1>"]
    if plan.description:
        page.append(f"<p>{html.escape(plan.description)}</p>")
    if notes:
        page += ["<h2>Read before ranking</h2>",
                 "<ul>" + "".join(f"<li><b>{html.escape(note)}</b></li>" for note in notes) + "</ul>"]
    page.append("<ul>" + "".join(f"<li>{html.escape(line).replace('`', '')}</li>"
                                 for line in protocol_lines(plan, meta)) + "</ul>")
    page += [f"<h2>Results (mean ± std over {n_seeds} seed{'s' if n_seeds > 1 else ''})</h2>",
             _html_table(header, body)]
    if drows:
        page += [f"<p>Paired differences to <b>{html.escape(reference_variant(plan))}</b> (same seed, same data "
                 "order), in accuracy points:</p>", _html_table(dheader, drows)]
    if arows:
        page += ["<p>Auxiliary losses (last logging window, mean ± std over seeds):</p>", _html_table(aheader, arows)]
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

    out_dir = Path(out_dir)
    plan = plan or Plan.load(out_dir / PLAN_FILE)
    rows, _ = collect(out_dir, plan)
    summary = summarize(plan, rows)
    n = len(plan.seeds)
    table = Table(title=f"{Path(plan.spec_file).stem}: mean ± std over {n} seed{'s' if n > 1 else ''}; "
                        f"budget: equal {'encoder tokens' if plan.match == 'tokens' else 'epochs'}"
                        + ("; QUICK evaluation (subset, kNN only)" if plan.eval.quick else ""),
                  caption="\n".join(findings(plan, summary)) or None, caption_justify="left")
    for i, column in enumerate(table_columns(plan)):
        table.add_column(column, justify="left" if i < 2 else "right", overflow="fold")
    for row in table_rows(plan, summary):
        table.add_row(*map(escape, row))
    return table
