"""MAE's grid-wise sampling and UM-MAE's uniform sampling: one visible patch per cell, exact counts."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskkit.errors import ConfigError
from maskkit_blockmask import GridMasker, UniformMasker

fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
grids = st.tuples(st.integers(1, 33), st.integers(1, 33))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_cell(visible: torch.Tensor, grid, cell: int) -> torch.Tensor:
    """bool ``[B, N]`` -> visible patches per cell ``[B, ceil(h / cell), ceil(w / cell)]`` (partial cells too)."""
    h, w = grid
    ch, cw = math.ceil(h / cell), math.ceil(w / cell)
    padded = torch.zeros(visible.shape[0], ch * cell, cw * cell, dtype=torch.long)
    padded[:, :h, :w] = visible.view(-1, h, w).long()
    return padded.view(-1, ch, cell, cw, cell).sum(dim=(2, 4))


def offsets_in_cells(visible: torch.Tensor, grid, cell: int) -> set:
    """The (row, col) offsets within their cell of one sample's visible patches."""
    coords = visible.view(*grid).nonzero().tolist()
    return {(i % cell, j % cell) for i, j in coords}


# -- grid -------------------------------------------------------------------------------------------------------


def test_grid_keeps_top_left_of_every_2x2_cell():
    mask = GridMasker()(3, (14, 14))
    expected = torch.ones(14, 14, dtype=torch.bool)
    expected[::2, ::2] = False
    assert bool((mask == expected.flatten()).all())
    assert GridMasker().num_hidden((14, 14)) == 147  # 75%, MAE's grid setting


@fast
@given(grid=grids, cell=st.integers(2, 4), random_offset=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_grid_one_visible_per_cell_same_offset(grid, cell, random_offset, seed):
    masker = GridMasker(cell, random_offset)
    mask = masker(6, grid, generator=gen(seed))
    visible = ~mask
    assert bool((per_cell(visible, grid, cell) == 1).all())
    assert mask.sum(dim=1).tolist() == [masker.num_hidden(grid)] * 6
    assert masker.num_hidden(grid) == grid[0] * grid[1] - math.ceil(grid[0] / cell) * math.ceil(grid[1] / cell)
    full_h, full_w = grid[0] // cell * cell, grid[1] // cell * cell
    for row in visible:  # the full cells of one sample all keep the same offset
        full = row.view(*grid)[:full_h, :full_w].reshape(-1)
        if full.numel():
            assert len(offsets_in_cells(full, (full_h, full_w), cell)) == 1


def test_grid_partial_border_cells_keep_their_last_row_and_column():
    """5x5, offset (1, 1): full cells keep (1, 1); the 1-patch-wide border cells keep their only row/column."""
    masker = GridMasker(random_offset=True)
    for seed in range(50):
        mask = masker(1, (5, 5), generator=gen(seed))
        visible = (~mask).view(5, 5)
        if bool(visible[1, 1]):
            break
    else:
        pytest.fail("offset (1, 1) never drawn in 50 seeds")
    rows = visible.any(dim=1).nonzero().flatten().tolist()
    cols = visible.any(dim=0).nonzero().flatten().tolist()
    assert rows == [1, 3, 4] and cols == [1, 3, 4]


def test_grid_random_offset_covers_all_offsets():
    mask = GridMasker(random_offset=True)(400, (8, 8), generator=gen())
    seen = {next(iter(offsets_in_cells(row, (8, 8), 2))) for row in ~mask}
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize("cell", [1, 0, 2.0, True])
def test_grid_bad_cell(cell):
    with pytest.raises(ConfigError):
        GridMasker(cell)


# -- uniform ----------------------------------------------------------------------------------------------------


@fast
@given(grid=grids, seed=st.integers(0, 2**31 - 1))
def test_uniform_one_visible_per_cell(grid, seed):
    masker = UniformMasker()
    mask = masker(6, grid, generator=gen(seed))
    assert bool((per_cell(~mask, grid, 2) == 1).all())
    assert mask.sum(dim=1).tolist() == [masker.num_hidden(grid)] * 6


def test_uniform_positions_are_uniform_and_independent_per_cell():
    mask = UniformMasker()(2000, (14, 14), generator=gen())
    visible = (~mask).view(-1, 7, 2, 7, 2).permute(0, 1, 3, 2, 4).reshape(-1, 49, 4)  # [B, cells, position]
    freq = visible.double().mean(dim=(0, 1))
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.01)
    # unlike the grid, cells of one sample disagree: with 49 independent cells, a shared offset is ~never seen
    same_offset = (visible == visible[:, :1]).all(dim=2).all(dim=1)
    assert not bool(same_offset.any())


@fast
@given(grid=grids, secondary=st.floats(0.0, 0.95), seed=st.integers(0, 2**31 - 1))
def test_secondary_masking_count_and_structure(grid, secondary, seed):
    masker = UniformMasker(secondary)
    mask = masker(5, grid, generator=gen(seed))
    cells = math.ceil(grid[0] / 2) * math.ceil(grid[1] / 2)
    kept = max(1, int(cells * (1 - secondary)))
    assert masker.num_hidden(grid) == grid[0] * grid[1] - kept
    assert mask.sum(dim=1).tolist() == [masker.num_hidden(grid)] * 5
    assert bool((per_cell(~mask, grid, 2) <= 1).all())  # what stays visible is still at most one per cell


def test_secondary_masking_is_umae_setting():
    masker = UniformMasker(0.25)
    assert masker.num_hidden((14, 14)) == 196 - int(49 * 0.75)  # 160 hidden, 36 visible
    mask = masker(1000, (14, 14), generator=gen())
    counts = per_cell(~mask, (14, 14), 2).view(1000, -1).double()
    assert float(counts.mean(dim=0).min()) > 0.6 and float(counts.mean(dim=0).max()) < 0.86  # 36/49 each


@pytest.mark.parametrize("ratio", [1.0, -0.1, "0.25", None])
def test_uniform_bad_secondary_ratio(ratio):
    with pytest.raises(ConfigError):
        UniformMasker(ratio)
