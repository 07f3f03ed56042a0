"""data2vec's regression head: one linear layer on each patch token of the (dense) student encoder.

In the official vision code (``VisionTransformerForCyclicalTraining.lm_head``) the student's final,
normalized tokens go through ``nn.Linear(D, D)`` to predict the teacher's averaged block outputs. The
parameter is named ``lm_head`` as there, so an official data2vec checkpoint's head loads by name.
"""

from __future__ import annotations

import torch
from torch import nn

from maskkit import Decoder
from maskkit.patches import Size2, to_2tuple


class LinearHead(Decoder):
    """``latent [B, P + N, in_dim] -> pred [B, N, out_dim]``: a linear map of each patch token.

    The latent must be dense (every patch has a token: a ``dense: true`` encoder). A sparse latent has no
    token for a hidden patch, and a linear head has no context to fill it in: use a decoder with mask
    tokens (``mae``) there. Initialisation as the official code: weights truncated normal (std 0.02, cut at
    one std), bias zero.
    """

    def __init__(self, in_dim: int, grid: Size2, out_dim: int, num_prefix_tokens: int = 1, init_std: float = 0.02):
        super().__init__()
        self.grid = to_2tuple(grid)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = num_prefix_tokens
        self.lm_head = nn.Linear(in_dim, out_dim)
        nn.init.trunc_normal_(self.lm_head.weight, std=init_std, a=-init_std, b=init_std)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = latent[:, self.num_prefix_tokens:]  # [B, N, in_dim]
        if tokens.shape[1] != self.num_patches:
            raise ValueError(f"d2v_linear needs a dense latent with a token for each of the {self.num_patches} "
                             f"patches, got {tokens.shape[1]} (a sparse encoder? set encoder.dense=true)")
        return self.lm_head(tokens)  # [B, N, out_dim]
