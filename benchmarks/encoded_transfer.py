"""What receiving a ``data.decode: device`` batch from the loader workers costs the training process.

With ``data.decode: device`` a worker sends each image's file bytes undecoded. Every tensor crosses the process
boundary with a file descriptor of its own (torch's default sharing strategy), which the training process
receives and maps: one per image when the batch is a plain list of crops, one per batch when it is a
:class:`~maskkit.data.encoded.CropBatch`, which packs the bytes into one tensor. This times both through a real
``DataLoader`` over the same generated JPEGs (ImageNet-like, ~500x375), rounds alternating, the workers' queues
full before each timed batch, and prints the main thread's CPU time per batch (``time.thread_time``: what the
training thread cannot spend launching work) and its wall time per batch, and the ratio of the two forms.

    python benchmarks/encoded_transfer.py [--batch-size 64] [--workers 2] [--batches 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from maskkit.bench.data import write_jpegs
from maskkit.data import ImageFolder, TrainTransform
from maskkit.data.encoded import EncodedView
from maskkit.data.loading import AugmentedDataset, GlobalBatchSampler, make_loader, stack_collate


def as_plain_list(batch):
    """The form before CropBatch: ``(list of PlannedCrop, labels)``, one tensor (and file) per image."""
    crops, labels = stack_collate(batch)
    return list(crops), labels


def time_batches(dataset, collate, *, batch_size: int, workers: int, batches: int) -> tuple[float, float]:
    """``(main-thread CPU seconds, wall seconds)`` per batch, medians over ``batches`` batches."""
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed=0)
    loader = make_loader(dataset, sampler, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    next(it)  # the workers' start-up
    cpu, wall = [], []
    for _ in range(batches):
        time.sleep(0.5)  # the next batches are ready: what is timed is receiving one, not waiting for it
        c0, t0 = time.thread_time(), time.perf_counter()
        batch = next(it)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
        del batch
    del it
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        base = ImageFolder(write_jpegs(Path(folder), args.batch_size * (args.batches + 1) * 2) / "images")
        transform = TrainTransform(224, mean=base.mean, std=base.std, output="uint8")
        dataset = AugmentedDataset(EncodedView(base), transform)
        results: dict[str, list[tuple[float, float]]] = {"one tensor per image": [], "CropBatch (one per batch)": []}
        for _ in range(args.rounds):
            for name, collate in zip(results, (as_plain_list, stack_collate)):
                results[name].append(time_batches(dataset, collate, batch_size=args.batch_size,
                                                  workers=args.workers, batches=args.batches))
    print(f"receiving a batch of {args.batch_size} undecoded JPEGs from {args.workers} loader workers "
          f"(median of {args.rounds} rounds of {args.batches} batches)")
    medians = {}
    for name, runs in results.items():
        cpu, wall = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        medians[name] = cpu
        print(f"  {name:28s} main-thread CPU {1e3 * cpu:6.2f} ms   wall {1e3 * wall:6.2f} ms per batch")
    old, new = medians.values()
    print(f"  one tensor per image / CropBatch, main-thread CPU: {old / new:.1f}x")


if __name__ == "__main__":
    main()
