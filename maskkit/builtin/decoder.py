"""MAE's decoder: mask tokens in the hidden places, fixed 2-D sin-cos positions, a few transformer blocks."""

from __future__ import annotations

import torch
from torch import nn

from maskkit.interfaces import Decoder
from maskkit.layers import Block, mae_init_
from maskkit.patches import Size2, sincos_pos_embed_2d, to_2tuple, visible_indices


class MAEDecoder(Decoder):
    """The official MAE decoder (defaults: 8 blocks, width 512, 16 heads, layer-norm eps 1e-6).

    Parameter names are the official ones (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``,
    ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``). Given a sparse latent it scatters the visible
    tokens back to their patch positions and fills the rest with the mask token; a dense latent (all ``N``
    patches) is used as it is.
    """

    def __init__(
        self,
        in_dim: int,
        grid: Size2,
        out_dim: int,
        num_prefix_tokens: int = 1,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.grid = to_2tuple(grid)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_prefix_tokens = num_prefix_tokens
        self.decoder_embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d(embed_dim, self.grid, num_prefix_tokens)[None]
        self.decoder_pos_embed = nn.Parameter(pos, requires_grad=False)  # [1, P + N, E], fixed
        self.decoder_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, eps=norm_eps)
                                             for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(embed_dim, out_dim)
        self.apply(mae_init_)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

    def forward(self, latent, mask):
        x = self.decoder_embed(latent)  # [B, P + n, E]
        p = self.num_prefix_tokens
        prefix, tokens = x[:, :p], x[:, p:]
        b, n_in, e = tokens.shape
        if n_in != self.num_patches:  # sparse latent: put the visible tokens back in place
            ids_keep = visible_indices(mask, n_in)  # [B, n_vis]
            full = self.mask_token.to(tokens.dtype).expand(b, self.num_patches, e).clone()
            tokens = full.scatter(1, ids_keep[..., None].expand(-1, -1, e), tokens)  # [B, N, E]
        x = torch.cat([prefix, tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        # dropping the prefix before the per-token projection (the official code drops it after: same values)
        # makes the prediction a fresh tensor rather than a view, which FSDP2 needs to hook its backward
        return self.decoder_pred(x[:, p:])  # [B, N, out_dim]
