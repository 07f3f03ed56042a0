"""Geometry shared by the dense hierarchical encoders: the prediction grid vs the stem grid.

A hierarchical backbone (Swin, ConvNeXt) embeds the image with a small stem patch (4 px) and reaches its
final feature map at a total stride ``s`` (32 px). SimMIM masks and predicts on the final grid (one hidden
"mask patch" is ``s x s`` pixels) but injects the mask token at the stem, so a mask ``[B, h * w]`` over the
final grid is upsampled by ``s / stem_patch`` to the stem grid before it replaces stem tokens.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from maskkit.errors import ConfigError, expected
from maskkit.patches import Size2, to_2tuple, upsample_mask


def check_img_size(img_size: int | tuple[int, int] | list[int], stride: int) -> Size2:
    """``img_size`` as ``(H, W)``, both multiples of the backbone's total ``stride`` (else a ConfigError)."""
    size = to_2tuple(img_size)
    for axis, length in enumerate(size):
        if length <= 0 or length % stride:
            raise ConfigError("img_size", expected(f"a multiple of the total stride {stride} (axis {axis})", length))
    return size


def stem_mask(mask: torch.Tensor, grid: Size2, scale: int) -> torch.Tensor:
    """``mask [B, h * w]`` on the prediction grid -> bool ``[B, h * scale, w * scale]`` on the stem grid.

    Each hidden cell of the prediction grid hides the ``scale x scale`` stem tokens under it.
    """
    if mask.ndim != 2 or mask.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"mask: expected [B, {grid[0] * grid[1]}] for the grid {grid}, got {list(mask.shape)}")
    return upsample_mask(mask.to(torch.bool), grid, (scale, scale))[:, 0]


def create_backbone(model_name: str, in_chans: Any, stem_patch_size: int | None, options: dict) -> nn.Module:
    """timm's ``model_name`` without its classifier, randomly initialised, for a dense hierarchical encoder.

    ``options`` are further timm arguments; ``patch_size`` among them is refused (the prediction patch is the
    architecture's total stride; ``stem_patch_size`` sets the stem's patch), ``in_chans`` must be a positive
    int, and anything timm rejects is a one-line :class:`ConfigError`."""
    if "patch_size" in options:
        raise ConfigError("patch_size", "is the prediction patch, fixed by the architecture (the total stride); "
                                        "set stem_patch_size for the size of the stem's patches")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise ConfigError("in_chans", expected("a positive int", in_chans))
    options = {**options, **({"patch_size": stem_patch_size} if stem_patch_size is not None else {})}
    try:
        return timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans, **options)
    except (TypeError, AssertionError) as exc:
        raise ConfigError("", f"timm rejected the arguments of {model_name}: {exc}") from None
