"""Pixel targets: raw patches, or each patch normalized by its own mean and variance (MAE's norm-pix)."""

from __future__ import annotations

import torch

from maskkit.interfaces import Target
from maskkit.patches import Size2, patchify, to_2tuple


class PixelTarget(Target):
    """Predict the pixels of each patch: ``[B, C, H, W] -> [B, N, ph * pw * C]``.

    With ``normalize=True`` (the ``norm_pixels`` target, MAE's default) each patch vector is standardised by
    its own mean and *unbiased* variance, ``(x - mean) / sqrt(var + eps)``, exactly as the official code does.
    """

    def __init__(self, patch_size: Size2, in_chans: int, normalize: bool = False, eps: float = 1e-6):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.normalize = normalize
        self.eps = eps
        self.dim = self.patch_size[0] * self.patch_size[1] * in_chans

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch_size)
        if self.normalize:
            target = normalize_patches(target, self.eps)
        return target

    def to_pixels(self, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Undo the per-patch normalisation with each patch's own mean and variance in ``images``."""
        if not self.normalize:
            return pred
        patches = patchify(images, self.patch_size)
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        return pred * (var + self.eps) ** 0.5 + mean


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardisation of ``[..., D]`` over the last dimension (unbiased variance, as MAE)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def norm_pixels(patch_size: Size2, in_chans: int, eps: float = 1e-6) -> PixelTarget:
    """MAE's default target: per-patch normalized pixels."""
    return PixelTarget(patch_size, in_chans, normalize=True, eps=eps)


def pixels(patch_size: Size2, in_chans: int) -> PixelTarget:
    """Raw (data-normalized) pixels."""
    return PixelTarget(patch_size, in_chans, normalize=False)
