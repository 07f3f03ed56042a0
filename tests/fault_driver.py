"""``maskkit train`` in a child process, with faults injected, for tests/test_faults.py.

    python tests/fault_driver.py [--sleep S] [--steps-to FILE] [--die-in-save N] [--pg-timeout S] [--slow-eval S]
        -- train ...

``--sleep S``: a plugin sleeps S seconds after each step (numerics unchanged), so the test can signal the
run mid-way; ``--steps-to FILE``: it also writes the number of the step just done to FILE (rank 0's, under
torchrun), so the test can signal the run after a given step. ``--pg-timeout S``: the process group's
operations time out after S seconds (the default is 10 minutes under NCCL, 30 under gloo). ``--slow-eval S``:
the evaluation after training takes S seconds longer.
``--die-in-save N``: the process SIGKILLs itself halfway through writing its N-th checkpoint
(a partial temporary file, never renamed). Built-ins only, two threads (the numbers the test compares with).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import torch

import maskkit
from maskkit import cli
from maskkit.engine import checkpoint


class Slow:
    def __init__(self, seconds: float, steps_to: str | None = None):
        self.seconds = seconds
        self.steps_to = steps_to if os.environ.get("RANK", "0") == "0" else None

    @maskkit.hookimpl
    def maskkit_step_end(self, step: int) -> None:
        if self.steps_to:
            with open(self.steps_to + ".tmp", "w") as f:
                f.write(str(step))
            os.replace(self.steps_to + ".tmp", self.steps_to)
        time.sleep(self.seconds)


def die_in_save(nth: int) -> None:
    real_save = torch.save
    saves = []

    def save(obj, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == nth:
            handle.write(b"PK\x03\x04 half of a checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, handle, *args, **kwargs)

    checkpoint.torch.save = save


def short_process_group_timeout(seconds: float) -> None:
    import datetime

    import torch.distributed as dist

    real_init = dist.init_process_group

    def init(*args, **kwargs):
        return real_init(*args, **{**kwargs, "timeout": datetime.timedelta(seconds=seconds)})

    dist.init_process_group = init


def slow_evaluation(seconds: float) -> None:
    import maskkit.evaluate

    real_evaluate = maskkit.evaluate.evaluate

    def evaluate(*args, **kwargs):
        time.sleep(seconds)
        return real_evaluate(*args, **kwargs)

    maskkit.evaluate.evaluate = evaluate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--steps-to")
    parser.add_argument("--die-in-save", type=int)
    parser.add_argument("--pg-timeout", type=float)
    parser.add_argument("--slow-eval", type=float)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.die_in_save:
        die_in_save(args.die_in_save)
    if args.pg_timeout:
        short_process_group_timeout(args.pg_timeout)
    if args.slow_eval:
        slow_evaluation(args.slow_eval)
    registry = maskkit.Registry.from_plugins(autoload=False, plugins={"slow": Slow(args.sleep, args.steps_to)})
    cli._registry = lambda args=None: registry
    return cli.main([a for a in args.rest if a != "--"])


if __name__ == "__main__":
    sys.exit(main())
