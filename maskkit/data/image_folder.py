"""A folder of image files as a dataset: one subfolder per class, or a flat folder of unlabelled images."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from maskkit.data.encoded import EncodedImage
from maskkit.errors import UnreadableImageError, first_line

__all__ = ["ImageFolder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what PIL raises on a bad file


def _unreadable(path: Path, exc: Exception) -> UnreadableImageError:
    """The error for an image file that cannot be read: its path and the first line of what went wrong (for a
    file Pillow cannot identify, that, without Pillow's repr of the in-memory buffer it was given)."""
    if isinstance(exc, UnidentifiedImageError):
        return UnreadableImageError(str(path), "not an image file Pillow can identify")
    return UnreadableImageError(str(path), first_line(str(exc), 200) or type(exc).__name__)


def _images_under(folder: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    """Image files in ``folder`` (and its subfolders when ``recursive``), sorted by relative path. Links to
    folders are followed, each folder read once: a link back up the tree (``cat/all -> ..``) does not repeat
    its images once per level until the OS refuses the path."""
    if recursive:
        found = []
        seen: set[tuple[int, int]] = set()  # (device, inode) of the folders read
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [Path(dirpath) / f for f in filenames
                      if not f.startswith(".") and f.lower().endswith(extensions)]
    else:
        found = [p for p in folder.iterdir()
                 if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(extensions)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


class ImageFolder(Dataset):
    """Images under ``root``, decoded with PIL.

    Layouts: ``root/<class>/**/<image>`` (classes are the sorted subfolder names, label = index in
    ``classes``; files directly in ``root`` are then ignored), or ``root/<image>`` with no subfolders
    (``classes == ()``, every label is -1). Files are matched by extension, case-insensitively; hidden
    files and folders are skipped; order is sorted and deterministic.

    ``ds[i]`` is ``(image uint8 [C, H, W], label int)`` with ``C = in_chans`` (1: PIL mode "L",
    3: "RGB"; an alpha channel is dropped, and a 16-bit grey image keeps the high byte of each value).
    ``mean``/``std``: ImageNet statistics for 3 channels, ``(0.5,)``/``(0.5,)`` for 1.
    ``samples`` lists ``(path, label)``. A file that does not decode raises
    :class:`~maskkit.errors.UnreadableImageError` naming it (training stops or skips it: ``data.on_bad_image``).
    """

    def __init__(self, root: str | os.PathLike[str], in_chans: int = 3,
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS):
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans: expected 1 or 3, got {in_chans!r}")
        self.root = Path(root).expanduser()
        self.in_chans = in_chans
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not self.root.is_dir():
            what = "a file, not a directory" if self.root.exists() else "no such directory"
            raise FileNotFoundError(f"{self.root}: {what} (expected a folder of images, or of "
                                    f"one subfolder per class)")
        subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes: tuple[str, ...] = tuple(subdirs)
        if subdirs:
            self.samples: list[tuple[Path, int]] = [
                (p, label) for label, name in enumerate(subdirs)
                for p in _images_under(self.root / name, self.extensions, recursive=True)]
        else:
            self.samples = [(p, -1) for p in _images_under(self.root, self.extensions, recursive=False)]
        if not self.samples:
            raise FileNotFoundError(f"{self.root}: no image files (expected extensions "
                                    f"{', '.join(self.extensions)})")
        self.mean: tuple[float, ...] = IMAGENET_MEAN if in_chans == 3 else (0.5,)
        self.std: tuple[float, ...] = IMAGENET_STD if in_chans == 3 else (0.5,)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image uint8 [in_chans, H, W], label int)``: a channels-last view of the decoded pixels (no
        reordering copy; a crop then reads it in place)."""
        path, label = self.samples[index]
        return self._decode(path, path), label

    def encoded(self, index: int) -> tuple[EncodedImage | torch.Tensor, int]:
        """``(image, label int)`` for ``data.decode: device``: a JPEG the device can decode to ``in_chans`` channels
        without a colour conversion (RGB, or grey) comes back undecoded as an
        :class:`~maskkit.data.encoded.EncodedImage` (its bytes and header size); any other file decoded, as
        ``self[index]`` gives it. A file whose header does not read raises
        :class:`~maskkit.errors.UnreadableImageError` here; one whose data does not, when the device decodes it."""
        path, label = self.samples[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _unreadable(path, exc) from None
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                fmt, mode, (width, height) = img.format, img.mode, img.size
        except _PIL_ERRORS as exc:
            raise _unreadable(path, exc) from None
        if fmt == "JPEG" and mode in (("RGB", "L") if self.in_chans == 3 else ("L",)):
            array = np.frombuffer(bytearray(data), dtype=np.uint8)
            return EncodedImage(torch.from_numpy(array), height, width, str(path)), label
        return self._decode(io.BytesIO(data), path), label

    def _decode(self, source: Path | io.BytesIO, path: Path) -> torch.Tensor:
        """``source`` decoded with PIL to uint8 ``[in_chans, H, W]`` (channels-last memory); errors name ``path``."""
        mode = "RGB" if self.in_chans == 3 else "L"
        try:
            with Image.open(source) as img:
                if img.mode.startswith("I;16"):  # 16-bit grey: Pillow's convert() would clip every value at 255
                    img = Image.fromarray((np.asarray(img, dtype=np.int64) >> 8).astype(np.uint8))
                array = np.array(img if img.mode == mode else img.convert(mode))  # convert() to the same mode copies
        except _PIL_ERRORS as exc:
            raise _unreadable(path, exc) from None
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"ImageFolder(root='{self.root}', n={len(self)}, classes={len(self.classes)}, in_chans={self.in_chans})"


def image_folder_split(root: str | os.PathLike[str], split: str = "train", in_chans: int = 3,
                       test_root: str | os.PathLike[str] | None = None,
                       extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> ImageFolder:
    """The recipe-facing ``image_folder`` dataset: one :class:`ImageFolder` per split.

    ``root`` with ``train/`` and ``val/`` (or ``test/``) subfolders is read ImageNet-style; otherwise ``root``
    is the training set and ``test_root`` (default: ``root`` itself) the evaluation set.
    """
    base = Path(root).expanduser()
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if split == "train":
        folder = base / "train" if (base / "train").is_dir() else base
    elif test_root is not None:
        folder = Path(test_root).expanduser()
    else:
        folder = next((base / name for name in ("val", "test") if (base / name).is_dir()), base)
    return ImageFolder(folder, in_chans=in_chans, extensions=extensions)
