"""Shared fixtures: real Fashion-MNIST images from maskkit's embedded subset (tests skip without it)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def fashion_images() -> torch.Tensor:
    """The first 64 Fashion-MNIST training images as uint8 ``[64, 1, 28, 28]``."""
    try:
        from maskkit.data.fashion_mnist import FashionMNIST

        dataset = FashionMNIST(split="train", source="embedded")
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"embedded Fashion-MNIST unavailable: {exc}")
    return torch.stack([dataset[i][0] for i in range(64)])
