"""What the HOG computes: orientation bins of known edges, rotation, flat images, unit cells, the window,
the per-patch layout, and the invariances a data pipeline relies on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskkit_hog import HOGTarget, cell_histograms, gaussian_window, image_gradients, l2_normalize_cells
from maskkit_hog.hog import orientation_bins

_settings = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.differing_executors])
seeds = st.integers(0, 2**31 - 1)


def _random_images(seed: int, shape, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _step_edge(vertical: bool, size: int = 16, channels: int = 1, dark_to_light: bool = True) -> torch.Tensor:
    """``[1, C, size, size]``: 0 on one half, 1 on the other; the border between the halves is vertical
    (intensity changes along x) or horizontal (changes along y)."""
    image = torch.zeros(1, channels, size, size, dtype=torch.float64)
    if vertical:
        image[..., :, size // 2:] = 1.0
    else:
        image[..., size // 2:, :] = 1.0
    return image if dark_to_light else 1.0 - image


# ---- orientation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dark_to_light", [True, False])
@pytest.mark.parametrize("window", [True, False])
def test_vertical_edge_votes_in_the_horizontal_gradient_bin(dark_to_light, window):
    target = HOGTarget(16, 3, gaussian_window=window)
    out = target(_step_edge(vertical=True, channels=3, dark_to_light=dark_to_light))  # [1, 1, 3 * 9 * 4]
    hist = out.reshape(3, 9, 2, 2)  # (channel, bin, cell row, cell col)
    expected = torch.zeros(3, 9, 2, 2, dtype=torch.float64)
    expected[:, 0] = 1.0  # every cell touches the edge (columns 7 and 8), all mass in bin 0 (orientation 0)
    torch.testing.assert_close(hist, expected)


def test_horizontal_edge_votes_in_the_vertical_gradient_bin():
    """Orientation pi / 2 is bin floor(9 / 2) = 4 of 9 (bin 4 holds [80, 100) degrees)."""
    hist = HOGTarget(16, 1)(_step_edge(vertical=False)).reshape(9, 2, 2)
    assert torch.all(hist[4] == 1.0) and hist.sum() == 4.0


@_settings
@given(angle=st.floats(0.0, 2 * math.pi, exclude_max=True), radius=st.floats(1e-3, 1e3),
       nbins=st.integers(1, 36))
def test_orientation_bin_is_the_unsigned_angle_over_the_bin_width(angle, radius, nbins):
    width = math.pi / nbins
    unsigned = angle % math.pi
    if min(unsigned % width, width - unsigned % width) < 1e-9:  # a tie at a bin edge: either side is fine
        return
    gx = torch.tensor([radius * math.cos(angle)], dtype=torch.float64)
    gy = torch.tensor([radius * math.sin(angle)], dtype=torch.float64)
    assert int(orientation_bins(gx, gy, nbins)) == int(unsigned // width) % nbins


@_settings
@given(seed=seeds, nbins=st.sampled_from([2, 4, 6, 8, 12, 18]), cell=st.sampled_from([1, 2, 4]),
       cells=st.integers(2, 4), channels=st.integers(1, 3), window=st.booleans())
def test_rotating_by_90_degrees_shifts_the_histogram_by_half_the_bins(seed, nbins, cell, cells, channels, window):
    """A quarter turn turns every gradient by pi / 2, i.e. nbins / 2 bins (even nbins, so the shift is whole),
    and moves each cell to its rotated place; the symmetric window and reflect border rotate along."""
    size = cell * cells
    image = _random_images(seed, (2, channels, size, size))
    weight = gaussian_window((size, size), dtype=image.dtype) if window else None
    hist = l2_normalize_cells(cell_histograms(image, nbins, (cell, cell), weight))
    turned = l2_normalize_cells(cell_histograms(torch.rot90(image, 1, dims=(-2, -1)), nbins, (cell, cell), weight))
    expected = torch.rot90(hist, 1, dims=(-2, -1)).roll(nbins // 2, dims=2)
    torch.testing.assert_close(turned, expected, rtol=1e-9, atol=1e-12)


def test_rotating_the_edge_with_nine_bins_moves_its_mass_from_bin_0_to_bin_4():
    """With the default 9 bins a quarter turn is 4.5 bins: the edge's orientation 0 becomes pi / 2, bin 4."""
    target = HOGTarget(16, 1)
    edge = _step_edge(vertical=True)
    before, after = target(edge).reshape(9, 4), target(torch.rot90(edge, 1, dims=(-2, -1))).reshape(9, 4)
    assert torch.all(before[0] == 1.0) and torch.all(after[4] == 1.0)
    assert before.sum() == after.sum() == 4.0


# ---- normalisation -------------------------------------------------------------------------------------


@_settings
@given(value=st.floats(-1e4, 1e4), channels=st.integers(1, 3), gray=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_constant_images_give_zero_histograms(value, channels, gray, dtype):
    target = HOGTarget(4, channels, channels="gray" if gray else "per_channel")
    out = target(torch.full((2, channels, 8, 12), value, dtype=dtype))
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out) == 0


