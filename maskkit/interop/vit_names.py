"""State-dict key names: the official MAE / timm ViT names (maskkit's) <-> transformers' ViT and ViTMAE names.

Pure renaming of tensors; nothing here imports transformers. transformers 4 and 5 name the transformer layers
differently; both are read, and :func:`official_to_transformers` writes either (``layout``)::

    official (timm)          transformers 5 (``v5``)              transformers 4 (``v4``)
    blocks.i                 layers.i                             encoder.layer.i
    blocks.i.attn.qkv        layers.i.attention.{q,k,v}_proj      encoder.layer.i.attention.attention.{query,key,value}
    blocks.i.attn.proj       layers.i.attention.o_proj            encoder.layer.i.attention.output.dense
    blocks.i.norm1 / norm2   layers.i.layernorm_before / _after   (same)
    blocks.i.mlp.fc1 / fc2   layers.i.mlp.fc1 / fc2               encoder.layer.i.intermediate.dense / output.dense
    decoder_blocks.i         decoder.decoder_layers.i (block names as the encoder's; transformers 5 saves
                             them as decoder.decoder_encoder.layer.i with the 4.x block names)

The encoder's keys carry the ``vit.`` prefix inside ``ViTMAEForPreTraining`` and ``ViTForImageClassification``
and none in ``ViTMAEModel`` / ``ViTModel``. The fused ``qkv`` projection is split into thirds in the order
query, key, value (timm's order).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from maskkit.errors import CheckpointError

LAYOUTS: dict[str, dict[str, str]] = {
    "v5": {"layers": "layers", "q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
           "o": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"},
    "v4": {"layers": "encoder.layer", "q": "attention.attention.query", "k": "attention.attention.key",
           "v": "attention.attention.value", "o": "attention.output.dense", "fc1": "intermediate.dense",
           "fc2": "output.dense"},
}

# official name -> transformers name, outside the blocks (encoder part without the "vit." prefix)
_ENCODER_FIXED = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_DECODER_FIXED = {
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    **{f"decoder_{part}.{p}": f"decoder.decoder_{part}.{p}" for part in ("embed", "norm", "pred")
       for p in ("weight", "bias")},
}
# official block parameter -> layout key (qkv is split, so it is handled apart)
_BLOCK_SIMPLE = {"attn.proj": "o", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
_BLOCK_NORMS = {"norm1": "layernorm_before", "norm2": "layernorm_after"}
# where transformers keeps the decoder blocks: 4.x and 5.x models; 5.x save_pretrained output
_DECODER_ROOTS = ("decoder.decoder_layers", "decoder.decoder_encoder.layer")


def layout_of(keys) -> str:
    """``"v5"`` or ``"v4"``: the naming of a live transformers model's state-dict keys (4.x: ``encoder.layer.i``)."""
    return "v4" if any(re.search(r"(^|\.)encoder\.layer\.\d+\.", k) for k in keys) else "v5"


def block_count(keys, prefix: str) -> int:
    """Number of transformer blocks ``prefix.0 ... prefix.(n-1)`` among ``keys``."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f"blocks under {prefix} are not numbered 0..n-1: {sorted(indices)[:8]}")
    return len(indices)


def official_to_transformers(state: Mapping[str, torch.Tensor], layout: str = "v5",
                             encoder_prefix: str = "vit.") -> dict[str, torch.Tensor]:
    """Official MAE / timm names -> transformers ViTMAE (or ViT) names.

    ``state`` holds an encoder and optionally MAE's decoder (``decoder_*``, ``mask_token``); every key must be
    known, else :class:`~maskkit.errors.CheckpointError`. Split ``qkv`` thirds are copies (safetensors refuses
    tensors sharing memory).
    """
    names = LAYOUTS[layout]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> None:
        out[dst] = state[src]
        used.add(src)

    for src, dst in _ENCODER_FIXED.items():
        if src in state:
            take(src, encoder_prefix + dst)
    for src, dst in _DECODER_FIXED.items():
        if src in state:
            take(src, dst)
    for src_root, dst_root in (("blocks", f"{encoder_prefix}{names['layers']}"),
                               ("decoder_blocks", "decoder.decoder_layers")):
        for i in range(block_count(state, src_root)):
            src, dst = f"{src_root}.{i}", f"{dst_root}.{i}"
            for p in ("weight", "bias"):
                qkv = state.get(f"{src}.attn.qkv.{p}")
                if qkv is not None:
                    for part, third in zip("qkv", qkv.chunk(3)):
                        out[f"{dst}.{names[part]}.{p}"] = third.clone()
                    used.add(f"{src}.attn.qkv.{p}")
                for official, key in _BLOCK_SIMPLE.items():
                    if f"{src}.{official}.{p}" in state:
                        take(f"{src}.{official}.{p}", f"{dst}.{names[key]}.{p}")
                for official, theirs in _BLOCK_NORMS.items():
                    if f"{src}.{official}.{p}" in state:
                        take(f"{src}.{official}.{p}", f"{dst}.{theirs}.{p}")
    unknown = sorted(set(state) - used)
    if unknown:
        raise CheckpointError(f"no transformers name for {unknown[:4]} (not a plain ViT / MAE state dict)")
    return out


def transformers_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ViTMAE / ViT names (4.x or 5.x, with or without the ``vit.`` prefix) -> official MAE names.

    Each block is read in either naming (transformers 5.x saves the 4.x names, and its decoder blocks as
    ``decoder.decoder_encoder.layer.i``). Keys of a classification head (``classifier.*``) or a pooler are
    refused like any unknown key, so nothing is dropped silently.
    """
    prefix = "vit." if any(k.startswith("vit.") for k in state) else ""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str) -> None:
        out[dst] = state[src]
        used.add(src)

    for official, theirs in _ENCODER_FIXED.items():
        if prefix + theirs in state:
            take(prefix + theirs, official)
    for official, theirs in _DECODER_FIXED.items():
        if theirs in state:
            take(theirs, official)
    encoder_roots = [prefix + names["layers"] for names in LAYOUTS.values()]
    for roots, dst_root in ((encoder_roots, "blocks"), (_DECODER_ROOTS, "decoder_blocks")):
        root = next((r for r in roots if block_count(state, r)), None)
        for i in range(block_count(state, root) if root else 0):
            src, dst = f"{root}.{i}", f"{dst_root}.{i}"
            for names, p in ((names, p) for names in LAYOUTS.values() for p in ("weight", "bias")):
                thirds = [f"{src}.{names[part]}.{p}" for part in "qkv"]
                if all(k in state for k in thirds):
                    out[f"{dst}.attn.qkv.{p}"] = torch.cat([state[k] for k in thirds])
                    used.update(thirds)
                for official, key in _BLOCK_SIMPLE.items():
                    if f"{src}.{names[key]}.{p}" in state:
                        take(f"{src}.{names[key]}.{p}", f"{dst}.{official}.{p}")
                for official, theirs in _BLOCK_NORMS.items():
                    if f"{src}.{theirs}.{p}" in state:
                        take(f"{src}.{theirs}.{p}", f"{dst}.{official}.{p}")
    unknown = sorted(set(state) - used)
    if unknown:
        raise CheckpointError(f"no maskkit name for the transformers keys {unknown[:4]}")
    return out
