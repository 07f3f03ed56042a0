"""ColorMAE's filters have the spectra their colours name; masks are exact, reproducible and independent of
how the batch is split; the curriculum goes from random to clustered masks."""

import pytest
import torch
from adaptive_helpers import draw
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import ConfigError
from maskkit_adaptive import ColorNoiseMasker, CurriculumMasker


def _band_power(color: str) -> tuple[float, float, float]:
    """Share of the patterns' power at low, middle and high spatial frequency (radius in cycles per patch)."""
    masker = ColorNoiseMasker(color)
    p = masker.pattern(64, (32, 32), generator=torch.Generator().manual_seed(0)).reshape(64, 32, 32)
    power = torch.fft.fft2(p).abs().square().mean(0)  # [32, 32]
    f = torch.fft.fftfreq(32)
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    bands = [(radius > 0) & (radius < 0.1), (radius >= 0.1) & (radius < 0.25), radius >= 0.25]
    total = float(power[radius > 0].sum())
    return tuple(float(power[b].sum()) / total for b in bands)


def test_filters_shape_the_spectrum():
    white, red, blue = _band_power("white"), _band_power("red"), _band_power("blue")
    green, purple = _band_power("green"), _band_power("purple")
    # measured (shares of power in the low / middle / high band): white 0.04 / 0.15 / 0.81, red 0.57 / 0.40 /
    # 0.03, blue 0.00 / 0.06 / 0.94, green 0.08 / 0.68 / 0.24, purple 0.03 / 0.07 / 0.90
    assert red[0] > 5 * white[0] and red[2] < 0.1 * white[2]  # low-pass
    assert blue[0] < 0.2 * white[0] and blue[2] > white[2]  # high-pass
    assert green[1] > max(green[0], green[2]) and green[1] > 3 * white[1] and green[2] < 0.5 * white[2]  # band-pass
    assert purple[1] < 0.6 * white[1] and purple[2] > white[2]  # band-stop

def _clustering(mask: torch.Tensor, grid=(14, 14)) -> float:
    """Mean share of a hidden patch's 4-neighbours that are hidden too."""
    m = mask.float().reshape(-1, 1, *grid)
    kernel = torch.tensor([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    neighbours = torch.nn.functional.conv2d(m, kernel, padding=1)
    count = torch.nn.functional.conv2d(torch.ones_like(m), kernel, padding=1)
    return float(((neighbours / count) * m).sum() / m.sum())


def test_red_clusters_and_blue_spreads_the_hidden_patches():
    cluster = {c: _clustering(draw(ColorNoiseMasker(c), 64)) for c in ("red", "white", "blue", "green")}
    assert cluster["red"] > cluster["green"] > cluster["white"] > cluster["blue"], cluster


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 6), h=st.integers(2, 16), w=st.integers(2, 16), seed=st.integers(0, 2**31 - 1),
       color=st.sampled_from(["red", "blue", "green", "purple"]))
def test_split_batch_draws_the_whole_batchs_masks(b, h, w, seed, color):
    masker = ColorNoiseMasker(color)
    whole = draw(masker, 2 * b, (h, w), seed)
    halves = [draw(masker, b, (h, w), seed, rows=slice(i * b, (i + 1) * b)) for i in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)
    assert whole.sum(1).tolist() == [masker.num_hidden((h, w))] * (2 * b)


def test_curriculum_goes_from_random_to_clustered():
    masker = CurriculumMasker(ramp_epochs=4)
    assert [masker.hardness(e) for e in (0, 2, 4, 8)] == [0.0, 0.5, 1.0, 1.0]
    random = ColorNoiseMasker("white")
    clustering = [_clustering(draw(masker, 64, epoch=e)) for e in (0, 1, 2, 4)]
    assert clustering == sorted(clustering) and clustering[-1] > clustering[0] + 0.15, clustering
    assert _clustering(draw(masker, 64, epoch=0)) == pytest.approx(_clustering(draw(random, 64)), abs=0.05)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="color"):
        ColorNoiseMasker("pink")
    with pytest.raises(ConfigError, match="sigma2"):
        ColorNoiseMasker("green", sigma=2.0, sigma2=1.0)
