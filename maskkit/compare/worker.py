"""One run of a comparison in its own process: ``python -m maskkit.compare.worker OUT RUN_ID``.

The comparison runner starts one per GPU (with ``CUDA_VISIBLE_DEVICES`` set) when it spreads runs over several
GPUs. The worker reads ``OUT/plan.json`` (never the spec), uses the installed plugins and the plan's one-file
plugins (``plan.plugins``), and exits 0 when the run is finished, 1 when it failed (the error is in the run's
``compare.json``), 2 on a usage error, 128 + N when signal N stopped it (after a checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console

from maskkit.errors import RunInterrupted


def main(argv: Sequence[str] | None = None) -> int:
    from maskkit.compare.plan import Plan
    from maskkit.compare.runner import DONE, PLAN_FILE, execute_run

    parser = argparse.ArgumentParser(prog="python -m maskkit.compare.worker")
    parser.add_argument("out_dir")
    parser.add_argument("run_id", help="VARIANT/seedS")
    parser.add_argument("--retry-failed", action="store_true")
    args = parser.parse_args(argv)
    plan_path = Path(args.out_dir) / PLAN_FILE
    try:
        plan = Plan.load(plan_path)
        run = plan.run(args.run_id)
    except (OSError, ValueError, KeyError) as exc:
        print(f"maskkit compare worker: error: {plan_path}: cannot run {args.run_id!r}: {exc}", file=sys.stderr)
        return 2
    from maskkit.registry import registry_for

    console = Console(stderr=False, force_terminal=False)
    try:
        status = execute_run(run, plan, args.out_dir, registry=registry_for(plan.plugins), console=console,
                             progress=False, retry_failed=args.retry_failed)
    except RunInterrupted as exc:  # the runner stops its workers with SIGTERM: the checkpoint is saved
        print(f"{run.run_id}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    if status.state != DONE:
        print(f"{run.run_id}: {status.state}: {status.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
