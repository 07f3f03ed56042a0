"""MAE's grid-wise sampling (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners", Table 1f
and Figure 6): keep one patch of every ``2 x 2`` cell, hide the other three (mask ratio 0.75)."""

from __future__ import annotations

import torch

from maskkit import Masker
from maskkit.errors import ConfigError
from maskkit_blockmask.cells import Grid, check_cell, kept_along_axis, num_cells


class GridMasker(Masker):
    """Keep one patch per ``cell x cell`` cell at the same position in every cell; hide the rest.

    ``cell=2`` is MAE's grid-wise sampling (ratio ``1 - 1 / cell**2`` = 0.75 on even grids). With
    ``random_offset=False`` (MAE) every cell keeps its top-left patch, the same for every sample: the mask is
    deterministic and ignores ``generator``. With ``random_offset=True`` each sample draws one offset
    ``(dy, dx)`` in ``[0, cell)**2`` (from ``generator``) and every cell of that sample keeps the patch at that
    offset: a regular grid shifted per sample.

    Grids that are not multiples of ``cell``: cells tile from the top-left, and the last row/column of cells is
    partial (see :mod:`maskkit_blockmask.cells`). A partial cell too short for the offset keeps its last
    row/column instead, so every cell keeps exactly one patch and
    ``num_hidden(grid) = h * w - ceil(h / cell) * ceil(w / cell)`` for every draw.

    Shapes: ``__call__(B, (h, w)) -> bool [B, h * w]``, True = hidden, built on ``device``.
    """

    def __init__(self, cell: int = 2, random_offset: bool = False):
        self.cell = check_cell(cell)
        if not isinstance(random_offset, bool):
            raise ConfigError("random_offset", f"expected true or false, got {random_offset!r}")
        self.random_offset = random_offset

    def num_hidden(self, grid: Grid) -> int:
        return grid[0] * grid[1] - num_cells(grid, self.cell)

    def __call__(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        h, w = grid
        if self.random_offset:
            offset = torch.randint(0, self.cell, (batch_size, 2), generator=generator, device=device)  # [B, 2]
        else:
            offset = torch.zeros(batch_size, 2, dtype=torch.long, device=device)
        kept_rows = kept_along_axis(h, self.cell, offset[:, 0])  # [B, h]
        kept_cols = kept_along_axis(w, self.cell, offset[:, 1])  # [B, w]
        kept = kept_rows.unsqueeze(2) & kept_cols.unsqueeze(1)  # [B, h, w]
        return (~kept).view(batch_size, h * w)

    def __repr__(self) -> str:
        return f"GridMasker(cell={self.cell}, random_offset={self.random_offset})"
