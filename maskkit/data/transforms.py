"""Image transforms for pre-training and evaluation, on uint8 tensors ``[C, H, W]``.

All randomness comes from an explicit ``torch.Generator`` passed to each call; the global RNG is never
touched, so an augmentation is reproducible from the generator's seed alone (see
:func:`maskkit.data.loading.sample_generator`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from maskkit.data.encoded import EncodedImage, PlannedCrop

__all__ = ["random_resized_crop_params", "TrainTransform", "EvalTransform", "denormalize"]

Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"img_size: expected positive sizes, got {size!r}")
    return int(h), int(w)


def random_resized_crop_params(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                               generator: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop of an image ``height x width``.

    The algorithm of torchvision's ``RandomResizedCrop.get_params`` (same draws, same order, so the
    same result as torchvision after ``torch.manual_seed(s)`` when ``generator`` is seeded with ``s``):
    up to 10 attempts drawing the area fraction uniformly in ``scale`` and the aspect ratio (w/h)
    log-uniformly in ``ratio``, keeping the first crop that fits, with a uniform position; otherwise a
    central crop of the whole image, clamped to the ratio range.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size: expected positive height and width, got {height}x{width}")
    if not (0 < scale[0] <= scale[1]):
        raise ValueError(f"scale: expected 0 < min <= max, got {tuple(scale)}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio: expected 0 < min <= max, got {tuple(ratio)}")
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision does
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(
            torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _Normalize:
    """``(x / 255 if uint8) - mean) / std`` per channel; identity scaling when mean/std are None."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        if (mean is None) != (std is None):
            raise ValueError("mean and std: give both or neither")
        if mean is not None and (len(mean) != len(std) or len(mean) == 0):
            raise ValueError(f"mean/std: expected the same non-zero length, got {len(mean)} and {len(std)}")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std: expected positive values, got {tuple(std)}")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self._mean_t = None if mean is None else torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std_t = None if std is None else torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # copies made once per device

    def __getstate__(self) -> dict:
        """Pickled (into loader workers) without the device copies: a worker needs none, and CUDA tensors
        cannot cross into a forked worker."""
        return {**self.__dict__, "_on_device": {}}

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``[..., C, H, W]`` (one image or a batch, on any device) -> float32, same shape and device."""
        x = img.to(torch.float32, copy=True)  # never write into the caller's tensor
        if img.dtype == torch.uint8:
            x.div_(255.0)
        if self._mean_t is None:
            return x
        if self._mean_t.shape[0] not in (1, x.shape[-3]):
            raise ValueError(f"mean/std have {self._mean_t.shape[0]} channels, image has {x.shape[-3]}")
        mean, std = self._mean_t, self._std_t
        if x.device != mean.device:  # copied once per device: a copy from pageable memory every batch may wait
            if x.device not in self._on_device:  # for the device's queue (CUDA does not promise it will not)
                self._on_device[x.device] = (mean.to(x.device), std.to(x.device))
            mean, std = self._on_device[x.device]
        return x.sub_(mean).div_(std)


def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() != 3:
        shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"expected an image tensor [C, H, W], got {shape}")


class TrainTransform:
    """Pre-training augmentation (MAE's): random resized crop, horizontal flip, scale, normalize.

    ``__call__(img, generator)``: ``img`` uint8 ``[C, H, W]`` (values 0..255; a float image is taken as
    already in [0, 1]) -> float32 ``[C, img_h, img_w]``, normalized with ``mean``/``std`` (left in [0, 1]
    when both are None). The crop (``scale``, ``ratio`` as in torchvision's ``RandomResizedCrop``) is
    resized bicubically with antialiasing; ``scale=None`` skips the crop and only resizes to
    ``img_size``. Flip with probability 0.5 when ``hflip``. Draws: crop parameters, then the flip.

    ``output="uint8"`` stops before the normalisation: the crop comes back in the input's dtype (uint8 for a
    uint8 image, a quarter of float32's bytes between loader processes), contiguous, and
    :meth:`normalize_batch` finishes the job on a whole batch on the device. Both routes give the same values.
    """

    def __init__(self, img_size: Size, scale: tuple[float, float] | None = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 output: str = "float"):
        self.img_size = _pair(img_size)
        if output not in ("float", "uint8"):
            raise ValueError(f"output: expected 'float' or 'uint8', got {output!r}")
        self.output = output
        if scale is not None and not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale: expected 0 < min <= max, got {tuple(scale)}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio: expected 0 < min <= max, got {tuple(ratio)}")
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip
        self._normalize = _Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std

    def __call__(self, img: torch.Tensor | EncodedImage, generator: torch.Generator) -> torch.Tensor | PlannedCrop:
        """uint8 ``[C, H, W]`` -> float32 ``[C, img_h, img_w]`` (uint8 with ``output="uint8"``).

        An :class:`~maskkit.data.encoded.EncodedImage` (``data.decode: device``) is not decoded here: the same
        draws give a :class:`~maskkit.data.encoded.PlannedCrop`, which :meth:`apply` carries out on the device."""
        if isinstance(img, EncodedImage):
            return PlannedCrop(img, *self.draw(img.height, img.width, generator))
        _check_image(img)
        img = self.apply(img, *self.draw(img.shape[-2], img.shape[-1], generator))
        if self.output == "uint8":
            return img.contiguous()
        return self._normalize(img)

    def draw(self, height: int, width: int,
             generator: torch.Generator) -> tuple[tuple[int, int, int, int] | None, bool]:
        """The random part of one augmentation of an image ``height x width``: ``(box, flip)``, where ``box`` is
        the crop's ``(top, left, h, w)`` (None without a crop) and ``flip`` says whether to mirror it. Draws: the
        crop parameters, then the flip (only when ``hflip``)."""
        box = (random_resized_crop_params(height, width, self.scale, self.ratio, generator)
               if self.scale is not None else None)
        return box, bool(self.hflip and torch.rand((), generator=generator).item() < 0.5)

    def apply(self, img: torch.Tensor, box: tuple[int, int, int, int] | None, flip: bool) -> torch.Tensor:
        """The deterministic part: ``img`` ``[C, H, W]`` (any dtype, any device) cropped to ``box`` and resized
        to ``img_size`` (bicubic, antialiased; without a box only resized, when its size differs), then mirrored
        when ``flip`` -> ``[C, img_h, img_w]``, same dtype and device, not normalised."""
        size = list(self.img_size)
        if box is not None:
            img = F.resized_crop(img, *box, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        elif tuple(img.shape[-2:]) != self.img_size:
            img = F.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        return img.flip(-1) if flip else img

    def normalize_batch(self, images: torch.Tensor) -> torch.Tensor:
        """What ``output="float"`` does last, for crops made with ``output="uint8"``: ``[..., C, H, W]`` (uint8 or
        float, any device) -> float32 normalised with ``mean``/``std``, on the same device."""
        return self._normalize(images)

    def __repr__(self) -> str:
        return (f"TrainTransform(img_size={self.img_size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, mean={self.mean}, std={self.std}, output={self.output!r})")


class EvalTransform:
    """Deterministic evaluation transform (ImageNet-style).

    ``__call__(img)``: uint8 ``[C, H, W]`` -> float32 ``[C, img_h, img_w]``, normalized with
    ``mean``/``std`` (left in [0, 1] when both are None). An image already of size ``img_size`` is only
    normalized; any other is resized (bicubic, antialiased, aspect kept) so that it covers
    ``int(img_h / crop_pct) x int(img_w / crop_pct)`` (for a square target: shorter side to
    ``int(img_size / crop_pct)``, 224 -> 256) and then center-cropped to ``img_size``.
    """

    def __init__(self, img_size: Size, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, crop_pct: float = 0.875):
        self.img_size = _pair(img_size)
        if not (0 < crop_pct <= 1):
            raise ValueError(f"crop_pct: expected a value in (0, 1], got {crop_pct!r}")
        self.crop_pct = float(crop_pct)
        self._normalize = _Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std

    def resize_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` an image ``height x width`` is resized to before the center crop: the side that binds
        to the resize target, the other scaled and truncated, as torchvision's ``Resize(int(size / crop_pct))``
        computes it (``int(target * long / short)``)."""
        th, tw = (max(int(s / self.crop_pct), s) for s in self.img_size)
        if th / height >= tw / width:  # the height binds (for a square target: the shorter side is the height)
            return th, max(tw, int(th * width / height))
        return max(th, int(tw * height / width)), tw

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 ``[C, H, W]`` -> float32 ``[C, img_h, img_w]``."""
        _check_image(img)
        height, width = img.shape[-2:]
        if (height, width) != self.img_size:
            img = F.resize(img, list(self.resize_size(height, width)), interpolation=InterpolationMode.BICUBIC,
                           antialias=True)
            img = F.center_crop(img, list(self.img_size))
        return self._normalize(img)

    def __repr__(self) -> str:
        return f"EvalTransform(img_size={self.img_size}, mean={self.mean}, std={self.std}, crop_pct={self.crop_pct})"


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], clamp: bool = True) -> torch.Tensor:
    """Undo normalization for display: ``x * std + mean`` per channel.

    ``x``: float ``[..., C, H, W]`` (one image or a batch) -> same shape, in [0, 1] when ``clamp``.
    """
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    out = x * s + m
    return out.clamp_(0.0, 1.0) if clamp else out
