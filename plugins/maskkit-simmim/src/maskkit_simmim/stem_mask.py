"""Geometry shared by the dense hierarchical encoders: the prediction grid vs the stem grid.

A hierarchical backbone (Swin, ConvNeXt) embeds the image with a small stem patch (4 px) and reaches its
final feature map at a total stride ``s`` (32 px). SimMIM masks and predicts on the final grid (one hidden
"mask patch" is ``s x s`` pixels) but injects the mask token at the stem, so a mask ``[B, h * w]`` over the
final grid is upsampled by ``s / stem_patch`` to the stem grid before it replaces stem tokens.
"""

from __future__ import annotations

import torch

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
