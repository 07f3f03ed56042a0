"""Tiling a patch grid into ``cell x cell`` cells, the shared geometry of grid-wise and uniform masking.

Cells tile the grid from the top-left corner. When ``h`` or ``w`` is not a multiple of ``cell``, the last row
(column) of cells is *partial*: ``h % cell`` patches tall (``w % cell`` wide). Every cell, full or partial,
keeps exactly one patch visible, so a grid has ``ceil(h / cell) * ceil(w / cell)`` visible patches whatever
the draw.
"""

from __future__ import annotations

import math

import torch

from maskkit.errors import ConfigError

Grid = tuple[int, int]


def num_cells(grid: Grid, cell: int) -> int:
    """``ceil(h / cell) * ceil(w / cell)``: the cells (full or partial) covering ``grid``."""
    return math.ceil(grid[0] / cell) * math.ceil(grid[1] / cell)


def kept_along_axis(length: int, cell: int, offset: torch.Tensor) -> torch.Tensor:
    """Which coordinates along one axis hold the kept patch of their cell: ``offset [B] -> bool [B, length]``.

    The kept coordinate of a cell is ``offset`` from the cell's start, or the cell's last coordinate when a
    partial cell is shorter than ``offset + 1``.
    """
    coords = torch.arange(length, device=offset.device)  # [L]
    start = coords // cell * cell
    size = (length - start).clamp(max=cell)  # cell size at each coordinate: `cell`, or less at the border
    wanted = torch.minimum(offset.unsqueeze(1), size.unsqueeze(0) - 1)  # [B, L]
    return (coords - start).unsqueeze(0) == wanted


def one_per_cell(noise: torch.Tensor, cell: int) -> torch.Tensor:
    """The patch of highest ``noise`` in every cell: ``noise [B, h, w]`` in ``[0, 1)`` -> bool ``[B, h, w]``.

    With uniform noise this draws one patch uniformly at random within each cell (partial cells included).
    """
    b, h, w = noise.shape
    ch, cw = math.ceil(h / cell), math.ceil(w / cell)
    padded = torch.nn.functional.pad(noise, (0, cw * cell - w, 0, ch * cell - h), value=-1.0)  # never chosen
    per_cell = padded.view(b, ch, cell, cw, cell).permute(0, 1, 3, 2, 4).reshape(b, ch, cw, cell * cell)
    position = torch.arange(cell * cell, device=noise.device)
    winner = per_cell.argmax(dim=3, keepdim=True) == position  # [B, ch, cw, c*c], one True per cell
    chosen = winner.view(b, ch, cw, cell, cell).permute(0, 1, 3, 2, 4).reshape(b, ch * cell, cw * cell)
    return chosen[:, :h, :w]


def check_cell(cell: object) -> int:
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 2:
        raise ConfigError("cell", f"expected an int >= 2, got {cell!r}")
    return cell
