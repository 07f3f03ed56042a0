"""SimMIM's random masker: the masker contract, the official counts, and whole square mask patches."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from simmim_helpers import RandomCountMasker

from maskkit.errors import ConfigError
from maskkit.testing import MaskerContract
from maskkit_simmim import SimMIMRandomMasker

few = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.differing_executors])


class TestSimMIMRandom(MaskerContract):
    def make_masker(self):
        return SimMIMRandomMasker(0.6)


class TestSimMIMRandomScale2(MaskerContract):
    """Mask patches of 2x2 cells (a ViT/16 with SimMIM's 32-px mask patches): grids divisible by 2."""

    grids = st.tuples(st.integers(2, 8), st.integers(2, 8)).map(lambda g: (2 * g[0], 2 * g[1]))

    def make_masker(self):
        return SimMIMRandomMasker(0.6, scale=2)


class TestRandomCountMasker(MaskerContract):
    """The variable-count masker of these tests is a valid masker too."""

    def make_masker(self):
        return RandomCountMasker()


@pytest.mark.parametrize("units, ratio, hidden", [(36, 0.6, 22), (49, 0.6, 30), (10, 0.7, 7), (10, 0.6, 6),
                                                  (4, 0.6, 3)])
def test_count_is_the_ceiling(units, ratio, hidden):
    """SimMIM hides ``ceil(U * ratio)`` mask patches: 22 of 36 at 192 px, 30 of 49 (ViT-B at 224)."""
    masker = SimMIMRandomMasker(ratio)
    assert masker.num_hidden((1, units)) == hidden
    assert masker(3, (1, units), generator=torch.Generator().manual_seed(0)).sum(1).tolist() == [hidden] * 3


@few
@given(uh=st.integers(1, 6), uw=st.integers(1, 6), scale=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_mask_patches_are_aligned_squares(uh, uw, scale, seed):
    """Every ``scale x scale`` block of the grid is all hidden or all visible, and the block-level mask hides
    ``ceil(U * ratio)`` blocks."""
    assume(math.ceil(uh * uw * 0.6) < uh * uw)  # some mask patch stays visible
    masker = SimMIMRandomMasker(0.6, scale=scale)
    grid = (uh * scale, uw * scale)
    mask = masker(2, grid, generator=torch.Generator().manual_seed(seed)).reshape(2, uh, scale, uw, scale)
    blocks = mask.permute(0, 1, 3, 2, 4).flatten(3)  # [B, uh, uw, scale * scale]
    assert bool((blocks.all(-1) | ~blocks.any(-1)).all())
    count = blocks[..., 0].sum(dim=(1, 2))
    assert count.tolist() == [math.ceil(uh * uw * 0.6 - 1e-9)] * 2


def test_every_position_gets_hidden():
    """Uniform placement: over many draws every grid cell is hidden about 60% of the time."""
    mask = SimMIMRandomMasker(0.6, scale=2)(4000, (6, 6), generator=torch.Generator().manual_seed(0))
    freq = mask.float().mean(0)
    hidden = math.ceil(9 * 0.6) / 9
    assert torch.allclose(freq, torch.full_like(freq, hidden), atol=0.04)


@pytest.mark.parametrize("kwargs, grid, key", [({"scale": 2}, (6, 5), "scale"), ({"ratio": 0.6}, (1, 1), "ratio"),
                                               ({"scale": 3}, (3, 3), "ratio")])
def test_grids_that_do_not_fit_are_refused(kwargs, grid, key):
    masker = SimMIMRandomMasker(**kwargs)
    with pytest.raises(ConfigError) as info:
        masker(1, grid)
    assert info.value.key == key


@pytest.mark.parametrize("kwargs, key", [({"ratio": 1.0}, "ratio"), ({"scale": 0}, "scale"), ({"scale": 1.5}, "scale")])
def test_bad_arguments(kwargs, key):
    with pytest.raises(ConfigError) as info:
        SimMIMRandomMasker(**kwargs)
    assert info.value.key == key
