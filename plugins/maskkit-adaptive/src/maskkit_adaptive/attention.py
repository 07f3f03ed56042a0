"""The [CLS] attention of an encoder's last block on the full image: what AttMask ranks patches by.

It comes from the encoder's :meth:`maskkit.Encoder.prefix_attention` (``[B, heads, N]``), which the built-in
timm ViT encoder implements and any other encoder may; here it is averaged over heads, as AttMask does, and
taken with the encoder in eval mode, as the official code's teacher (no drop path) gives it.
"""

from __future__ import annotations

import torch

from maskkit import Encoder, toolkit


@torch.no_grad()
def cls_attention(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """``images [B, C, H, W] -> [B, N]``: the [CLS] token's attention to each patch in the last block,
    averaged over heads (each row sums to at most 1: the prefix tokens take the rest), computed on the whole
    image without gradients, in float32, with the encoder in eval mode (no dropout, no stochastic depth: the
    attention, hence the mask, does not depend on the global RNG; each submodule's mode is restored after).
    An encoder without :meth:`~maskkit.Encoder.prefix_attention` is a ``TypeError`` saying so."""
    try:
        with toolkit.eval_mode(encoder):
            weights = encoder.prefix_attention(images)  # [B, heads, N]
    except NotImplementedError as exc:
        raise TypeError(f"attention masking needs the encoder's [CLS] attention: {exc}") from None
    return weights.float().mean(dim=1)  # [B, N]
