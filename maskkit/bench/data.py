"""Throughput of the input pipelines alone (no model): is a training run limited by its data or its model?

Two pipelines, both the trainer's own classes (``AugmentedDataset`` + ``TrainTransform`` + ``GlobalBatchSampler``
+ ``make_loader``):

* ``quickstart``: the embedded Fashion-MNIST subset at 28 px, as ``recipes/quickstart.yaml`` trains;
* ``imagefolder``: an ``ImageFolder`` of JPEGs written to a temporary folder (ImageNet-like sizes around
  500 x 375), decoded with PIL, RandomResizedCrop to 224 + flip (uint8 out of the workers; the trainer
  normalises on the device): the per-image work of MAE's ImageNet pretraining. It writes enough files for every
  worker to be busy for several batches (:func:`files_for`), and times, side by side in the same run and on the
  same number of processes, a plain loop (PIL decode + torchvision's ``RandomResizedCrop`` on the PIL image +
  flip, no loader, no batching, nothing sent between processes): the ratio of the two says how much the
  loader's own machinery costs, and the rounds alternate so that a shared machine's drift hits both alike.

The first batch (worker start-up) and the plain loop's process start-up are not timed.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from maskkit.data.ahead import DEFAULT_DEPTH, finish_ahead
from maskkit.data.loading import AugmentedDataset, GlobalBatchSampler, make_loader
from maskkit.data.transforms import TrainTransform


@attrs.frozen
class DataResult:
    pipeline: str
    description: str
    workers: int
    batch_size: int
    images: int  # images timed
    seconds: float
    images_per_s: float
    files: int | None = None  # files in the folder (JPEG pipeline)
    baseline_images_per_s: float | None = None  # the plain decode + crop loop, same processes (median round)
    ratio: float | None = None  # loader / plain loop, the median of the rounds' ratios
    ratio_range: tuple[float, float] | None = None  # the least and greatest round's ratio


def loader_throughput(dataset, transform, *, batch_size: int, workers: int, images: int, seed: int = 0,
                      pin_memory: bool = False, finish: Callable[[Any], Any] | None = None,
                      finish_device: str = "cpu", finish_depth: int = DEFAULT_DEPTH) -> tuple[int, float]:
    """``(images timed, seconds)`` for at least ``images`` augmented images through the trainer's loader
    (``pin_memory`` as the trainer sets it on CUDA), epoch after epoch, after one untimed batch. ``finish``: what
    the trainer does to each batch in its own process (a :class:`~maskkit.data.encoded.DeviceDecoder`), done as
    the trainer does it, ``finish_depth`` batches ahead in a thread (:func:`~maskkit.data.ahead.finish_ahead`) on
    ``finish_device``; the clock stops once the device has finished it."""
    augmented = AugmentedDataset(dataset, transform, seed)
    batch_size = min(batch_size, len(dataset))
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed=seed)
    loader = make_loader(augmented, sampler, num_workers=workers, pin_memory=pin_memory)

    def epochs(source):
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            augmented.set_epoch(epoch)
            yield from source

    batches = epochs(loader)
    if finish is not None:
        batches = finish_ahead(batches, finish, finish_device, depth=finish_depth)
    counted, start, batch = -1, 0.0, None
    try:
        for finished in batches:
            if len(finished) == 3:  # (images, labels, BadBatch): files ``finish`` could not decode
                bad = finished[2].bad[0]
                raise RuntimeError(f"{bad.path} did not decode ({bad.reason})")
            batch = finished[0]
            if counted < 0:  # the first batch pays for the workers' start-up
                _wait_for(batch)
                counted, start = 0, time.perf_counter()
                continue
            counted += batch.shape[0]
            if counted >= images:
                break
        _wait_for(batch)
        return counted, time.perf_counter() - start
    finally:
        batches.close()
        del loader  # stops persistent workers


def _wait_for(images: Any) -> None:
    """Wait until the device has made ``images`` (a CUDA tensor's kernels run asynchronously)."""
    if getattr(images, "is_cuda", False):
        import torch

        torch.cuda.synchronize(images.device)


def write_jpegs(folder: Path, count: int, *, seed: int = 0, quality: int = 90,
                pool: ProcessPoolExecutor | None = None) -> Path:
    """``count`` RGB JPEGs in ``folder/images/`` (one class), sizes 400-600 x 300-450 px, smooth random
    content plus noise (so they compress like photos rather than like flat colour or pure noise). File ``i``
    depends on ``(seed, i)`` only; ``pool`` writes them in its processes."""
    root = folder / "images"
    root.mkdir(parents=True, exist_ok=True)
    if pool is None:
        _write_jpeg_range(root, 0, count, seed, quality)
    else:
        step = -(-count // 64)
        list(pool.map(_write_jpeg_range, *zip(*[(root, lo, min(lo + step, count), seed, quality)
                                                 for lo in range(0, count, step)])))
    return folder


def _write_jpeg_range(root: Path, start: int, stop: int, seed: int, quality: int) -> None:
    from PIL import Image

    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        w, h = int(rng.integers(400, 601)), int(rng.integers(300, 451))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        array = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(root / f"{i:05d}.jpg", quality=quality)


def files_for(workers: int, batch_size: int, batches_per_worker: int = 4, least: int = 256) -> int:
    """JPEGs to write so that every one of ``workers`` loader processes gets ``batches_per_worker`` batches of
    ``batch_size`` per epoch (at least ``least``): fewer files than ``workers x batch`` leave workers idle."""
    return max(least, max(workers, 1) * batch_size * batches_per_worker)


def _plain_decode_crop(paths: list[str], img_size: int, seed: int) -> int:
    """The baseline's per-image work in one process: PIL decode to RGB, torchvision's ``RandomResizedCrop``
    (scale 0.2-1, bicubic) and a random flip on the PIL image, then a uint8 array. Returns the images done."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    crop = T.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC)
    for path in paths:
        with Image.open(path) as img:
            out = crop(img.convert("RGB"))
        if torch.rand(()) < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        np.asarray(out)
    return len(paths)


def _ready(_: int) -> int:
    time.sleep(0.05)  # long enough for the pool to start every process
    return os.getpid()


def plain_loop_throughput(paths: list[str], *, processes: int, img_size: int = 224, seed: int = 0,
                          pool: ProcessPoolExecutor | None = None) -> tuple[int, float]:
    """``(images, seconds)`` of :func:`_plain_decode_crop` over ``paths`` split into ``processes`` contiguous
    shares run at once (in this process when ``processes`` is 0). ``pool``: started processes to reuse (their
    start-up is never timed)."""
    if processes == 0:
        start = time.perf_counter()
        done = _plain_decode_crop(paths, img_size, seed)
        return done, time.perf_counter() - start
    shares = [paths[i::processes] for i in range(processes)]
    own = pool is None
    pool = pool or plain_pool(processes)
    try:
        start = time.perf_counter()
        done = sum(pool.map(_plain_decode_crop, shares, [img_size] * processes, range(seed, seed + processes)))
        return done, time.perf_counter() - start
    finally:
        if own:
            pool.shutdown()


def plain_pool(processes: int) -> ProcessPoolExecutor:
    """``processes`` started worker processes (forked where the platform can, as the DataLoader's are)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method))
    list(pool.map(_ready, range(4 * processes)))  # start them all before any timing
    return pool


def quickstart_pipeline(*, workers: int, images: int, registry=None, pin_memory: bool = False) -> DataResult:
    """The quickstart recipe's loader (its dataset, augmentation and batch size)."""
    from maskkit.builder import build_dataset
    from maskkit.recipe import load_recipe

    recipe = load_recipe("quickstart", registry=registry)
    dataset = build_dataset(recipe, "train", registry)
    enc, aug = recipe.tree["encoder"], recipe.augment
    transform = TrainTransform(enc["img_size"], scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
                               mean=dataset.mean, std=dataset.std, output="uint8")  # as the trainer's workers
    batch = recipe.train.batch_size
    counted, seconds = loader_throughput(dataset, transform, batch_size=batch, workers=workers, images=images,
                                         pin_memory=pin_memory)
    return DataResult("quickstart", f"embedded Fashion-MNIST, {enc['img_size']} px crops", workers, batch,
                      counted, seconds, counted / seconds)


def imagefolder_pipeline(*, workers: int, images: int | None, batch_size: int, files: int | None = None,
                         img_size: int = 224, folder: Path | None = None, pin_memory: bool = False,
                         rounds: int = 3, baseline: bool = True, output: str = "uint8") -> DataResult:
    """JPEG decode + RandomResizedCrop(``img_size``, scale 0.2-1) + flip from an ``ImageFolder`` of ``files``
    generated JPEGs (default :func:`files_for`; in ``folder``, or a temporary folder removed afterwards), through
    the trainer's loader with ``workers`` processes, ``images`` timed per round (default: ``files``). With
    ``baseline``, each of ``rounds`` rounds also times the plain loop on as many processes over the same number
    of images, alternating which goes first; the rates are the rounds' medians. ``output="float"`` normalises
    in the workers instead (what the trainer did before it moved that to the device), for comparison."""
    from maskkit.data.image_folder import ImageFolder

    files = files or files_for(workers, batch_size)
    images = images or files
    with tempfile.TemporaryDirectory(prefix="maskkit-bench-") as tmp:
        pool = plain_pool(workers) if baseline and workers > 0 else None
        root = write_jpegs(Path(folder or tmp), files, pool=pool)
        dataset = ImageFolder(root, in_chans=3)
        transform = TrainTransform(img_size, scale=(0.2, 1.0), hflip=True, mean=dataset.mean,
                                   std=dataset.std, output=output)
        batch = min(batch_size, files)
        paths = [str(path) for path, _ in dataset.samples]
        paths = (paths * (-(-images // len(paths))))[:images]
        loader_rates, plain_rates, ratios, counted_total, seconds_total = [], [], [], 0, 0.0
        try:
            for round_ in range(max(1, rounds) if baseline else 1):
                order = ("loader", "plain") if round_ % 2 == 0 else ("plain", "loader")
                rates = {}
                for which in order if baseline else ("loader",):
                    if which == "loader":
                        counted, seconds = loader_throughput(dataset, transform, batch_size=batch, workers=workers,
                                                             images=images, seed=round_, pin_memory=pin_memory)
                        counted_total, seconds_total = counted_total + counted, seconds_total + seconds
                    else:
                        counted, seconds = plain_loop_throughput(paths, processes=workers, img_size=img_size,
                                                                 seed=round_, pool=pool)
                    rates[which] = counted / seconds
                loader_rates.append(rates["loader"])
                if baseline:
                    plain_rates.append(rates["plain"])
                    ratios.append(rates["loader"] / rates["plain"])
        finally:
            if pool is not None:
                pool.shutdown()
    return DataResult("imagefolder", f"JPEG ~500x375 decode + RandomResizedCrop {img_size}", workers, batch,
                      counted_total, seconds_total, statistics.median(loader_rates), files,
                      statistics.median(plain_rates) if plain_rates else None,
                      statistics.median(ratios) if ratios else None,
                      (min(ratios), max(ratios)) if ratios else None)


def device_decode_pipeline(root: Path, *, workers: int, images: int | None, batch_size: int, device: str,
                           img_size: int = 224) -> DataResult:
    """``data.decode: device`` over the JPEGs under ``root`` (as :func:`imagefolder_pipeline` wrote them): the
    workers read files and draw crops, ``device`` decodes whole batches (nvJPEG on CUDA), crops, resizes and
    flips; ``images`` timed (default: one pass over the files). No plain-loop baseline: on a GPU the question
    is whether it outruns the model step, which the goals table asks."""
    from maskkit.data.encoded import DeviceDecoder, EncodedView
    from maskkit.data.image_folder import ImageFolder

    dataset = ImageFolder(root, in_chans=3)
    transform = TrainTransform(img_size, scale=(0.2, 1.0), hflip=True, mean=dataset.mean, std=dataset.std,
                               output="uint8")
    batch = min(batch_size, len(dataset))
    counted, seconds = loader_throughput(EncodedView(dataset), transform, batch_size=batch, workers=workers,
                                         images=images or len(dataset), finish=DeviceDecoder(transform, device),
                                         finish_device=device)
    return DataResult("imagefolder-device", f"JPEG decode + crop {img_size} on {device}",
                      workers, batch, counted, seconds, counted / seconds, len(dataset))
