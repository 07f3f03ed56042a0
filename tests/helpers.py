"""Shared test helpers: a tiny MAE recipe on the embedded Fashion-MNIST data, a small slice of that data as a
dataset plugin, a variable-count masker, and an image folder with unreadable files."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

import maskkit

TINY = {
    "seed": 0,
    "data": {"name": "fashion_mnist", "source": "embedded"},
    "augment": {"scale": [0.35, 1.0], "hflip": True},
    "masker": {"name": "random", "ratio": 0.75},
    "encoder": {"name": "vit_tiny_patch16_224", "img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 32,
                "depth": 1, "num_heads": 2},
    "decoder": {"name": "mae", "embed_dim": 16, "depth": 1, "num_heads": 2},
    "target": {"name": "norm_pixels"},
    "loss": {"name": "mse"},
    "train": {"epochs": 1, "max_steps": 6, "batch_size": 8, "base_lr": 1e-3, "warmup_epochs": 0.001,
              "log_every": 1, "ckpt_every": 3, "device": "cpu"},  # CPU even on a GPU host: fp32 tolerances
    "eval": {"knn": False},
}


class SmallFashion:
    """Dataset ``small_fashion``: the first 96 train / 48 test embedded Fashion-MNIST images (fast evaluation)."""

    @maskkit.hookimpl
    def maskkit_add_datasets(self):
        from maskkit.data.fashion_mnist import FashionMNIST

        def small_fashion(split: str = "train"):
            data = FashionMNIST(split, source="embedded")
            n = 96 if split == "train" else 48
            data.images, data.labels = data.images[:n], data.labels[:n]
            return data

        return {"small_fashion": small_fashion}


def tiny_tree(**sections) -> dict:
    tree = copy.deepcopy(TINY)
    for key, value in sections.items():
        tree[key] = value
    return tree


class VariableMasker(maskkit.Masker):
    """Hides a random count per sample (between 1 and N - 1): what a sparse encoder cannot take."""

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        n = grid[0] * grid[1]
        scores = torch.rand(batch_size, n, generator=generator, device=device)
        cut = torch.rand(batch_size, 1, generator=generator, device=device) * 0.8 + 0.1
        mask = scores < cut
        mask[:, 0] = True
        mask[:, 1] = False
        return mask

    def num_hidden(self, grid):
        return None


class VariableMaskerPlugin:
    @maskkit.hookimpl
    def maskkit_add_maskers(self):
        return {"variable": VariableMasker}


BAD_IMAGES = ("corrupt.jpg", "cut.jpg", "empty.png", "text.jpg")


def write_bad_image_folder(root: Path, good: int = 24) -> Path:
    """``good`` real Fashion-MNIST images (PNGs and JPEGs by turns) and the four files of :data:`BAD_IMAGES`,
    which are not images: a JPEG cut inside its header, one cut halfway through its data (its header reads), an
    empty PNG and a text file named .jpg."""
    import numpy as np
    from PIL import Image

    from maskkit.data.fashion_mnist import FashionMNIST

    data = FashionMNIST("train", source="embedded")
    for i in range(good):
        Image.fromarray(np.asarray(data[i][0][0])).save(root / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(np.asarray(data[0][0][0])).save(root / "corrupt.jpg")
    whole = (root / "corrupt.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(whole[:40])
    (root / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image\n")
    return root


def record_checkpoint_reads(monkeypatch, path) -> list[str]:
    """From now on (``monkeypatch``'s scope) every ``torch.load`` of ``path`` appends ``"mapped"`` (``mmap=True``:
    the zip directory and the pickle) or ``"read"`` (the whole file) to the returned list."""
    reads: list[str] = []
    real_load = torch.load

    def recording_load(file, *args, **kwargs):
        if str(file) == str(path):
            reads.append("mapped" if kwargs.get("mmap") else "read")
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return reads
