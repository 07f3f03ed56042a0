"""BEiT block masking: exact counts, termination, block geometry, and the CPU and full-batch paths agreeing."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import maskkit
from maskkit.errors import ConfigError
from maskkit_blockmask import BlockMasker
from maskkit_blockmask.block import NO_BLOCK, TRIMMED_BLOCK, WHOLE_BLOCK, _Rectangles

fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
grids = st.tuples(st.integers(2, 32), st.integers(2, 32))
ratios = st.floats(0.01, 0.99)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def connected_components(mask_2d: torch.Tensor) -> int:
    """4-connected components of the True cells of a bool ``[h, w]`` grid (plain flood fill)."""
    h, w = mask_2d.shape
    cells = {(i, j) for i in range(h) for j in range(w) if bool(mask_2d[i, j])}
    components = 0
    while cells:
        components += 1
        stack = [cells.pop()]
        while stack:
            i, j = stack.pop()
            for nb in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if nb in cells:
                    cells.remove(nb)
                    stack.append(nb)
    return components


def rectangle(top: int, left: int, height: int, width: int, grid) -> torch.Tensor:
    """bool [N]: the patches of one rectangle."""
    out = torch.zeros(grid, dtype=torch.bool)
    out[top:top + height, left:left + width] = True
    return out.flatten()


# -- counts and termination ----------------------------------------------------------------------------------


def test_num_hidden_is_maes_rule():
    assert BlockMasker(0.75).num_hidden((14, 14)) == 196 - int(196 * 0.25) == 147
    assert BlockMasker(0.4).num_hidden((14, 14)) == 196 - int(196 * 0.6) == 79
    assert BlockMasker(0.5).num_hidden((14, 14)) == maskkit.create("masker", "random", ratio=0.5).num_hidden((14, 14))
    assert BlockMasker(0.5, exact=False).num_hidden((14, 14)) is None
    # clamped so a sample always shows and hides something
    assert BlockMasker(0.99).num_hidden((2, 2)) == 3
    assert BlockMasker(0.01).num_hidden((2, 2)) == 1


@fast
@given(grid=grids, ratio=ratios, min_block=st.integers(1, 2000), seed=st.integers(0, 2**31 - 1),
       b=st.integers(1, 6))
def test_exact_count_and_termination(grid, ratio, min_block, seed, b):
    """Any ratio, grid from 2x2 to 32x32, blocks up to far bigger than the grid: exact, and it returns."""
    masker = BlockMasker(ratio, min_block_patches=min_block)
    mask = masker(b, grid, generator=gen(seed))
    assert mask.shape == (b, grid[0] * grid[1])
    assert mask.sum(dim=1).tolist() == [masker.num_hidden(grid)] * b


@fast
@given(grid=grids, ratio=ratios, min_block=st.integers(1, 2000), seed=st.integers(0, 2**31 - 1))
def test_inexact_reaches_target_and_leaves_one_visible(grid, ratio, min_block, seed):
    masker = BlockMasker(ratio, min_block_patches=min_block, exact=False)
    counts = masker(5, grid, generator=gen(seed)).sum(dim=1)
    n = grid[0] * grid[1]
    assert bool((counts >= masker.target_count(grid)).all()) and bool((counts <= n - 1).all())


def test_inexact_overshoots_like_algorithm_1():
    """The last block is kept whole: on 14x14 at 0.4 the count varies and exceeds the target on average."""
    counts = BlockMasker(0.4, exact=False)(512, (14, 14), generator=gen()).sum(dim=1).float()
    assert counts.min() >= 79 and counts.mean() > 80 and counts.std() > 1


def test_min_block_bigger_than_the_grid():
    """Every block is clipped to the grid, and the first one, trimmed, already makes the exact count."""
    masker = BlockMasker(0.5, min_block_patches=10_000)
    sample = masker.sample(8, (14, 14), generator=gen())
    assert sample.mask.sum(dim=1).tolist() == [98] * 8
    assert sample.kinds[:, 0].tolist() == [TRIMMED_BLOCK] * 8
    assert sample.blocks[:, 0].tolist() == [[0, 0, 14, 14]] * 8
    assert bool((sample.kinds[:, 1:] == NO_BLOCK).all())
    # trimmed in row-major order: 7 whole rows
    assert torch.equal(sample.mask[0].view(14, 14)[:7], torch.ones(7, 14, dtype=torch.bool))


# -- geometry ---------------------------------------------------------------------------------------------------


def test_whole_blocks_are_hidden_and_inside_the_grid():
    masker = BlockMasker(0.5)
    sample = masker.sample(64, (14, 14), generator=gen(1))
    whole = (sample.kinds == WHOLE_BLOCK).nonzero().tolist()
    assert len(whole) > 64  # several whole blocks per sample
    for i, r in whole:
        top, left, height, width = sample.blocks[i, r].tolist()
        assert 0 <= top and top + height <= 14 and 0 <= left and left + width <= 14 and height and width
        rect = rectangle(top, left, height, width, (14, 14))
        assert bool(sample.mask[i][rect].all())


def test_aspect_ratio_bounds_of_untrimmed_blocks():
    """height / width of every untrimmed block is within (0.3, 1/0.3) up to rounding each side by 0.5."""
    masker = BlockMasker(0.75)
    sample = masker.sample(256, (14, 14), generator=gen(2))
    blocks = sample.blocks[sample.kinds == WHOLE_BLOCK].double()  # [K, 4]
    height, width = blocks[:, 2], blocks[:, 3]
    assert bool(((height - 0.5) / (width + 0.5) <= 1 / 0.3).all())
    assert bool(((height + 0.5) / (width - 0.5).clamp(min=1e-9) >= 0.3).all())
    # and they are not all squares: the ratio really varies across the range
    ratio = height / width
    assert ratio.min() < 0.5 and ratio.max() > 2.0


def test_aspect_ratio_is_log_uniform_symmetric():
    """The first block of each sample: log(height / width) is centred on 0 on a square grid."""
    sample = BlockMasker(0.4).sample(2000, (14, 14), generator=gen(3))
    first = sample.blocks[:, 0].double()
    log_ratio = torch.log(first[:, 2] / first[:, 3])
    assert abs(float(log_ratio.mean())) < 0.06
    assert float((log_ratio > 0).double().mean()) == pytest.approx(float((log_ratio < 0).double().mean()), abs=0.06)


def test_custom_aspect_ratio_range_is_respected():
    sample = BlockMasker(0.5, aspect_ratio=(1.0, 1.0)).sample(64, (14, 14), generator=gen(4))
    blocks = sample.blocks[sample.kinds == WHOLE_BLOCK]
    assert bool((blocks[:, 2] == blocks[:, 3]).all())  # squares only


def test_block_masks_are_contiguous_compared_to_random():
    """On 14x14 at ratio 0.5, block masks form a few compact regions; random masks, many scattered ones."""
    block = BlockMasker(0.5)(64, (14, 14), generator=gen(5))
    random = maskkit.create("masker", "random", ratio=0.5)(64, (14, 14), generator=gen(5))

    def components(mask):
        return sum(connected_components(row.view(14, 14)) for row in mask) / mask.shape[0]

    def neighbours_hidden(mask):  # mean fraction of a hidden patch's 4 neighbours (inside the grid) hidden
        m = mask.view(-1, 14, 14).float()
        pad = torch.nn.functional.pad(m, (1, 1, 1, 1))
        inside = torch.nn.functional.pad(torch.ones_like(m), (1, 1, 1, 1))
        shifts = [(0, 1), (2, 1), (1, 0), (1, 2)]
        hidden_nb = sum(pad[:, i:i + 14, j:j + 14] for i, j in shifts)
        all_nb = sum(inside[:, i:i + 14, j:j + 14] for i, j in shifts)
        return float((hidden_nb / all_nb)[mask.view(-1, 14, 14)].mean())

    assert components(block) < 5 and components(random) > 12
    assert neighbours_hidden(block) > 0.8 > 0.6 > neighbours_hidden(random)


def test_trimmed_block_keeps_whole_rows_from_its_top():
    rects = _Rectangles((14, 14), (0.3, 1 / 0.3), torch.device("cpu"))
    for on_cpu in (True, False):
        visible = torch.ones(2, 196, dtype=torch.bool)
        visible[1, 2 * 14 + 4] = False  # already hidden inside the second sample's rectangle
        rect = torch.tensor([[2, 3, 4, 5], [2, 3, 4, 5]])
        count = rects.fill(visible, rect, torch.tensor([12, 12]), on_cpu)
        assert count.tolist() == [20, 19]
        hidden = (~visible).view(2, 14, 14)
        expected = torch.zeros(14, 14, dtype=torch.bool)
        expected[2:4, 3:8] = True
        expected[4, 3:5] = True
        assert torch.equal(hidden[0], expected)
        expected[4, 5] = True  # one more from row 4, since row 2 held one hidden patch already
        assert torch.equal(hidden[1], expected)


@pytest.mark.parametrize("on_cpu", [True, False])
def test_closing_block_grows_ring_by_ring(on_cpu):
    """The closing block adds exactly `count` patches: the visible ones nearest (Chebyshev) to the block, ties in
    row-major order, checked against a brute-force ranking."""
    grid = (9, 11)
    rects = _Rectangles(grid, (0.3, 1 / 0.3), torch.device("cpu"))
    visible = torch.ones(3, 99, dtype=torch.bool)
    visible[:, rectangle(2, 2, 5, 6, grid)] = False  # a hidden block the closing block may overlap
    before = visible.clone()
    count = torch.tensor([0, 7, 40])
    u = torch.tensor([[0.5, 0.3, 0.3], [0.5, 0.3, 0.3], [0.9, 0.0, 0.99]])
    rect = rects.closing_block(visible, count, u, on_cpu)
    added = before & ~visible
    assert added.sum(dim=1).tolist() == [0, 7, 40]
    assert rect[0].tolist() == [0, 0, 0, 0]
    for i in (1, 2):
        top, left, height, width = rect[i].tolist()
        rows, cols = torch.arange(99) // 11, torch.arange(99) % 11
        gap_r = (top - rows).clamp(min=0) + (rows - (top + height - 1)).clamp(min=0)
        gap_c = (left - cols).clamp(min=0) + (cols - (left + width - 1)).clamp(min=0)
        key = torch.maximum(gap_r, gap_c) * 99 + torch.arange(99)
        key[~before[i]] = 10**9
        expected = torch.zeros(99, dtype=torch.bool)
        expected[key.argsort()[: int(count[i])]] = True
        assert torch.equal(added[i], expected)


# -- the two code paths, randomness, devices --------------------------------------------------------------------


@fast
@given(grid=grids, ratio=ratios, min_block=st.sampled_from([1, 4, 16, 64, 5000]), exact=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_cpu_shortcuts_change_nothing(grid, ratio, min_block, exact, seed):
    """On CPU finished samples leave the batch and only trimmed blocks are ranked; the full-batch path (the one
    CUDA runs) gives the same masks and blocks from the same generator state."""
    masker = BlockMasker(ratio, min_block_patches=min_block, exact=exact)
    fast_sample = masker.sample(7, grid, generator=gen(seed))
    masker._skip_finished_on_cpu = False
    full_sample = masker.sample(7, grid, generator=gen(seed))
    full_mask = masker(7, grid, generator=gen(seed))
    rounds = fast_sample.kinds.shape[1]
    assert torch.equal(fast_sample.mask, full_sample.mask) and torch.equal(full_mask, full_sample.mask)
    assert torch.equal(fast_sample.blocks, full_sample.blocks[:, :rounds])
    assert torch.equal(fast_sample.kinds, full_sample.kinds[:, :rounds])
    assert bool((full_sample.kinds[:, rounds:] == NO_BLOCK).all())
    assert torch.equal(fast_sample.closing_count, full_sample.closing_count)


def test_sample_and_call_agree():
    masker = BlockMasker(0.6)
    assert torch.equal(masker(16, (10, 12), generator=gen(7)), masker.sample(16, (10, 12), generator=gen(7)).mask)


def test_non_square_grid():
    masker = BlockMasker(0.5)
    sample = masker.sample(32, (6, 20), generator=gen(8))
    assert sample.mask.sum(dim=1).tolist() == [60] * 32
    blocks = sample.blocks[sample.kinds > 0]
    assert bool((blocks[:, 0] + blocks[:, 2] <= 6).all()) and bool((blocks[:, 1] + blocks[:, 3] <= 20).all())


@pytest.mark.cuda
def test_cuda_exact_and_on_device():
    masker = BlockMasker(0.75)
    g = torch.Generator(device="cuda").manual_seed(0)
    mask = masker(256, (14, 14), generator=g, device="cuda")
    assert mask.device.type == "cuda" and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [147] * 256
    again = masker(256, (14, 14), generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    assert torch.equal(mask, again)


# -- configuration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, key", [
    ({"ratio": 1.0}, "ratio"),
    ({"ratio": 0.0}, "ratio"),
    ({"min_block_patches": 0}, "min_block_patches"),
    ({"min_block_patches": 2.5}, "min_block_patches"),
    ({"min_block_patches": 16, "max_block_patches": 8}, "max_block_patches"),
    ({"aspect_ratio": (2.0, 0.5)}, "aspect_ratio"),
    ({"aspect_ratio": (0.0, 2.0)}, "aspect_ratio"),
    ({"aspect_ratio": [0.3]}, "aspect_ratio"),
    ({"exact": "yes"}, "exact"),
])
def test_bad_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        BlockMasker(**kwargs)
    assert info.value.key == key


def test_rounds_are_bounded():
    assert BlockMasker(0.4).num_rounds((14, 14)) == 8 + 2 * math.ceil(79 / 16)
    assert BlockMasker(0.99, min_block_patches=1).num_rounds((64, 64)) == 64
