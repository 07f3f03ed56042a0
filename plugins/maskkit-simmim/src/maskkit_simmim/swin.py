"""A timm Swin Transformer as a dense SimMIM encoder: mask token after the patch embedding, all tokens encoded.

Follows ``SwinTransformerForSimMIM`` of the official SimMIM code: ``x = patch_embed(images)`` (conv 4x4 +
LayerNorm, NHWC in timm), hidden positions replaced by a learned ``mask_token`` (trunc-normal, std 0.02), then
every stage and the final norm. The mask lives on the final feature grid (stride 32 for the 4-stage Swin, so
one mask patch is 32x32 pixels as in the paper) and is upsampled to the stem grid before the replacement.

The parameter names are timm's (``patch_embed``, ``layers``, ``norm``) plus ``mask_token``, so the encoder's
state dict without ``mask_token`` loads into ``timm.create_model(name, num_classes=0, ...)`` with
``strict=True``: a pre-trained encoder is exported to timm as it is.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from maskkit.errors import ConfigError
from maskkit.interfaces import Encoder
from maskkit_simmim.stem_mask import check_img_size, create_backbone, stem_mask


class SimMIMSwinEncoder(Encoder):
    """Dense Swin encoder: ``images [B, C, H, W]``, ``mask [B, N]`` -> final-stage tokens ``[B, N, D]``.

    ``N = (H / s) * (W / s)`` with ``s`` the total stride (``stem_patch_size * 2 ** (stages - 1)``, 32 for
    every timm Swin); ``grid``/``patch_size`` describe that prediction grid, ``D`` is the final stage width.
    No prefix tokens. ``img_size`` must be a multiple of ``s``; choose ``window_size`` so that each stage's
    resolution is a multiple of it (SimMIM: 192 px with window 6, or 224 px with window 7).

    ``model_name`` is a timm Swin (``swin_tiny_patch4_window7_224``...); ``stem_patch_size`` overrides timm's
    ``patch_size`` (the stem's; this encoder's ``patch_size`` is the prediction patch). Further keyword
    arguments (``embed_dim``, ``depths``, ``num_heads``, ``drop_path_rate``...) go to ``timm.create_model``.
    Note that timm's Swin defaults to ``drop_path_rate=0.1``; SimMIM pre-trains Swin-B with 0.0.
    """

    PRETRAINING_ONLY = ("mask_token",)  # SimMIM's mask token: the timm backbone has none

    def __init__(
        self,
        model_name: str,
        img_size: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        window_size: int | None = None,
        stem_patch_size: int | None = None,
        **timm_kwargs: Any,
    ):
        super().__init__()
        options = dict(timm_kwargs)
        if img_size is not None:
            options["img_size"] = img_size
        if window_size is not None:
            options["window_size"] = window_size
        swin = create_backbone(model_name, in_chans, stem_patch_size, options)
        stem_patch = swin.patch_embed.patch_size
        if stem_patch[0] != stem_patch[1]:
            raise ConfigError("stem_patch_size", f"expected a square stem patch, got {tuple(stem_patch)}")
        stride = int(swin.feature_info[-1]["reduction"])
        self.model_name = model_name
        self.sparse = False
        self.num_prefix_tokens = 0
        self.in_chans = in_chans
        self.img_size = check_img_size(tuple(swin.patch_embed.img_size), stride)
        self.patch_size = (stride, stride)
        self.grid = (self.img_size[0] // stride, self.img_size[1] // stride)
        self.stem_patch_size = int(stem_patch[0])
        self.mask_scale = stride // self.stem_patch_size  # stem tokens per mask patch, along each axis
        self.embed_dim = int(swin.num_features)
        # timm's attribute names at the top level: the state dict is timm's (plus mask_token).
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self.norm = swin.norm
        self.mask_token = nn.Parameter(torch.zeros(1, 1, swin.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """The mask token and Swin's relative position bias tables (as timm and SimMIM)."""
        names = {"mask_token"}
        names |= {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}
        return names

    def masked_stem(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stem tokens with the hidden ones replaced: ``[B, C, H, W] -> [B, H / p, W / p, C0]`` (NHWC).

        ``p`` is the stem patch; every stem token under a hidden cell of ``mask [B, N]`` is ``mask_token``.
        """
        x = self.patch_embed(images)  # [B, H', W', C0]
        hidden = stem_mask(mask, self.grid, self.mask_scale)  # [B, H', W']
        token = self.mask_token.to(x.dtype).reshape(1, 1, 1, -1)
        return torch.where(hidden[..., None], token, x)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Stem tokens ``[B, H', W', C0]`` -> normalized final tokens ``[B, N, D]`` (row-major)."""
        x = self.layers(x)  # [B, h, w, D]
        x = self.norm(x)
        return x.flatten(1, 2)

    def forward(self, images, mask, *, num_visible=None):
        return self._trunk(self.masked_stem(images, mask))

    def forward_features(self, images):
        return self._trunk(self.patch_embed(images))

    def extra_repr(self) -> str:
        return (f"{self.model_name}, img_size={self.img_size}, stem_patch={self.stem_patch_size}, "
                f"prediction patch={self.patch_size}, grid={self.grid}, dense")


def swin_factories() -> dict[str, Any]:
    """``{simmim_<timm swin name>: factory}`` for timm's 4-px-stem Swin family (``swin_*_patch4_*``)."""
    return {f"simmim_{name}": partial(SimMIMSwinEncoder, name) for name in timm.list_models("swin_*_patch4_*")}
