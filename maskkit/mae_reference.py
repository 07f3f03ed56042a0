"""MAE in one page: the whole algorithm of the official ``models_mae.py`` in one module, to read first.

maskkit splits MAE into five swappable components spread over several files (masker, encoder, decoder,
target, loss: see ``maskkit/builtin/``). This module is the same computation written straight through, in
the order of the paper, so a reader can see the algorithm before its plug points:

1. :meth:`~OfficialStyleMAE.patchify` and the patch embedding: ``[B, C, H, W] -> [B, N, D]`` plus fixed
   position embeddings (maskkit: the ``vit_*`` encoders);
2. :meth:`~OfficialStyleMAE.random_masking`: sort per-sample uniform noise, keep the ``(1 - ratio) N``
   smallest (``ids_shuffle`` / ``ids_restore``) (maskkit: the ``random`` masker, ``maskkit.masking``);
3. :meth:`~OfficialStyleMAE.forward_encoder`: the ViT on the cls token and the kept patches only (the sparse
   encoder);
4. :meth:`~OfficialStyleMAE.forward_decoder`: append mask tokens, un-shuffle with ``ids_restore``, a small
   ViT, one prediction per patch (the ``mae`` decoder);
5. :meth:`~OfficialStyleMAE.forward_loss`: per-patch normalised pixels (``norm_pixels``) and the MSE over the
   hidden patches only (``mse``).

Its parameter names are the official ones, which are also maskkit's MAE state-dict keys, so
:meth:`OfficialStyleMAE.like` copies a maskkit model's weights into it with ``strict=True``;
``tests/test_mae_reference.py`` checks that both compute the same loss from the same weights, images and noise,
so this page stays true to the components. The benchmark (``maskkit bench``) measures maskkit against it.

It is for reading and measuring, not for training: maskkit's :class:`~maskkit.model.MaskedModel` is the real
thing.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


class OfficialStyleMAE(nn.Module):
    """``imgs [B, C, H, W] -> (loss, pred [B, N, p*p*C], mask [B, N])``, mask 1 = hidden."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = True,
                 mask_ratio: float = 0.75):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.patch_size, self.in_chans = patch_size, in_chans
        self.norm_pix_loss, self.mask_ratio = norm_pix_loss, mask_ratio

    @classmethod
    def like(cls, model: nn.Module) -> "OfficialStyleMAE":
        """The reference with the sizes of maskkit's MAE ``model`` (square images and patches, a one-token
        prefix, an MAE decoder, a pixel target, a random masker) and a copy of its weights."""
        enc, dec = model.encoder, model.decoder
        if enc.img_size[0] != enc.img_size[1] or enc.patch_size[0] != enc.patch_size[1]:
            raise ValueError("the official-style reference needs square images and patches")
        enc_block, dec_block = enc.blocks[0], dec.decoder_blocks[0]
        reference = cls(
            img_size=enc.img_size[0], patch_size=enc.patch_size[0], in_chans=enc.in_chans,
            embed_dim=enc.embed_dim, depth=len(enc.blocks), num_heads=enc_block.attn.num_heads,
            decoder_embed_dim=dec.decoder_embed.out_features, decoder_depth=len(dec.decoder_blocks),
            decoder_num_heads=dec_block.attn.num_heads,
            mlp_ratio=enc_block.mlp.fc1.out_features / enc.embed_dim,
            norm_pix_loss=bool(getattr(model.target, "normalize", True)), mask_ratio=float(model.masker.ratio))
        reference.load_state_dict(model.state_dict(), strict=True)
        return reference

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, N, p*p*C]``, patches row-major, each patch (row, column, channel)."""
        b, c, h, w = imgs.shape
        p = self.patch_size
        x = imgs.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        """Keep the ``(1 - mask_ratio) N`` tokens with the smallest noise. ``x [B, N, D] -> x_kept [B, K, D]``,
        ``mask [B, N]`` (1 = hidden), ``ids_restore [B, N]``."""
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        return x_kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # [B, N, D]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)  # [B, K, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # [B, 1 + K, D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)  # [B, 1 + K, E]
        b, n = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # kept tokens first, in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # un-shuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed  # [B, 1 + N, E]
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # [B, N, p*p*C]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # [B, N], per patch
        return (loss * mask).sum() / mask.sum()  # mean over hidden patches

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """``noise [B, N]`` fixes the masking (drawn uniformly from ``generator`` when not given)."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.patch_embed.num_patches, device=imgs.device,
                               generator=generator)
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask
