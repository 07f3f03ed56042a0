"""A timm ConvNeXt as a dense SimMIM encoder: mask token in place of the hidden stem outputs (NCHW).

SimMIM's recipe carried over to a ConvNet. ConvNeXt's patchify stem (a 4x4 stride-4 convolution + LayerNorm)
sees each pixel in exactly one stem position, so replacing the hidden stem outputs by a learned token removes
every hidden pixel from the network, exactly like the mask token after Swin's patch embedding: nothing of a
hidden patch reaches any output. The stages then run densely over visible and mask tokens alike. Variants with
an overlapping stem (timm's ``*_ols``) would leak hidden pixels into visible positions and are refused.

Parameter names are timm's (``stem``, ``stages``, ``norm_pre``, ``head.norm``) plus ``mask_token``: the state
dict without ``mask_token`` loads into ``timm.create_model(name, num_classes=0, ...)`` with ``strict=True``
(except ``convnext_large_mlp``, whose head MLP is not part of the encoder).
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


def _patchify_stem_size(stem: nn.Module) -> int | None:
    """The patch of a non-overlapping stem (first layer a conv with kernel == stride, no padding), else None."""
    first = stem[0] if isinstance(stem, nn.Sequential) else stem
    if not isinstance(first, nn.Conv2d):
        return None
    k, s, p = first.kernel_size, first.stride, first.padding
    if k != s or k[0] != k[1] or p != (0, 0):
        return None
    return int(k[0])


def _stages_stride(stages: nn.Module) -> int:
    """How much the stages downsample (their strided convs; 8 for ConvNeXt's 3 downsampling layers).

    Read from the layers (timm adds a stride-2 first stage when the stem patch is 2, to keep stride 32).
    """
    stride = 1
    for module in stages.modules():
        if isinstance(module, nn.Conv2d):
            stride *= int(module.stride[0])
    return stride


class SimMIMConvNeXtEncoder(Encoder):
    """Dense ConvNeXt encoder: ``images [B, C, H, W]``, ``mask [B, N]`` -> final-stage tokens ``[B, N, D]``.

    ``N = (H / 32) * (W / 32)`` for the 4-stage ConvNeXt (total stride 32); ``grid``/``patch_size`` describe
    that prediction grid; ``D`` is the final stage width; no prefix tokens. Tokens are the final feature map
    after timm's final norm (``norm_pre`` and the head's per-position LayerNorm), flattened row-major.

    ``model_name`` is a timm ConvNeXt (``convnext_atto``... ``convnextv2_*``); further keyword arguments
    (``depths``, ``dims``, ``drop_path_rate``...) go to ``timm.create_model``; ``stem_patch_size`` sets timm's
    ``patch_size`` (the stem's).
    """

    PRETRAINING_ONLY = ("mask_token",)  # SimMIM's mask token: the timm backbone has none

    def __init__(
        self,
        model_name: str,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        stem_patch_size: int | None = None,
        **timm_kwargs: Any,
    ):
        super().__init__()
        net = create_backbone(model_name, in_chans, stem_patch_size, timm_kwargs)
        stem_patch = _patchify_stem_size(net.stem)
        if stem_patch is None:
            raise ConfigError("name", f"{model_name} has an overlapping stem ({net.stem[0]}), which would let hidden "
                                      "pixels reach visible positions; use a patchify-stem ConvNeXt")
        stride = stem_patch * _stages_stride(net.stages)
        self.model_name = model_name
        self.sparse = False
        self.num_prefix_tokens = 0
        self.in_chans = in_chans
        self.img_size = check_img_size(img_size, stride)
        self.patch_size = (stride, stride)
        self.grid = (self.img_size[0] // stride, self.img_size[1] // stride)
        self.stem_patch_size = stem_patch
        self.mask_scale = stride // stem_patch
        self.embed_dim = int(net.num_features)
        stem_dim = int(net.feature_info[0]["num_chs"])
        # timm's attribute names at the top level: the state dict is timm's (plus mask_token).
        self.stem = net.stem
        self.stages = net.stages
        self.norm_pre = net.norm_pre
        # Only the head's per-position norm is used (``head.norm`` in timm; absent for *_hnf, whose final norm is
        # norm_pre). A ModuleDict keeps timm's key names without carrying unused head layers (DDP dislikes them).
        head_norm = getattr(net.head, "norm", None)
        self.head = nn.ModuleDict({"norm": head_norm} if isinstance(head_norm, nn.Module) else {})
        self.mask_token = nn.Parameter(torch.zeros(1, stem_dim, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def masked_stem(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stem output with the hidden positions replaced: ``[B, C, H, W] -> [B, C0, H / p, W / p]`` (NCHW)."""
        x = self.stem(images)  # [B, C0, H', W']
        hidden = stem_mask(mask, self.grid, self.mask_scale)  # [B, H', W']
        return torch.where(hidden[:, None], self.mask_token.to(x.dtype), x)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Stem output ``[B, C0, H', W']`` -> normalized final tokens ``[B, N, D]`` (row-major)."""
        x = self.stages(x)  # [B, D, h, w]
        x = self.norm_pre(x)
        if "norm" in self.head:
            x = self.head["norm"](x)  # LayerNorm2d: per position, over channels
        return x.flatten(2).transpose(1, 2)

    def forward(self, images, mask, *, num_visible=None):
        return self._trunk(self.masked_stem(images, mask))

    def forward_features(self, images):
        return self._trunk(self.stem(images))

    def extra_repr(self) -> str:
        return (f"{self.model_name}, img_size={self.img_size}, stem_patch={self.stem_patch_size}, "
                f"prediction patch={self.patch_size}, grid={self.grid}, dense")


def convnext_factories() -> dict[str, Any]:
    """``{simmim_<timm convnext name>: factory}`` for timm's ConvNeXt (v1 and v2) with a patchify stem.

    The ``*_ols`` variants (overlapping stem) are left out: see the module docstring.
    """
    names = [n for n in timm.list_models(["convnext_*", "convnextv2_*"]) if "_ols" not in n]
    return {f"simmim_{name}": partial(SimMIMConvNeXtEncoder, name) for name in names}