def _cells_with_gradient(images: torch.Tensor, cell: int) -> torch.Tensor:
    """Per cell (``[B, C, h, w]`` bool): does any pixel differ from a horizontal or vertical neighbour at
    distance two (the central difference), with the border mirrored? Computed by shifting, not with the HOG."""
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    moving = (padded[..., 1:-1, 2:] != padded[..., 1:-1, :-2]) | (padded[..., 2:, 1:-1] != padded[..., :-2, 1:-1])
    return F.max_pool2d(moving.to(images.dtype), cell).bool()


@pytest.mark.parametrize("patch, cell", [(4, 4), (14, 7), (2, 2)])
def test_each_cell_has_unit_norm_where_there_is_gradient_and_is_zero_elsewhere(fashion_images, patch, cell):
    images = fashion_images.double()  # real Fashion-MNIST: blank background and textured garments
    target = HOGTarget(patch, 1, cell_size=cell)
    out = target(images)  # [B, N, 9 * cells per patch]
    ny = patch // cell
    grid = 28 // patch
    per_cell = out.reshape(len(images), grid, grid, 9, ny, ny).permute(0, 3, 1, 4, 2, 5)
    norms = torch.linalg.vector_norm(per_cell.reshape(len(images), 9, 28 // cell, 28 // cell), dim=1)
    has_gradient = _cells_with_gradient(images, cell)[:, 0]
    assert has_gradient.any() and (~has_gradient).any(), "the check needs both kinds of cells"
    torch.testing.assert_close(norms[has_gradient], torch.ones_like(norms[has_gradient]))
    assert torch.count_nonzero(norms[~has_gradient]) == 0


def test_non_finite_pixels_give_non_finite_cells_not_a_crash():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 3, 3] = float("nan")
    out = HOGTarget(4, 1)(image)  # [1, 4, 9]; the NaN reaches the gradients at (3, 4) and (4, 3) too
    assert torch.isnan(out[0, :3]).all()
    assert torch.count_nonzero(out[0, 3]) == 0  # the patch of rows and columns 4-7 never sees it


def test_tiny_gradients_below_eps_are_not_blown_up():
    """A cell whose histogram norm is below ``eps`` is divided by ``eps``, not by its own norm."""
    image = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    image[..., :, 2:] = 1e-9
    out = HOGTarget(4, 1, gaussian_window=False, eps=1e-6)(image)
    assert 0 < out.norm() < 1e-2


@_settings
@given(seed=seeds, scale=st.floats(0.01, 100.0), shift=st.floats(-50.0, 50.0))
def test_invariant_to_positive_affine_intensity_changes(fashion_images, seed, scale, shift):
    """Data normalisation ``(x - mean) / std`` does not change the target (per-cell L2 norm)."""
    index = seed % len(fashion_images)
    image = fashion_images[index: index + 2].double()
    target = HOGTarget(4, 1)
    torch.testing.assert_close(target(image * scale + shift), target(image), rtol=0, atol=1e-9)


def test_unchanged_by_the_data_pipeline_normalisation(fashion_images):
    images = fashion_images.double()
    normalized = (images / 255.0 - 0.2860) / 0.3530  # Fashion-MNIST mean and std
    target = HOGTarget(4, 1)
    torch.testing.assert_close(target(normalized), target(images), rtol=0, atol=1e-9)


# ---- gradients, window, layout, channels, dtype -----------------------------------------------------------


@_settings
@given(seed=seeds, channels=st.integers(1, 4), height=st.integers(2, 12), width=st.integers(2, 12))
def test_gradients_are_the_minus_one_zero_one_convolution(seed, channels, height, width):
    image = _random_images(seed, (2, channels, height, width))
    padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
    kernel = torch.tensor([-1.0, 0.0, 1.0], dtype=image.dtype)
    conv_x = F.conv2d(padded[..., 1:-1, :], kernel.view(1, 1, 1, 3).repeat(channels, 1, 1, 1), groups=channels)
    conv_y = F.conv2d(padded[..., :, 1:-1], kernel.view(1, 1, 3, 1).repeat(channels, 1, 1, 1), groups=channels)
    gx, gy = image_gradients(image)
    torch.testing.assert_close(gx, conv_x)
    torch.testing.assert_close(gy, conv_y)


def test_gaussian_window_is_maskfeats_kernel_scaled_to_mean_one():
    """MaskFeat: ``n = arange(16) - 7.5; n /= 16 // 2; w = exp(-n^2 / 2)``, outer product, sum 1."""
    n = (torch.arange(16, dtype=torch.float64) - 7.5) / 8
    maskfeat = torch.outer(torch.exp(-0.5 * n**2), torch.exp(-0.5 * n**2))
    maskfeat = maskfeat / maskfeat.sum()
    window = gaussian_window((16, 16), dtype=torch.float64)
    torch.testing.assert_close(window, maskfeat * 256)
    assert window.mean().item() == pytest.approx(1.0)
    assert window[7, 7] == window.max() and window[0, 0] == window.min()


def test_gaussian_window_is_per_axis_for_non_square_patches():
    window = gaussian_window((4, 2), dtype=torch.float64)
    assert window.shape == (4, 2)
    torch.testing.assert_close(window[:, 0], window[:, 1])  # 2 columns: equal weights
    torch.testing.assert_close(window[0], window[3])  # symmetric rows


def test_window_favours_gradients_near_the_patch_centre():
    """One 16x16 patch and cell: a vertical edge through the centre (unit gradients in columns 7 and 8) weighs
    the window's two central columns; the same edge near the border (columns 1 and 2) weighs less."""
    centre, border = torch.zeros(2, 1, 16, 16, dtype=torch.float64).unbind(0)
    centre[..., 8:] = 1.0
    border[..., 2:] = 1.0
    weight = gaussian_window((16, 16), dtype=torch.float64)
    weighted = [cell_histograms(x[None], 9, (16, 16), weight)[0, 0, :, 0, 0] for x in (centre, border)]
    torch.testing.assert_close(weighted[0][0], weight[:, 7:9].sum())
    torch.testing.assert_close(weighted[1][0], weight[:, 1:3].sum())
    assert weighted[0][1:].sum() == weighted[1][1:].sum() == 0
    assert weighted[0][0] > 1.3 * weighted[1][0]
    plain = [cell_histograms(x[None], 9, (16, 16)).sum() for x in (centre, border)]
    assert plain[0] == plain[1] == 32


def test_two_pixel_patches_are_unweighted(fashion_images):
    images = fashion_images[:8].double()
    torch.testing.assert_close(HOGTarget(2, 1)(images), HOGTarget(2, 1, gaussian_window=False)(images))


def test_window_changes_the_target_of_larger_patches(fashion_images):
    images = fashion_images[:8].double()
    with_window, without = HOGTarget(14, 1, cell_size=7)(images), HOGTarget(14, 1, cell_size=7,
                                                                            gaussian_window=False)(images)
    assert (with_window - without).abs().max() > 0.05


def test_patch_layout_is_channel_bin_cell_row_cell_column():
    """MaskFeat's layout: patch (i, j), entry ((c * nbins + k) * ny + u) * nx + v = cell (i * ny + u, j * nx + v)."""
    image = _random_images(0, (2, 2, 16, 24))
    nbins, (ph, pw), (cy, cx) = 5, (8, 12), (4, 6)
    target = HOGTarget((ph, pw), 2, nbins=nbins, cell_size=(cy, cx))
    out = target(image)  # [2, 2 * 2, 2 * 5 * 2 * 2]
    weight = gaussian_window((ph, pw), dtype=image.dtype).repeat(2, 2)
    hist = l2_normalize_cells(cell_histograms(image, nbins, (cy, cx), weight))  # [2, 2, 5, 4, 4]
    ny, nx, gw = ph // cy, pw // cx, 24 // pw
    for i in range(2):
        for j in range(gw):
            for c in range(2):
                for k in range(nbins):
                    for u in range(ny):
                        for v in range(nx):
                            entry = ((c * nbins + k) * ny + u) * nx + v
                            assert out[:, i * gw + j, entry].tolist() == hist[:, c, k, i * ny + u, j * nx + v].tolist()


def test_per_channel_is_each_channel_on_its_own_and_gray_is_the_channel_mean():
    image = _random_images(1, (2, 3, 16, 16))
    per_channel = HOGTarget(8, 3)(image).reshape(2, 4, 3, -1)  # [B, N, C, nbins * cells]
    for c in range(3):
        torch.testing.assert_close(per_channel[:, :, c], HOGTarget(8, 1)(image[:, c:c + 1]))
    torch.testing.assert_close(HOGTarget(8, 3, channels="gray")(image), HOGTarget(8, 1)(image.mean(1, keepdim=True)))


def test_memory_layout_does_not_matter():
    image = _random_images(4, (2, 3, 16, 24))
    target = HOGTarget(8, 3)
    expected = target(image)
    torch.testing.assert_close(target(image.contiguous(memory_format=torch.channels_last)), expected)
    torch.testing.assert_close(target(image.transpose(-1, -2).contiguous().transpose(-1, -2)), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype):
    image = _random_images(2, (2, 3, 16, 16), dtype=torch.float32).to(dtype)
    target = HOGTarget(8, 3)
    out = target(image)
    assert out.dtype == dtype
    torch.testing.assert_close(out, target(image.float()).to(dtype), rtol=0, atol=0)


def test_rejects_images_that_do_not_fit():
    target = HOGTarget(4, 3)
    with pytest.raises(ValueError, match="channels"):
        target(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="multiple of the patch"):
        target(torch.zeros(1, 3, 8, 10))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    image = _random_images(3, (4, 3, 32, 32), dtype=torch.float32)
    target = HOGTarget(16, 3)
    on_gpu = target.cuda()(image.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), HOGTarget(16, 3)(image), rtol=1e-4, atol=1e-4)
