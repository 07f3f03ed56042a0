"""The per-block outputs of an encoder on the full image, which data2vec averages into its targets.

The core :class:`maskkit.Encoder` interface offers ``forward_features`` (the final, normalized output) only.
Until it grows a public ``forward_block_outputs(images) -> list[[B, P + N, D]]``, this module gets the block
outputs from the public surface that every timm-style encoder has:

* an encoder that defines ``forward_block_outputs`` is asked directly (the method proposed for the core);
* otherwise forward hooks are put on the last ``k`` modules of ``encoder.blocks`` (timm's attribute name,
  which the built-in ``TimmViTEncoder`` keeps) for one call of ``encoder.forward_features(images)``, and
  removed afterwards.

Coupling: the fallback assumes ``encoder.blocks`` is a sequence of modules that ``forward_features`` runs
once each, in order, on the full token sequence ``[B, P + N, D]`` (prefix tokens first), and that each
returns that tensor. It wastes the final norm of ``forward_features`` (cheap), and the per-call hooks do
not suit ``torch.compile`` of the teacher (the core method would).
"""

from __future__ import annotations

import torch
from torch import nn

from maskkit import Encoder


def encoder_depth(encoder: Encoder) -> int | None:
    """How many blocks ``encoder`` has (``len(encoder.blocks)``), or None when it has no ``blocks``."""
    blocks = getattr(encoder, "blocks", None)
    if isinstance(blocks, nn.Module) and hasattr(blocks, "__len__"):
        return len(blocks)
    return None


def block_outputs(encoder: Encoder, images: torch.Tensor, top_k: int) -> list[torch.Tensor]:
    """Outputs of the last ``top_k`` blocks of ``encoder`` on ``images [B, C, H, W]`` (nothing masked).

    Returns ``top_k`` tensors ``[B, P + N, D]`` in block order (the last block last), prefix tokens first.
    """
    direct = getattr(encoder, "forward_block_outputs", None)
    if callable(direct):
        outputs = list(direct(images))
        if len(outputs) < top_k:
            raise RuntimeError(f"{type(encoder).__name__}.forward_block_outputs returned {len(outputs)} blocks, "
                               f"fewer than top_k={top_k}")
        return outputs[len(outputs) - top_k:]
    depth = encoder_depth(encoder)
    if depth is None:
        raise TypeError(f"{type(encoder).__name__} has neither forward_block_outputs nor a 'blocks' list")
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"block {type(module).__name__} returned {type(output).__name__}, expected a tensor")
        captured.append(output)

    handles = [encoder.blocks[i].register_forward_hook(keep) for i in range(depth - top_k, depth)]
    try:
        encoder.forward_features(images)
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != top_k:
        raise RuntimeError(f"{type(encoder).__name__}.forward_features ran the last {top_k} blocks "
                           f"{len(captured)} times in all; expected once each")
    return captured
