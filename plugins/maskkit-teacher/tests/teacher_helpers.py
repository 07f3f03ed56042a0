"""Small builders shared by this plugin's tests (a tiny dense ViT, real Fashion-MNIST images)."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

import maskkit
from maskkit import Encoder
from maskkit.registry import Registry


@lru_cache(maxsize=1)
def builtin_registry() -> Registry:
    return Registry.from_plugins(autoload=False)


def tiny_encoder(img_size=(16, 24), patch_size=4, in_chans=3, depth=3, dense=True, seed=0, **kwargs) -> Encoder:
    """A dense timm ViT small enough for CPU tests (width 32, 2 heads)."""
    torch.manual_seed(seed)
    return maskkit.create("encoder", "vit_tiny_patch16_224", registry=builtin_registry(), img_size=img_size,
                          patch_size=patch_size, in_chans=in_chans, depth=depth, embed_dim=32, num_heads=2,
                          dense=dense, **kwargs)


def fashion_images(n: int, normalize: bool = True) -> torch.Tensor:
    """The first ``n`` images of the embedded Fashion-MNIST training subset, ``[n, 1, 28, 28]`` float."""
    try:
        from maskkit.data import FashionMNIST

        ds = FashionMNIST("train", source="embedded")
    except (ImportError, FileNotFoundError) as exc:  # the data module or its files are absent
        pytest.skip(f"embedded Fashion-MNIST unavailable: {exc}")
    images = ds.images[:n].float() / 255.0
    if normalize:
        images = (images - ds.mean[0]) / ds.std[0]
    return images
