"""Datasets, transforms and reproducible loading for maskkit.

>>> from maskkit.data import FashionMNIST, TrainTransform, AugmentedDataset, GlobalBatchSampler, make_loader
>>> base = FashionMNIST("train", source="auto")           # images uint8 [N, 1, 28, 28]
>>> tf = TrainTransform((28, 28), mean=base.mean, std=base.std)
>>> ds = AugmentedDataset(base, tf, seed=0)
>>> sampler = GlobalBatchSampler(len(ds), 256, seed=0)
>>> loader = make_loader(ds, sampler)                      # (float32 [256, 1, 28, 28], int64 [256])
"""

from maskkit.data.fashion_mnist import EMBEDDED_DIR, FashionMNIST, find_fashion_mnist
from maskkit.data.idx import read_idx, write_idx
from maskkit.data.image_folder import ImageFolder
from maskkit.data.loading import (
                                  AugmentedDataset,
                                  GlobalBatchSampler,
                                  make_loader,
                                  sample_generator,
                                  stable_seed,
                                  stack_collate,
)
from maskkit.data.transforms import EvalTransform, TrainTransform, denormalize, random_resized_crop_params

__all__ = [
    "read_idx", "write_idx",
    "FashionMNIST", "find_fashion_mnist", "EMBEDDED_DIR", "ImageFolder",
    "random_resized_crop_params", "TrainTransform", "EvalTransform", "denormalize",
    "sample_generator", "stable_seed", "AugmentedDataset", "GlobalBatchSampler", "stack_collate", "make_loader",
]
