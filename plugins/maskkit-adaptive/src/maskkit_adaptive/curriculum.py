"""A curriculum masker: random masking that turns into clustered (harder) masking as training goes on."""

from __future__ import annotations

import torch

from maskkit import Masker
from maskkit.interfaces import Grid
from maskkit.masking import mask_from_scores
from maskkit_adaptive._common import check_fraction, check_positive, check_ratio, mae_num_hidden, zscore
from maskkit_adaptive.colormae import color_noise, gaussian_white


class CurriculumMasker(Masker):
    """Easy-to-hard by the epoch: the mask thresholds ``(1 - t) * white + t * red`` noise, with ``t`` rising
    linearly from ``start`` to ``end`` over ``ramp_epochs`` (fractional epochs, from the ``epoch`` context).

    ``t = 0`` is MAE's random masking (each patch independent; a hidden patch usually has visible neighbours,
    an easy inpainting task); ``t = 1`` hides the low regions of ColorMAE's red (low-pass) noise, large
    clusters whose centres are far from any visible patch, a harder task. The count is fixed
    (``N - int(N * (1 - ratio))``), so the sparse encoder is unaffected. A small example of a schedule in a
    masker: it asks for ``epoch`` and the engine passes it; ``step`` works the same way.

    ``__call__(B, grid, generator=, device=, epoch=, rows=) -> bool [B, N]``.
    """

    def __init__(self, ratio: float = 0.75, start: float = 0.0, end: float = 1.0, ramp_epochs: float = 8.0,
                 sigma: float = 1.5):
        self.ratio = check_ratio(ratio)
        self.start = check_fraction(start, "start")
        self.end = check_fraction(end, "end")
        self.ramp_epochs = check_positive(ramp_epochs, "ramp_epochs")
        self.sigma = check_positive(sigma, "sigma")
        self.margin = int(3 * self.sigma + 1)

    def num_hidden(self, grid: Grid) -> int:
        return mae_num_hidden(self.ratio, grid)

    def hardness(self, epoch: float) -> float:
        """``t`` at (fractional) ``epoch``."""
        progress = min(1.0, max(0.0, float(epoch)) / self.ramp_epochs)
        return self.start + (self.end - self.start) * progress

    def __call__(self, batch_size: int, grid: Grid, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, epoch: float = 0.0,
                 rows: slice | None = None) -> torch.Tensor:
        h, w = grid
        m = self.margin
        white = gaussian_white(batch_size, (h + 2 * m, w + 2 * m), generator=generator, device=device, rows=rows)
        plain = zscore(white[:, m:m + h, m:m + w], dim=(1, 2))  # [B, h, w]
        red = color_noise(white, "red", self.sigma, 2 * self.sigma, m)  # [B, h, w]
        t = self.hardness(epoch)
        scores = ((1 - t) * plain + t * red).reshape(batch_size, h * w)
        return mask_from_scores(-scores, self.num_hidden(grid))

    def __repr__(self) -> str:
        return (f"CurriculumMasker(ratio={self.ratio}, start={self.start}, end={self.end}, "
                f"ramp_epochs={self.ramp_epochs}, sigma={self.sigma})")
