"""Fashion-MNIST as an in-memory dataset: the subset shipped with maskkit, or a full copy found on disk."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from maskkit.data.idx import read_idx

__all__ = ["FashionMNIST", "EMBEDDED_DIR", "find_fashion_mnist"]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
ENV_VAR = "MASKKIT_DATA_DIR"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_PREFIX = {"train": "train", "test": "t10k"}


def _split_stems(split: str) -> tuple[str, str]:
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _files_in(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` directly in ``folder`` (``.gz`` preferred), or None."""
    found = []
    for stem in _split_stems(split):
        path = next((folder / n for n in (stem + ".gz", stem) if (folder / n).is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _locate(directory: Path, split: str) -> tuple[Path, Path] | None:
    """Look in ``directory`` itself, then in torchvision's layout ``directory/FashionMNIST/raw``."""
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        files = _files_in(folder, split)
        if files is not None:
            return files
    return None


def find_fashion_mnist(split: str = "train") -> Path | None:
    """The folder holding a full Fashion-MNIST ``split`` ("train" or "test"), or None.

    Looks, in order, at ``$MASKKIT_DATA_DIR``, ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``) and ``~/.cache/maskkit/fashion-mnist``; each may hold the IDX files (gz or
    raw) directly or in torchvision's layout (``DIR/FashionMNIST/raw``). A set ``$MASKKIT_DATA_DIR``
    without the files gives a warning and the search goes on.
    """
    _check_split(split)
    candidates: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        candidates.append(Path(env).expanduser())
    candidates += [DEBIAN_DIR, Path.home() / ".cache" / "maskkit" / "fashion-mnist"]
    for i, directory in enumerate(candidates):
        files = _locate(directory, split)
        if files is not None:
            return files[0].parent
        if i == 0 and env:
            warnings.warn(f"{ENV_VAR}={env} holds no Fashion-MNIST {split} files; looking elsewhere",
                          stacklevel=2)
    return None


def _check_split(split: str) -> None:
    if split not in _PREFIX:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


class FashionMNIST(Dataset):
    """Fashion-MNIST held in memory as uint8.

    ``split``: "train" or "test". ``source``: "embedded" (the subset shipped in
    ``maskkit/data/embedded``: first 10,000 train / 2,000 test examples), "auto" (the full set found by
    :func:`find_fashion_mnist`, else the embedded subset), or a directory holding the IDX files directly
    or as ``DIR/FashionMNIST/raw`` (write ``./auto`` for a folder literally named "auto").

    Attributes: ``images`` uint8 ``[N, 1, 28, 28]``, ``labels`` int64 ``[N]``, ``classes`` (10 names),
    ``mean``/``std`` (full training-set pixel statistics in [0, 1], whatever the source), ``in_chans = 1``,
    ``source_path`` (the folder read). ``ds[i]`` is ``(image uint8 [1, 28, 28], label int)``.
    """

    classes: tuple[str, ...] = CLASSES
    mean: tuple[float, ...] = (0.2860,)  # measured on the 60,000 training images: 0.28604
    std: tuple[float, ...] = (0.3530,)  # measured: 0.35302
    in_chans: int = 1

    def __init__(self, split: str = "train", source: str | os.PathLike[str] = "embedded"):
        _check_split(split)
        self.split = split
        if source == "embedded":
            files = _locate(EMBEDDED_DIR, split)
            if files is None:
                raise FileNotFoundError(f"{EMBEDDED_DIR}: the embedded Fashion-MNIST subset is missing "
                                        f"(expected {' and '.join(s + '.gz' for s in _split_stems(split))})")
        elif source == "auto":
            found = find_fashion_mnist(split)
            files = _locate(found if found is not None else EMBEDDED_DIR, split)
            if files is None:
                raise FileNotFoundError(f"{EMBEDDED_DIR}: no full Fashion-MNIST found and the embedded "
                                        f"subset is missing")
        else:
            directory = Path(source).expanduser()
            if not directory.is_dir():
                raise FileNotFoundError(f"{directory}: no such directory (expected a folder with the "
                                        f"Fashion-MNIST IDX files, or 'embedded' / 'auto')")
            files = _locate(directory, split)
            if files is None:
                images, labels = _split_stems(split)
                raise FileNotFoundError(
                    f"{directory}: no Fashion-MNIST {split} files (expected {images}[.gz] and {labels}[.gz] "
                    f"in it or in {directory / 'FashionMNIST' / 'raw'})")
        self.source_path: Path = files[0].parent
        images, labels = (read_idx(f) for f in files)
        if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
            raise ValueError(f"{files[0]}: expected uint8 images [N, 28, 28], got {images.dtype} "
                             f"{list(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{files[1]}: expected {images.shape[0]} labels, got shape {list(labels.shape)}")
        if labels.numel() and int(labels.max()) >= len(CLASSES):
            raise ValueError(f"{files[1]}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
        self.images: torch.Tensor = images.unsqueeze(1)
        self.labels: torch.Tensor = labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image uint8 [1, 28, 28], label int)``."""
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"FashionMNIST(split={self.split!r}, n={len(self)}, source_path='{self.source_path}')"
