"""``maskkit compare``: is my masking idea better, and at what cost?

A comparison spec names a base recipe, named variants, seeds, an evaluation and a matched budget (equal epochs
or equal encoder tokens). Every variant x seed is trained on the same data in the same order, evaluated on the
same split (kNN and/or a linear probe on frozen features), and the report puts the accuracies next to the cost.

>>> from maskkit.compare import load_spec, make_plan, run_comparison
>>> spec = load_spec("recipes/compare/mae_table1f.yaml")
>>> plan = make_plan(spec)
>>> outcome = run_comparison(plan, "runs/compare/mae_table1f")   # resumes whatever is unfinished
>>> outcome.report_dir / "report.md"
"""

from maskkit.compare.plan import Plan, RunPlan, VariantPlan, make_plan, matched_steps, tokens_per_image
from maskkit.compare.report import write_report
from maskkit.compare.runner import CompareOutcome, execute_run, run_comparison, run_status
from maskkit.compare.spec import CompareSpec, load_spec, parse_spec

__all__ = ["CompareSpec", "load_spec", "parse_spec", "Plan", "RunPlan", "VariantPlan", "make_plan",
           "matched_steps", "tokens_per_image", "run_comparison", "execute_run", "run_status", "CompareOutcome",
           "write_report"]
