"""``maskkit compare SPEC.yaml``: run a comparison (or resume it) and write its report.

    maskkit compare SPEC [--out DIR] [--device DEV] [--gpus auto|none|0,1,...] [--retry-failed]
    maskkit compare SPEC --dry-run          the plan (budget, steps, cost per variant, what is done) only
    maskkit compare SPEC --report-only      rebuild the report from what is in --out
    maskkit compare SPEC --quick            kNN on a subset, no linear probe: to iterate, labelled in the report

``SPEC`` is a path, or the name of a comparison shipped in ``recipes/compare/`` (``mae_table1f``). The output
folder defaults to ``runs/compare/SPEC-NAME`` (no timestamp: running the same command again resumes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from maskkit.errors import MaskkitError


def resolve_spec(spec: str) -> Path:
    """A spec path, or the name of a comparison under the source tree's ``recipes/compare/``."""
    path = Path(spec)
    if path.is_file():
        return path
    from maskkit.builtin.plugin import RECIPE_DIR

    name = spec.removeprefix("compare/").removesuffix(".yaml")
    shipped = RECIPE_DIR / "compare" / f"{name}.yaml"
    if path.suffix not in (".yaml", ".yml") or not path.parent.parts:
        if shipped.is_file():
            return shipped
    known = sorted(p.stem for p in (RECIPE_DIR / "compare").glob("*.yaml")) if (RECIPE_DIR / "compare").is_dir() \
        else []
    raise MaskkitError(f"{spec}: no such comparison spec file" + (f" (shipped: {', '.join(known)})" if known else ""))


def default_out(spec_path: Path) -> Path:
    return Path("runs") / "compare" / spec_path.stem


def plan_table(plan, statuses=None) -> Table:
    n = len(plan.seeds)
    table = Table(title=f"{Path(plan.spec_file).stem}: {len(plan.variants)} variants x {n} seed"
                        f"{'s' if n > 1 else ''}; budget: equal "
                        f"{'encoder tokens' if plan.match == 'tokens' else 'epochs'}")
    others = any(v.other_changes for v in plan.variants)
    columns = ["variant", "masker"] + (["other changes"] if others else []) + \
        ["hidden", "enc. tokens/step", "steps", "epochs", "enc. tokens", "runs"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("variant", "masker", "other changes") else "right",
                         overflow="fold")
    by_variant: dict[str, list[str]] = {}
    for status in statuses or []:
        by_variant.setdefault(status.run.variant, []).append(status.state)
    for v in plan.variants:
        hidden = "varies" if v.hidden is None else f"{v.hidden}/{v.num_patches}"
        states = by_variant.get(v.name)
        runs = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) if states else str(n)
        cells = [v.name, v.masker_text(), *([v.other_changes or "-"] if others else []), hidden,
                 f"{v.tokens_per_step:,}", str(v.steps), f"{v.epochs:.3g}", f"{v.encoder_tokens:,}", runs]
        table.add_row(*map(escape, cells))
    return table


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from maskkit._validators import check_device
    from maskkit.compare.plan import Plan, make_plan
    from maskkit.compare.report import rich_table, write_report
    from maskkit.compare.runner import PLAN_FILE, run_comparison, run_status
    from maskkit.compare.spec import load_spec
    from maskkit.registry import registry_for

    if args.device is not None:
        check_device(args.device, "--device")
    spec_path = resolve_spec(args.spec)
    out = Path(args.out) if args.out else default_out(spec_path)
    if args.report_only:
        if not (out / PLAN_FILE).is_file():
            raise MaskkitError(f"{out}: no comparison here yet (no {PLAN_FILE}); run `maskkit compare {args.spec}` "
                               "first, or give its --out")
        plan = Plan.load(out / PLAN_FILE)
        report = write_report(out, plan)
        console.print(rich_table(out, plan))
        console.print(f"report: {report / 'report.md'} (also report.html, results.csv, results.json)")
        return 0
    registry = registry_for(getattr(args, "plugins", None) or ())
    spec = load_spec(spec_path, registry=registry)
    registry = registry.with_plugins(spec.plugins)
    if args.quick:
        import attrs

        spec = attrs.evolve(spec, eval=spec.eval.as_quick())
    plan = make_plan(spec, registry, device=args.device)
    if args.dry_run:
        statuses = [run_status(run, plan, out) for run in plan.runs] if out.is_dir() else None
        console.print(plan_table(plan, statuses))
        console.print(escape(f"budget: {plan.budget_text()}"))
        from maskkit.compare.results import findings

        for note in findings(plan, []):  # what the plan alone says a reader must know (seeds, warm-up, compute)
            console.print(escape(f"read before ranking: {note}"))
        console.print(f"output folder: {out}")
        return 0
    console.print(plan_table(plan))
    console.print(escape(f"budget: {plan.budget_text()}"))
    outcome = run_comparison(plan, out, registry=registry, console=console, progress=not args.no_progress,
                             gpus=args.gpus, retry_failed=args.retry_failed, spec_text=spec_path.read_text())
    console.print(rich_table(out, plan))
    console.print(f"report: {outcome.report_dir / 'report.md'} (also report.html, results.csv, summary.csv, "
                  "results.json and the plots)")
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} run(s) failed:[/red] {', '.join(outcome.failed)} "
                      "(see the report; --retry-failed runs them again)")
        return 1
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``compare`` on ``maskkit``'s sub-command parsers (``func(args, console) -> int``)."""
    p = subparsers.add_parser("compare", help="compare masking strategies (variants x seeds, matched budget)",
                              description="Train and evaluate every variant x seed of a comparison spec, resuming "
                                          "what is unfinished, and write a report (tables, CSV/JSON, plots).")
    p.add_argument("spec", help="comparison spec .yaml, or a shipped one's name (e.g. mae_table1f)")
    p.add_argument("--out", help="output folder (default runs/compare/SPEC-NAME; re-running resumes it)")
    p.add_argument("--device", help="device of every run (auto, cpu, cuda, cuda:N; default: the spec's, else the "
                                    "recipe's)")
    p.add_argument("--gpus", default="auto", help="spread runs over GPUs, one worker process each: auto (all "
                                                  "visible GPUs when there are 2 or more), none, or a list such "
                                                  "as 0,1 (default auto)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is done; train nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from --out; train nothing")
    p.add_argument("--quick", action="store_true", help="evaluate quickly, for iterating: kNN on a fixed subset of "
                                                        "the splits, no linear probe (the report says so)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for a log file); every run still "
                                                              "prints a line when it starts and one when it ends")
    p.set_defaults(func=cmd_compare)
    return p
