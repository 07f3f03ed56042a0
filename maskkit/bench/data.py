"""Throughput of the input pipelines alone (no model): is a training run limited by its data or its model?

Two pipelines, both the trainer's own classes (``AugmentedDataset`` + ``TrainTransform`` + ``GlobalBatchSampler``
+ ``make_loader``):

* ``quickstart``: the embedded Fashion-MNIST subset at 28 px, as ``recipes/quickstart.yaml`` trains;
* ``imagefolder``: an ``ImageFolder`` of JPEGs written to a temporary folder (ImageNet-like sizes around
  500 x 375), decoded with PIL, RandomResizedCrop to 224 + flip + normalisation: the per-image work of MAE's
  ImageNet pretraining.

The first batch (worker start-up) is not timed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import attrs
import numpy as np

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


def loader_throughput(dataset, transform, *, batch_size: int, workers: int, images: int, seed: int = 0,
                      pin_memory: bool = False) -> tuple[int, float]:
    """``(images timed, seconds)`` for at least ``images`` augmented images through the trainer's loader
    (``pin_memory`` as the trainer sets it on CUDA), epoch after epoch, after one untimed batch."""
    augmented = AugmentedDataset(dataset, transform, seed)
    batch_size = min(batch_size, len(dataset))
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed=seed)
    loader = make_loader(augmented, sampler, num_workers=workers, pin_memory=pin_memory)
    counted, start, epoch = -1, 0.0, 0
    try:
        while counted < images:
            sampler.set_epoch(epoch)
            augmented.set_epoch(epoch)
            for batch, _ in loader:
                if counted < 0:  # the first batch pays for the workers' start-up
                    counted, start = 0, time.perf_counter()
                    continue
                counted += batch.shape[0]
                if counted >= images:
                    break
            epoch += 1
        return counted, time.perf_counter() - start
    finally:
        del loader  # stops persistent workers


def write_jpegs(folder: Path, count: int, *, seed: int = 0, quality: int = 90) -> Path:
    """``count`` RGB JPEGs in ``folder/images/`` (one class), sizes 400-600 x 300-450 px, smooth random
    content plus noise (so they compress like photos rather than like flat colour or pure noise)."""
    from PIL import Image

    root = folder / "images"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = int(rng.integers(400, 601)), int(rng.integers(300, 451))
        small = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        array = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(root / f"{i:05d}.jpg", quality=quality)
    return folder


def quickstart_pipeline(*, workers: int, images: int, registry=None, pin_memory: bool = False) -> DataResult:
    """The quickstart recipe's loader (its dataset, augmentation and batch size)."""
    from maskkit.builder import build_dataset
    from maskkit.recipe import load_recipe

    recipe = load_recipe("quickstart", registry=registry)
    dataset = build_dataset(recipe, "train", registry)
    enc, aug = recipe.tree["encoder"], recipe.augment
    transform = TrainTransform(enc["img_size"], scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
                               mean=dataset.mean, std=dataset.std)
    batch = recipe.train.batch_size
    counted, seconds = loader_throughput(dataset, transform, batch_size=batch, workers=workers, images=images,
                                         pin_memory=pin_memory)
    return DataResult("quickstart", f"embedded Fashion-MNIST, {enc['img_size']} px crops", workers, batch,
                      counted, seconds, counted / seconds)


def imagefolder_pipeline(*, workers: int, images: int, batch_size: int, files: int = 64, img_size: int = 224,
                         folder: Path | None = None, pin_memory: bool = False) -> DataResult:
    """JPEG decode + RandomResizedCrop(``img_size``, scale 0.2-1) + flip + normalise from an ``ImageFolder`` of
    ``files`` generated JPEGs (in ``folder``, or a temporary folder removed afterwards)."""
    from maskkit.data.image_folder import ImageFolder

    with tempfile.TemporaryDirectory(prefix="maskkit-bench-") as tmp:
        root = write_jpegs(Path(folder or tmp), files)
        dataset = ImageFolder(root, in_chans=3)
        transform = TrainTransform(img_size, scale=(0.2, 1.0), hflip=True, mean=dataset.mean, std=dataset.std)
        batch = min(batch_size, files)
        counted, seconds = loader_throughput(dataset, transform, batch_size=batch, workers=workers, images=images,
                                             pin_memory=pin_memory)
    return DataResult("imagefolder", f"JPEG ~500x375 decode + RandomResizedCrop {img_size}", workers, batch,
                      counted, seconds, counted / seconds)
