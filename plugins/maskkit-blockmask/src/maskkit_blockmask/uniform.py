"""UM-MAE's uniform masking (Li et al., 2022, "Uniform Masking: Enabling MAE Pre-training for Pyramid-based
Vision Transformers with Locality"): uniform sampling keeps one random patch of every ``2 x 2`` cell (75%
hidden), then secondary masking hides a fraction of the kept patches."""

from __future__ import annotations

import torch

from maskkit import Masker
from maskkit.errors import ConfigError
from maskkit_blockmask.cells import Grid, num_cells, one_per_cell

CELL = 2  # UM-MAE's cell: one visible patch per 2 x 2 patches


class UniformMasker(Masker):
    """Uniform sampling: one visible patch drawn at random in every ``2 x 2`` cell, independently per sample
    and per cell; then secondary masking hides ``secondary_ratio`` of those visible patches.

    Counts: ``C = ceil(h / 2) * ceil(w / 2)`` cells (partial cells at the bottom/right border of odd grids keep
    one of their 1 or 2 patches, drawn uniformly); secondary masking keeps ``max(1, int(C * (1 -
    secondary_ratio)))`` of them visible, chosen uniformly (UM-MAE's ``int(vis_cnt * (1 - vis_mask_ratio))``,
    kept at least 1). ``num_hidden(grid) = h * w - that``, the same for every sample. UM-MAE trains with
    ``secondary_ratio=0.25``.

    Deviation from UM-MAE, by design: UM-MAE still feeds the secondarily masked patches to its pyramid
    encoder, as a shared learnable mask token (so the encoder keeps its 2 x 2 regular layout), and its loss
    covers only the patches hidden by uniform sampling. maskkit's masker interface has one mask, so here they
    are simply *hidden*: a sparse encoder drops them, and the loss (which covers hidden patches) includes
    them. Use ``secondary_ratio=0`` for plain uniform sampling.

    UM-MAE draws each cell's visible position from a shuffled pool holding the four positions equally often;
    here each cell draws independently (the same marginal: each position with probability 1/4).

    Shapes: ``__call__(B, (h, w)) -> bool [B, h * w]``, True = hidden, built on ``device`` from ``generator``.
    """

    def __init__(self, secondary_ratio: float = 0.0):
        ok = isinstance(secondary_ratio, (int, float)) and not isinstance(secondary_ratio, bool)
        if not ok or not 0.0 <= float(secondary_ratio) < 1.0:
            raise ConfigError("secondary_ratio", f"expected a float in [0, 1), got {secondary_ratio!r}")
        self.secondary_ratio = float(secondary_ratio)

    def num_visible(self, grid: Grid) -> int:
        cells = num_cells(grid, CELL)
        return max(1, int(cells * (1 - self.secondary_ratio)))

    def num_hidden(self, grid: Grid) -> int:
        return grid[0] * grid[1] - self.num_visible(grid)

    def __call__(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        h, w = grid
        n = h * w
        noise = torch.rand(batch_size, h, w, generator=generator, device=device)  # [B, h, w]
        kept = one_per_cell(noise, CELL).reshape(batch_size, n)  # [B, N], one True per cell
        if self.secondary_ratio == 0.0:
            return ~kept
        # secondary masking as in UM-MAE: rank hidden patches after all visible ones (noise + 1), keep the first
        second = torch.rand(batch_size, n, generator=generator, device=device) + (~kept).float()  # [B, N]
        order = second.argsort(dim=1)
        mask = torch.ones(batch_size, n, dtype=torch.bool, device=second.device)
        return mask.scatter_(1, order[:, : self.num_visible(grid)], False)

    def __repr__(self) -> str:
        return f"UniformMasker(secondary_ratio={self.secondary_ratio})"
