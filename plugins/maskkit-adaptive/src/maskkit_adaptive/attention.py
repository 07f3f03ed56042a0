"""The [CLS] attention of an encoder's last block on the full image: what AttMask ranks patches by.

The core :class:`maskkit.Encoder` interface has no method returning attention maps. Until it grows one (say
``forward_attention(images) -> [B, heads, P + N, P + N]`` of the last block), this module gets the last
block's [CLS] attention from the public structure every timm ViT has and the built-in ``TimmViTEncoder``
keeps: ``encoder.blocks[-1].attn`` with ``qkv``, ``num_heads``, ``scale``, ``q_norm`` and ``k_norm``. A forward
hook records that module's input during one ``encoder.forward_features(images)`` call (removed afterwards);
the [CLS] row of the softmax attention is then recomputed from it: one ``[B, T, 3D]`` projection, much less
than the forward itself. timm's fused attention never materializes the weights, which is why they are
recomputed rather than read.
"""

from __future__ import annotations

import torch
from torch import nn

from maskkit import Encoder


def last_block_attention_module(encoder: Encoder) -> nn.Module:
    """``encoder.blocks[-1].attn``, checked to look like timm's ``Attention`` (``qkv`` and ``num_heads``)."""
    blocks = getattr(encoder, "blocks", None)
    if not isinstance(blocks, nn.Module) or not hasattr(blocks, "__len__") or len(blocks) == 0:
        raise TypeError(f"{type(encoder).__name__} has no 'blocks' list; attention masking needs a timm-style ViT")
    attn = getattr(blocks[-1], "attn", None)
    if attn is None or not isinstance(getattr(attn, "qkv", None), nn.Module) or not hasattr(attn, "num_heads"):
        raise TypeError(f"the last block of {type(encoder).__name__} has no timm-style 'attn' (qkv, num_heads)")
    if encoder.num_prefix_tokens < 1:
        raise TypeError(f"{type(encoder).__name__} has no [CLS] token (num_prefix_tokens=0); AttMask ranks patches "
                        "by the [CLS] attention")
    return attn


@torch.no_grad()
def cls_attention(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """``images [B, C, H, W] -> [B, N]``: the [CLS] token's attention to each patch in the last block,
    averaged over heads (each row sums to at most 1: the prefix tokens take the rest), computed on the whole
    image without gradients, in float32."""
    attn = last_block_attention_module(encoder)
    captured: list[torch.Tensor] = []
    handle = attn.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        encoder.forward_features(images)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the last attention block ran {len(captured)} times in one forward_features; expected once")
    x = captured[0]  # [B, T, D], T = P + N, the normed input of the last attention
    b, t, _ = x.shape
    heads = int(attn.num_heads)
    qkv = attn.qkv(x).reshape(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, heads, T, hd]
    q, k = qkv[0], qkv[1]
    q = getattr(attn, "q_norm", nn.Identity())(q)
    k = getattr(attn, "k_norm", nn.Identity())(k)
    scale = float(getattr(attn, "scale", q.shape[-1] ** -0.5))
    logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)  # [B, heads, 1, T]
    weights = logits.softmax(dim=-1)[:, :, 0]  # [B, heads, T]
    return weights[:, :, encoder.num_prefix_tokens:].mean(dim=1)  # [B, N]
