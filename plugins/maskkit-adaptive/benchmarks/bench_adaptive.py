"""Cost of a training step with each masker of maskkit-adaptive, against MAE's random masking, in one process.

    python plugins/maskkit-adaptive/benchmarks/bench_adaptive.py                 # quickstart MAE, batch 128, CPU
    python plugins/maskkit-adaptive/benchmarks/bench_adaptive.py --device cuda

Every model is the quickstart MAE (ViT 64 x 4, 14 x 14 grid) built from the same seed; a step is what the
trainer does: the masker draws inside ``model(images, generator=...)`` with the context it names, the loss
(plus any auxiliary loss) goes backward and AdamW steps. The maskers run interleaved, round by round, on the
same real Fashion-MNIST batch, so a busy machine slows them alike; on the CPU the clock is this process's
CPU time with one thread (``--clock cpu``), which other jobs on a shared machine distort less than wall time.
Prints the median seconds per step and the ratio to ``random``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import maskkit
from maskkit.registry import Registry

MASKERS = {
    "random": "{name: random, ratio: 0.75}",
    "attmask": "{name: attmask, ratio: 0.75, mode: high}",
    "hpm": "{name: hpm, in_dim: 64, ratio: 0.75}",
    "adamae": "{name: adamae, in_dim: 64, ratio: 0.75}",
    "colormae": "{name: colormae, color: green, ratio: 0.75}",
    "curriculum": "{name: curriculum, ratio: 0.75}",
}
ROOT = Path(__file__).resolve().parents[3]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per masker per round")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    if device.type == "cpu":
        torch.set_num_threads(1)
    now = time.process_time if clock == "cpu" else time.perf_counter
    from maskkit.data import FashionMNIST
    from maskkit_adaptive import plugin

    registry = Registry.from_plugins(autoload=False, plugins={"adaptive": plugin})
    ds = FashionMNIST("train", source="embedded")
    images = ((ds.images[:args.batch_size].float() / 255 - ds.mean[0]) / ds.std[0]).to(device)
    runs = {}
    for name, masker in MASKERS.items():
        recipe = maskkit.load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"masker={masker}"], registry=registry)
        torch.manual_seed(0)
        model = maskkit.build_model(recipe, registry=registry).to(device).train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {name: [] for name in runs}

    def step(name: str, i: int) -> None:
        model, opt = runs[name]
        out = model(images, generator=torch.Generator(device=device).manual_seed(i))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    for name in runs:  # warm-up
        step(name, 0)
    for r in range(args.rounds):
        for name in runs:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = now()
            for i in range(args.steps):
                step(name, r * args.steps + i + 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((now() - start) / args.steps)
    base = statistics.median(times["random"])
    print(f"seconds per training step ({clock} clock, {device}, batch {args.batch_size}, median of {args.rounds} "
          f"rounds x {args.steps} steps)")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:12s} {t:7.3f} s   x{t / base:.2f}")


if __name__ == "__main__":
    main()
