"""Reconstruction losses, averaged per patch and then over the hidden patches (MAE's reduction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskkit.interfaces import Loss


def masked_mean(per_patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_patch [B, N]`` over the entries where ``mask [B, N]`` is True."""
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


class _PatchLoss(Loss):
    """Base for losses defined per patch: subclasses give ``per_patch(pred, target) -> [B, N]``."""

    def __init__(self, include_visible: bool = False):
        super().__init__()
        self.include_visible = include_visible

    def per_patch(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred, target, mask):
        per_patch = self.per_patch(pred.float(), target.float())  # [B, N]
        if self.include_visible:
            return per_patch.mean()
        return masked_mean(per_patch, mask)


class MSELoss(_PatchLoss):
    """Mean squared error per patch, averaged over hidden patches (MAE; ``include_visible`` for Table 1's
    'loss on all patches' ablation)."""

    def per_patch(self, pred, target):
        return ((pred - target) ** 2).mean(dim=-1)


class L1Loss(_PatchLoss):
    """Mean absolute error over hidden patches (SimMIM)."""

    def per_patch(self, pred, target):
        return (pred - target).abs().mean(dim=-1)


class SmoothL1Loss(_PatchLoss):
    """Huber-style smooth L1 with threshold ``beta`` (data2vec uses it on features)."""

    def __init__(self, beta: float = 1.0, include_visible: bool = False):
        super().__init__(include_visible)
        self.beta = beta

    def per_patch(self, pred, target):
        return F.smooth_l1_loss(pred, target, reduction="none", beta=self.beta).mean(dim=-1)


class CosineLoss(_PatchLoss):
    """``1 - cos(pred, target)`` per patch (feature targets)."""

    def per_patch(self, pred, target):
        return 1.0 - F.cosine_similarity(pred, target, dim=-1)
