"""Cost of the ``hog`` target next to the pixel targets, per batch (default: 256 RGB images of 224x224).

    python plugins/maskkit-hog/benchmarks/bench_hog_target.py [--batch 256] [--size 224] [--repeats 5]
                                                               [--device cpu|cuda] [--threads N]

Prints the best and median wall-clock seconds per batch of each target (ViT-B/16 patches), measured
interleaved so that a load change on a shared machine hits all targets alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import maskkit
from maskkit_hog import HOGTarget


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    targets = {
        "pixels": maskkit.create("target", "pixels", patch_size=args.patch, in_chans=3),
        "norm_pixels": maskkit.create("target", "norm_pixels", patch_size=args.patch, in_chans=3),
        "hog": HOGTarget(args.patch, 3),
        "hog (gray)": HOGTarget(args.patch, 3, channels="gray"),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    for target in targets.values():  # warm-up
        target.to(device)(images[:8])
    for _ in range(args.repeats):
        for name, target in targets.items():
            _sync(device)
            start = time.perf_counter()
            target(images)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    print(f"batch {args.batch} x 3 x {args.size} x {args.size}, patch {args.patch}, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    base = min(times["pixels"])
    for name, values in times.items():
        print(f"  {name:12s} best {min(values):7.3f} s   median {statistics.median(values):7.3f} s   "
              f"({min(values) / base:4.1f}x pixels)")


if __name__ == "__main__":
    main()
