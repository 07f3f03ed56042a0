"""SimMIM's prediction head: one linear layer per final-stage token, predicting that token's whole patch.

The official head is ``Conv2d(D, s * s * 3, kernel_size=1)`` followed by ``PixelShuffle(s)`` (``s`` the
encoder stride). A 1x1 convolution on a feature map is a linear layer on each token, and pixel shuffle only
lays the ``s * s * C`` outputs of a token out as its ``s x s`` patch. maskkit compares per-patch vectors
instead of images, so the head is ``Linear(D, out_dim)`` with the output in the order of the target
(:func:`maskkit.patches.patchify`, ``(row, column, channel)``), and it predicts pixels, normalized pixels or
HOG alike. :func:`pixel_shuffle_weight_to_patchify` converts an official head's weights to this order.
"""

from __future__ import annotations

import torch
from torch import nn

from maskkit.errors import ConfigError
from maskkit.interfaces import Decoder
from maskkit.patches import Size2, to_2tuple


class SimMIMHead(Decoder):
    """``latent [B, P + N, in_dim]`` (a dense encoder's output) -> ``pred [B, N, out_dim]``.

    Drops the ``num_prefix_tokens`` prefix tokens (a dense ViT's cls) and applies one linear layer to each
    patch token, PyTorch's default initialisation (as the official 1x1 convolution). Needs every patch's token:
    a sparse (visible-only) latent is refused, since there is nothing to predict a hidden patch from.
    """

    def __init__(self, in_dim: int, grid: Size2, out_dim: int, num_prefix_tokens: int = 0, sparse: bool = False):
        super().__init__()
        if sparse:
            raise ConfigError("name", "the simmim head needs a dense encoder (one token per patch), but the encoder "
                                      "is sparse; use simmim_swin_*, simmim_convnext_*, or a ViT with dense: true")
        self.grid = to_2tuple(grid)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = num_prefix_tokens
        self.decoder_pred = nn.Linear(in_dim, out_dim)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = latent[:, self.num_prefix_tokens:]  # [B, N, in_dim]
        if tokens.shape[1] != self.num_patches:
            raise ValueError(f"the simmim head needs a dense encoder (one token per patch, {self.num_patches} after "
                             f"{self.num_prefix_tokens} prefix tokens), got {tokens.shape[1]} patch tokens; "
                             "use a dense encoder (simmim_swin_*, simmim_convnext_*, or a ViT with dense: true)")
        return self.decoder_pred(tokens)  # [B, N, out_dim]


def pixel_shuffle_weight_to_patchify(weight: torch.Tensor, bias: torch.Tensor | None, patch_size: Size2 | int,
                                     in_chans: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Official head weights -> :class:`SimMIMHead` ``decoder_pred`` weights.

    ``weight [C * ph * pw, D, 1, 1]`` (or ``[C * ph * pw, D]``) and ``bias [C * ph * pw]`` of a 1x1 conv whose
    output goes through ``PixelShuffle``, i.e. output channel ``c * ph * pw + p * pw + q`` is pixel ``(p, q)``
    of channel ``c``; returns ``weight [ph * pw * C, D]`` and ``bias [ph * pw * C]`` in patchify order
    (``(p * pw + q) * C + c``). PixelShuffle needs ``ph == pw``; the permutation itself does not.
    """
    ph, pw = to_2tuple(patch_size)
    out = weight.shape[0]
    if out != in_chans * ph * pw:
        raise ValueError(f"weight: expected {in_chans * ph * pw} output channels for patch {(ph, pw)} and "
                         f"{in_chans} channels, got {out}")
    w = weight.reshape(in_chans, ph, pw, -1).permute(1, 2, 0, 3).reshape(out, -1)  # (c,p,q) -> (p,q,c)
    b = None if bias is None else bias.reshape(in_chans, ph, pw).permute(1, 2, 0).reshape(out)
    return w, b
