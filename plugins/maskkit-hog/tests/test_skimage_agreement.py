"""Agreement with ``skimage.feature.hog`` on real Fashion-MNIST images (optional: needs scikit-image).

The comparable variant: no Gaussian window, one cell per block (``cells_per_block=(1, 1)``, so skimage's
"block" normalisation is our per-cell normalisation, with no 2x2 block normalisation), L2, 9 bins, one
channel. Both sides use the same gradients ([-1, 0, 1], zero across the image border), the same unsigned
orientation and the same hard binning, so every bin of every cell must agree.

Tolerance, two terms. (1) skimage averages each cell (``h / (cy * cx)``) and normalises with
``h / sqrt(||h||^2 + eps^2)``, ``eps = 1e-5``; we sum and divide by ``||h||``. On 0-255 integer pixels a cell
with any gradient has a pixel of magnitude >= 1, so skimage's ``||h||`` is at least ``1 / (cy * cx)`` and the
results differ by at most a relative ``eps^2 / (2 ||h||^2) <= 0.5e-10 * (cy * cx)^2``. (2) skimage
accumulates each cell in single precision (its Cython ``cell_hog`` returns a C ``float``; the differences
seen are ~1e-7 relative, float32's rounding), a sum of ``n = cy * cx`` terms, whose rounding error is at
most ``n * 2^-24`` relative (the standard bound). Entries are <= 1 after normalisation, so the test allows
``2 * 0.5e-10 * n^2 + n * 2^-24`` absolute (1e-6 for 2x2 cells, 1.5e-5 for 14x14). A single pixel put in a
different bin would move an entry by about ``1 / sqrt(9 * n) > 0.02``: far outside the tolerance, so the
binning itself must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from maskkit_hog import HOGTarget

skimage_feature = pytest.importorskip("skimage.feature")


def _skimage_patch_targets(image: np.ndarray, patch: int, cell: int) -> np.ndarray:
    """skimage's per-cell histograms, regrouped into our per-patch layout ``[N, (bin, cell row, cell col)]``."""
    hist = skimage_feature.hog(image, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(1, 1),
                               block_norm="L2", feature_vector=False, channel_axis=None)  # [h, w, 1, 1, 9]
    h, w = hist.shape[:2]
    ny = patch // cell
    grid = hist[:, :, 0, 0, :].reshape(h // ny, ny, w // ny, ny, 9)  # [gh, u, gw, v, bin]
    return grid.transpose(0, 2, 4, 1, 3).reshape((h // ny) * (w // ny), 9 * ny * ny)


@pytest.mark.parametrize("patch, cell", [(2, 2), (4, 4), (28, 7), (14, 14)])
def test_matches_skimage_hog_on_fashion_mnist(fashion_images, patch, cell):
    images = fashion_images[:16].double()  # 0..255, like the uint8 image skimage would get
    ours = HOGTarget(patch, 1, cell_size=cell, gaussian_window=False)(images).numpy()
    n = cell * cell
    tolerance = 2 * 0.5e-10 * n**2 + n * 2.0**-24
    compared = 0
    for index in range(len(images)):
        reference = _skimage_patch_targets(images[index, 0].numpy(), patch, cell)
        np.testing.assert_allclose(ours[index], reference, rtol=0, atol=tolerance)
        compared += int((reference > 0).sum())
    assert compared > 100, "the images must have gradients for the comparison to mean something"
