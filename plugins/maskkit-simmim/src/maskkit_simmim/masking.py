"""SimMIM's random masking: a fixed fraction of square mask patches, each possibly several grid cells wide.

The official ``MaskGenerator`` draws ``ceil(U * ratio)`` of the ``U`` mask patches (``mask_patch_size``
pixels, 32 by default) and repeats each over the ``mask_patch_size / model_patch_size`` model patches under
it. Here the grid is the encoder's prediction grid, so ``scale`` (mask patch in grid cells) is 1 for the
stride-32 Swin/ConvNeXt encoders at mask patch 32, and 2 for a ViT/16 at mask patch 32.
"""

from __future__ import annotations

import math

import torch

from maskkit import toolkit
from maskkit.errors import ConfigError, expected
from maskkit.interfaces import Grid, Masker


class SimMIMRandomMasker(Masker):
    """Hide ``ceil(U * ratio)`` of the ``U = (h / scale) * (w / scale)`` square mask patches, uniformly per
    sample; each covers ``scale x scale`` cells of the grid (SimMIM: ``scale = mask_patch_size // patch``).

    Every sample hides the same count, ``ceil(U * ratio) * scale ** 2`` cells, so a sparse encoder can use it
    too. The ceiling is taken of the exact product (the official ``np.ceil`` of the float product hides one
    more patch where it rounds up, e.g. ``0.7 * 10 = 7.000000000000001``). The grid must be divisible by
    ``scale`` and the count must leave some cells visible and hide some.
    """

    def __init__(self, ratio: float = 0.6, scale: int = 1):
        self.ratio = toolkit.ratio(ratio)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ConfigError("scale", expected("a positive int (mask patch side in grid cells)", scale))
        self.scale = scale

    def _units(self, grid: Grid) -> tuple[int, int, int]:
        """``(units_h, units_w, hidden units)`` for ``grid``; raises when the grid does not fit."""
        h, w = grid
        if h % self.scale or w % self.scale:
            raise ConfigError("scale", f"the grid {tuple(grid)} is not divisible by scale={self.scale}: a mask "
                                       "patch must cover whole grid cells")
        uh, uw = h // self.scale, w // self.scale
        count = math.ceil(uh * uw * self.ratio - 1e-9)  # the official np.ceil, robust to 0.6 * 10 = 6.000...1
        if not 0 < count < uh * uw:
            raise ConfigError("ratio", f"hides {count} of {uh * uw} mask patches on the grid {tuple(grid)}; a mask "
                                       "must hide some patches and show some")
        return uh, uw, count

    def num_hidden(self, grid: Grid) -> int:
        return self._units(grid)[2] * self.scale**2

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        uh, uw, count = self._units(grid)
        noise = torch.rand(batch_size, uh * uw, generator=generator, device=device)  # [B, U]
        hidden_units = noise.argsort(dim=1)[:, :count]
        units = torch.zeros(batch_size, uh * uw, dtype=torch.bool, device=noise.device)
        units.scatter_(1, hidden_units, True)  # [B, U]
        cells = units.reshape(batch_size, uh, 1, uw, 1).expand(-1, -1, self.scale, -1, self.scale)
        return cells.reshape(batch_size, grid[0] * grid[1])  # [B, h * w], row-major

    def __repr__(self) -> str:
        return f"SimMIMRandomMasker(ratio={self.ratio}, scale={self.scale})"
