"""Fine-tuning data: MAE's augmentation from timm (``create_transform``: random resized crop, flip,
RandAugment, random erasing) and Mixup/CutMix (``timm.data.Mixup``), made reproducible the engine's way.

timm's transforms draw from Python's ``random``, NumPy's and torch's global generators. Here each call runs
with those generators seeded from the engine's per-sample generator (``(seed, epoch, index)``, see
:mod:`maskkit.data.loading`) and restored afterwards, so a sample's augmentation depends on those three
integers alone (not on workers, ranks or resumes) and the training process's own random streams (drop path)
are left untouched. Mixup draws are seeded the same way per rank and micro-step.

One-channel images (Fashion-MNIST): timm's transforms work on PIL images, and a ``[1, H, W]`` uint8 tensor
becomes a PIL ``L`` image, on which every RandAugment operation runs (checked on the embedded
Fashion-MNIST: the colour operations ``Color`` and ``AutoContrast`` act on the one grey channel, ``Color``
is then the identity); mean and std are the dataset's, one value each.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from maskkit.data.loading import stable_seed
from maskkit.data.splits import split_label
from maskkit.errors import ConfigError
from maskkit.finetune.config import FinetuneConfig


@contextlib.contextmanager
def seeded_global_generators(seed: int) -> Iterator[None]:
    """Inside the block Python's ``random``, NumPy's and torch's CPU generator are seeded from ``seed``;
    their previous states come back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class FinetuneTrainTransform:
    """``(img uint8 [C, H, W], generator) -> float32 [C, img_h, img_w]``: timm's training transform with
    MAE's fine-tuning settings from ``cfg``, normalised with ``mean``/``std``, seeded by ``generator``."""

    def __init__(self, img_size: tuple[int, int], in_chans: int, mean: Sequence[float], std: Sequence[float],
                 cfg: FinetuneConfig):
        from timm.data import create_transform

        if in_chans not in (1, 3):
            raise ConfigError("data", f"fine-tuning augmentation works on 1- or 3-channel images, not {in_chans}")
        try:
            self.transform = create_transform(
                input_size=(in_chans, *img_size), is_training=True, scale=tuple(cfg.scale), hflip=cfg.hflip,
                color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment, interpolation="bicubic",
                re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount, mean=tuple(mean), std=tuple(std))
        except (AssertionError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError("finetune.auto_augment", f"timm rejected {cfg.auto_augment!r}: {exc}") from None
        _guard_posterize(self.transform)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torchvision.transforms.v2.functional as F

        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with seeded_global_generators(seed):
            return self.transform(F.to_pil_image(img))

    def __repr__(self) -> str:
        return f"FinetuneTrainTransform({self.transform!r})"


def _posterize_keeping_one_bit(img, bits_to_keep, **kwargs):
    from timm.data.auto_augment import posterize

    return posterize(img, max(1, bits_to_keep), **kwargs)


def _guard_posterize(transform) -> None:
    """timm's ``PosterizeIncreasing`` asks for 0 bits at magnitude 10 (reached by ``m9-mstd0.5`` in about 2% of
    draws), which Pillow >= 9 refuses (``ValueError: bits must be between or equal to 1 and 8``); keep one bit
    instead, the nearest valid value (these ops only, in this transform only)."""
    from timm.data.auto_augment import AugmentOp, posterize

    for op in getattr(transform, "transforms", ()):
        for inner in getattr(op, "ops", ()):
            if isinstance(inner, AugmentOp) and inner.aug_fn is posterize:
                inner.aug_fn = _posterize_keeping_one_bit


class SeededMixup:
    """``timm.data.Mixup`` (Mixup/CutMix with label smoothing) whose draws come from ``(seed, rank, micro_step)``.

    ``__call__(images [B, C, H, W], labels int64 [B], micro_step) -> (mixed images, soft targets [B, K])``.
    Under DDP each process mixes its own slice of the global batch with its own draws (lambda, the Mixup/CutMix
    switch, the box), as the official MAE does (it seeds each process with ``seed + rank``); so with mixup on, a
    run's numbers depend on the number of processes; without it they do not. Rank 0 draws what a one-process run
    draws. The draws depend on these integers alone, so a resumed run (same world size) draws the same."""

    def __init__(self, cfg: FinetuneConfig, num_classes: int, seed: int, rank: int = 0):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                           prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode="batch",
                           label_smoothing=cfg.smoothing, num_classes=num_classes)
        self.seed = seed
        self.rank = rank

    def seed_of(self, micro_step: int) -> int:
        """The seed of ``micro_step``'s draws on this rank: a hash of ``(seed, micro_step)`` on rank 0 (one process
        draws the same as rank 0), of ``(seed, rank, micro_step)`` under another tag on the other ranks, so no two
        ranks or runs share a stream by arithmetic coincidence (as ``seed + rank`` would for seeds 0 and 1)."""
        if self.rank == 0:
            return stable_seed("maskkit/mixup", self.seed, micro_step)
        return stable_seed("maskkit/mixup/rank", self.seed, self.rank, micro_step)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, micro_step: int):
        with seeded_global_generators(self.seed_of(micro_step)):
            return self.mixup(images, labels)


def make_criterion(cfg: FinetuneConfig) -> torch.nn.Module:
    """Soft-target cross-entropy with Mixup/CutMix (their targets carry the smoothing), else label-smoothing
    cross-entropy (plain cross-entropy at ``smoothing: 0``), as the official MAE picks."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return torch.nn.CrossEntropyLoss()


def num_classes_of(dataset) -> int:
    """Classes of a dataset: ``len(dataset.classes)`` when it names them, else ``max(label) + 1``."""
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return int(torch.as_tensor(labels).max()) + 1


def check_train_classes(train) -> int:
    """The number of classes of the training split; fewer than 2 is a :class:`ConfigError` on ``data`` (an
    ``image_folder`` without one subfolder per class has none: its images are unlabelled)."""
    count = num_classes_of(train)
    if count < 2:
        where = split_label(train, "train")
        raise ConfigError("data", f"fine-tuning needs labelled images of at least 2 classes; {where} has {count} "
                          "(an image_folder needs one subfolder per class)")
    return count
