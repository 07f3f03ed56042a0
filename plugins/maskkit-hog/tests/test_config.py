"""Target size per patch, the cell scaled to small patches, and errors that name the recipe key."""

from __future__ import annotations

import pytest

from maskkit.errors import ConfigError
from maskkit_hog import HOGTarget


@pytest.mark.parametrize("patch, cell_size, in_chans, channels, nbins, cell, dim", [
    (16, 8, 3, "per_channel", 9, (8, 8), 108),   # MaskFeat ViT-B/16: 3 channels x 9 bins x 2 x 2 cells
    (16, 8, 3, "gray", 9, (8, 8), 36),
    (14, 7, 3, "per_channel", 9, (7, 7), 108),   # a /14 ViT with 7-pixel cells
    (4, 8, 1, "per_channel", 9, (4, 4), 9),      # Fashion-MNIST patch 4: the patch is the cell
    (2, 8, 1, "per_channel", 9, (2, 2), 9),      # patch 2: the 2x2 patch is the cell
    (3, 8, 3, "per_channel", 12, (3, 3), 36),
    ((8, 4), 4, 2, "per_channel", 9, (4, 4), 36),  # non-square patch: 2 x 1 cells
    (16, (8, 4), 1, "per_channel", 6, (8, 4), 48),  # non-square cells: 2 x 4 of them
])
def test_dim_and_cell(patch, cell_size, in_chans, channels, nbins, cell, dim):
    target = HOGTarget(patch, in_chans, nbins=nbins, cell_size=cell_size, channels=channels)
    assert target.cell == cell
    assert target.dim == dim


@pytest.mark.parametrize("kwargs, key", [
    ({"patch_size": 14, "in_chans": 3}, "cell_size"),           # 14 is not a whole number of 8-pixel cells
    ({"patch_size": 16, "in_chans": 3, "cell_size": 0}, "cell_size"),
    ({"patch_size": 16, "in_chans": 3, "nbins": 0}, "nbins"),
    ({"patch_size": 16, "in_chans": 3, "nbins": 2.5}, "nbins"),
    ({"patch_size": 16, "in_chans": 3, "channels": "rgb"}, "channels"),
    ({"patch_size": 16, "in_chans": 0}, "in_chans"),
])
def test_bad_arguments_raise_config_errors_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        HOGTarget(**kwargs)
    assert info.value.key == key


def test_cell_error_lists_the_sizes_that_fit():
    with pytest.raises(ConfigError, match=r"\[1, 2, 7, 14\]"):
        HOGTarget(14, 3, cell_size=8)


def test_window_is_not_saved_in_checkpoints():
    assert HOGTarget(16, 3).state_dict() == {}
