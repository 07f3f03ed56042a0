"""MAE's random masking: hide a fixed fraction of patches, uniformly at random, per sample."""

from __future__ import annotations

import torch

from maskkit import toolkit
from maskkit.interfaces import Grid, Masker

check_ratio = toolkit.ratio  # the public validator (kept under its old name)


class RandomMasker(Masker):
    """Hide ``N - int(N * (1 - ratio))`` patches per sample, chosen uniformly (the official MAE scheme).

    As in the official ``random_masking``: draw uniform noise ``[B, N]``, sort it, keep the patches with the
    ``int(N * (1 - ratio))`` smallest noise values visible. :func:`mask_from_noise` exposes the noise-to-mask
    step, so a mask drawn by another implementation from the same noise is reproduced exactly.
    """

    def __init__(self, ratio: float = 0.75):
        self.ratio = check_ratio(ratio)

    def num_hidden(self, grid: Grid) -> int:
        n = grid[0] * grid[1]
        return n - int(n * (1 - self.ratio))

    def __call__(self, batch_size, grid, *, generator=None, device=None):
        n = grid[0] * grid[1]
        noise = torch.rand(batch_size, n, generator=generator, device=device)  # [B, N]
        return mask_from_noise(noise, self.ratio)

    def __repr__(self) -> str:
        return f"RandomMasker(ratio={self.ratio})"


def mask_from_noise(noise: torch.Tensor, ratio: float) -> torch.Tensor:
    """``noise [B, N] -> mask [B, N]``: the ``int(N * (1 - ratio))`` lowest-noise patches stay visible."""
    b, n = noise.shape
    num_keep = int(n * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    mask = torch.zeros(b, n, dtype=torch.bool, device=noise.device)
    return mask.scatter_(1, ids_shuffle[:, num_keep:], True)
