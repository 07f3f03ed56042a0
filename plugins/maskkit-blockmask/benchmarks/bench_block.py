"""Masks per second: the vectorized ``block`` masker vs BEiT's Algorithm 1 written literally, one sample at a time.

    python plugins/maskkit-blockmask/benchmarks/bench_block.py                  # CPU, 1 thread, batch 4096, 14x14
    python plugins/maskkit-blockmask/benchmarks/bench_block.py --device cuda    # the masker on the GPU

Both run in this one process, interleaved repeat by repeat, so a busy machine slows both alike; each timing
calls one generator back to back for at least ``--min-time`` seconds, and the script prints the median of
``--repeats`` timings and the ratio. The reference is pure Python (``random`` and a set
of patch coordinates, exactly the loop of the paper's Algorithm 1) writing each mask into a NumPy row, which
is how a per-sample data-loader transform would produce it. On CUDA the masker's calls are queued back to back and
``torch.cuda.synchronize()`` runs before the first and after the last call of each timing, so the time covers
the whole generation on the device; the reference always runs on the CPU. ``--clock cpu`` (the default on
CPU) counts this process's CPU time, which other jobs on a shared machine distort less than wall time.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np
import torch

from maskkit_blockmask import BlockMasker


# ---------------------------------------------------------------------------------------------------------------
# REFERENCE: BEiT (Bao et al., 2021), Algorithm 1 "Blockwise Masking", written literally, one sample at a time.
# ---------------------------------------------------------------------------------------------------------------
def beit_algorithm1_reference(h: int, w: int, ratio: float = 0.4, min_patches: float = 16,
                              aspect: tuple[float, float] = (0.3, 1 / 0.3),
                              rng: random.Random = random) -> set[tuple[int, int]]:
    """The masked positions ``M`` of one ``h x w`` grid, as in the paper::

        M <- {}
        repeat
            s <- Rand(16, 0.4N - |M|)
            r <- Rand(0.3, 1/0.3)                    (log-uniform, as in the official code)
            a <- sqrt(s r);  b <- sqrt(s / r)
            t <- Rand(0, h - a);  l <- Rand(0, w - b)
            M <- M u {(i, j): i in [t, t + a), j in [l, l + b)}
        until |M| > 0.4N

    Positions outside the grid (when ``a > h`` or ``b > w``) are dropped.
    """
    n = h * w
    masked: set[tuple[int, int]] = set()
    while True:
        s = rng.uniform(min_patches, ratio * n - len(masked))
        r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        a, b = math.sqrt(s * r), math.sqrt(s / r)
        top, left = rng.uniform(0, h - a), rng.uniform(0, w - b)
        masked |= {(i, j)
                   for i in range(max(0, math.ceil(top)), min(h, math.ceil(top + a)))
                   for j in range(max(0, math.ceil(left)), min(w, math.ceil(left + b)))}
        if len(masked) > ratio * n:
            return masked


def reference_batch(batch_size: int, grid: tuple[int, int], ratio: float, rng: random.Random) -> torch.Tensor:
    """``batch_size`` masks from the reference, one by one: bool ``[B, h * w]``."""
    h, w = grid
    out = np.zeros((batch_size, h * w), dtype=bool)
    for row in out:
        for i, j in beit_algorithm1_reference(h, w, ratio, rng=rng):
            row[i * w + j] = True
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------------------------


def masks_per_second(make_batch, batch_size: int, device: torch.device, clock, min_time: float) -> float:
    """Call ``make_batch()`` back to back for at least ``min_time`` seconds; masks per second over the calls.

    On CUDA the device is synchronized before the first call and after the last, so the time covers all the
    work queued on the device (the calls themselves never wait for the GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, calls = clock(), 0
    while True:
        make_batch()
        calls += 1
        if device.type == "cuda" and clock() - start >= min_time:
            torch.cuda.synchronize(device)
        elapsed = clock() - start
        if elapsed >= min_time:
            return calls * batch_size / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="device of the vectorized masker (cpu, cuda)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--grid", type=int, nargs=2, default=(14, 14), metavar=("H", "W"))
    parser.add_argument("--ratios", type=float, nargs="+", default=(0.4, 0.5, 0.75))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds each timing lasts at least")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the reference uses one)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default=None,
                        help="wall: time.perf_counter; cpu: time.process_time, this process's CPU time, which a "
                             "busy shared machine distorts less (single-threaded runs only). Default: cpu for "
                             "--device cpu with 1 thread, else wall")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    if clock_name == "cpu" and (device.type != "cpu" or args.threads != 1):
        parser.error("--clock cpu needs --device cpu and --threads 1")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    grid = tuple(args.grid)
    b = args.batch_size
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"batch {b}, grid {grid[0]}x{grid[1]}, masker on {device} ({name}), reference on CPU (pure Python), "
          f"{clock_name} clock, median of {args.repeats}")
    print(f"{'ratio':>5}  {'reference masks/s':>18}  {'block masks/s':>14}  {'speed-up':>8}  "
          f"{'block exact=False':>17}  {'speed-up':>8}")
    for ratio in args.ratios:
        exact, inexact = BlockMasker(ratio), BlockMasker(ratio, exact=False)
        gen = torch.Generator(device=device).manual_seed(0)
        rng = random.Random(0)
        for masker in (exact, inexact):  # warm-up (CUDA context, kernels, allocator)
            masker(b, grid, generator=gen, device=device)
        ref_rate, exact_rate, inexact_rate = [], [], []
        for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits all three
            ref_rate.append(masks_per_second(lambda: reference_batch(b, grid, ratio, rng), b, torch.device("cpu"),
                                             clock, args.min_time))
            exact_rate.append(masks_per_second(lambda: exact(b, grid, generator=gen, device=device), b, device,
                                               clock, args.min_time))
            inexact_rate.append(masks_per_second(lambda: inexact(b, grid, generator=gen, device=device), b,
                                                 device, clock, args.min_time))
        ref, ex, inex = (statistics.median(r) for r in (ref_rate, exact_rate, inexact_rate))
        print(f"{ratio:>5}  {ref:>18,.0f}  {ex:>14,.0f}  {ex / ref:>7.1f}x  {inex:>17,.0f}  {inex / ref:>7.1f}x")


if __name__ == "__main__":
    main()
