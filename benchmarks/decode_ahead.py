"""``data.decode: device`` with the decode in the training thread against decoded ahead in a thread, on the CPU.

``maskkit train`` with ``data.decode: device`` finishes each batch (decode, crop, flip) in a worker thread, two
batches ahead of the step (:func:`maskkit.data.ahead.finish_ahead`), so that the training thread does not wait
for it. This times the real trainer both ways (``Trainer.decode_ahead`` 0 and 2), rounds alternating in one
process, on generated ImageNet-like JPEGs, with a small ViT at 224 px whose step costs about as much as the
decode, one intra-op thread for the model (the decode thread takes the second core of a 2-core machine):

    python benchmarks/decode_ahead.py [--steps 24] [--rounds 3] [--batch-size 16] [--threads 1]

It prints the steps/s of each run and the median of the rounds' ratios (ahead over inline). On a CPU the decode
competes with the model for the same cores, so this shows that the overlap works and what it is worth when a
core is free; on a GPU the decode is nvJPEG's, and the training thread's wait for it is what goes away
(``scripts/gpu-check.sh`` times ``maskkit train`` with ``data.decode: device`` against the bench's step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import maskkit
from maskkit.bench.data import write_jpegs
from maskkit.engine.trainer import Trainer
from maskkit.recipe import load_recipe
from maskkit.registry import Registry


def recipe_tree(root: Path, *, batch_size: int, steps: int) -> dict:
    return {
        "seed": 0,
        "data": {"name": "image_folder", "root": str(root), "in_chans": 3, "decode": "device"},
        "augment": {"scale": [0.2, 1.0], "hflip": True},
        "masker": {"name": "random", "ratio": 0.75},
        "encoder": {"name": "vit_tiny_patch16_224", "img_size": 224, "patch_size": 16, "in_chans": 3,
                    "embed_dim": 96, "depth": 2, "num_heads": 3},
        "decoder": {"name": "mae", "embed_dim": 64, "depth": 1, "num_heads": 2},
        "target": {"name": "norm_pixels"},
        "loss": {"name": "mse"},
        "train": {"max_steps": steps, "batch_size": batch_size, "base_lr": 1.5e-4, "warmup_epochs": 0,
                  "num_workers": 1, "log_every": steps, "ckpt_every": 0, "device": "cpu", "compile": False},
        "eval": {"knn": False, "reconstructions": 0},
    }


class StepClock:
    """A plugin noting when each step ends."""

    def __init__(self):
        self.ends: list[float] = []

    @maskkit.hookimpl
    def maskkit_step_end(self, trainer, model, step, loss):
        self.ends.append(time.perf_counter())


def run_once(tree: dict, out: Path, depth: int, skip: int = 3) -> float:
    """Steps per second of one ``Trainer.fit`` after its first ``skip`` steps (loader start-up, first decode)."""
    clock = StepClock()
    trainer = Trainer(load_recipe(tree), out, progress=False,
                      registry=Registry.from_plugins(autoload=False, plugins={"clock": clock}))
    trainer.decode_ahead = depth
    trainer.fit()
    return (len(clock.ends) - 1 - skip) / (clock.ends[-1] - clock.ends[skip])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the model step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpegs(Path(tmp) / "jpegs", max(256, args.batch_size * args.steps))
        tree = recipe_tree(root, batch_size=args.batch_size, steps=args.steps)
        rates: dict[int, list[float]] = {0: [], 2: []}
        for r in range(args.rounds):
            for depth in ((0, 2) if r % 2 == 0 else (2, 0)):
                started = time.perf_counter()
                rates[depth].append(run_once(tree, Path(tmp) / f"run-{r}-{depth}", depth))
                print(f"round {r + 1}: decode_ahead={depth}: {rates[depth][-1]:.2f} steps/s "
                      f"({time.perf_counter() - started:.0f} s with start-up)", flush=True)
        ratios = [a / i for a, i in zip(rates[2], rates[0])]
        print(f"\nbatch {args.batch_size}, {args.steps} steps, {args.threads} model thread(s), "
              f"{torch.get_num_threads()} intra-op: decoded in the training thread "
              f"{statistics.median(rates[0]):.2f} steps/s, decoded 2 ahead in a thread "
              f"{statistics.median(rates[2]):.2f} steps/s; ahead / inline, median of {args.rounds} rounds "
              f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
