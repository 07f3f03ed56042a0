"""Where fine-tuning takes its starting weights: :func:`read_pretrained`, one function for every source.

``read_pretrained(path) -> (recipe_tree, state_dict)``: the pretraining recipe (its ``encoder`` section
describes the architecture; its ``data`` section is the fine-tuning default) and the weights under official
MAE / timm names (``blocks.0.attn.qkv.weight``...). This module reads maskkit checkpoints (pretraining ones,
and fine-tuning ones to fine-tune again).
"""

from __future__ import annotations

from pathlib import Path

from maskkit.engine.checkpoint import load_training_checkpoint
from maskkit.errors import CheckpointError


def read_maskkit_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """``(recipe_tree, state_dict)`` of a maskkit checkpoint (``weights_only`` load)."""
    state = load_training_checkpoint(path)
    if state.get("kind") == "finetune":  # a fine-tuned classifier: its encoder section and weights
        recipe = state.get("recipe") or {}
        return {"encoder": state["encoder"], **({"data": recipe["data"]} if "data" in recipe else {})}, state["model"]
    tree = state.get("recipe")
    if not isinstance(tree, dict) or not isinstance(tree.get("encoder"), dict):
        raise CheckpointError(f"{path}: the checkpoint holds no recipe with an encoder section")
    return tree, state["model"]


def read_pretrained(path: str | Path) -> tuple[dict, dict]:
    """``(recipe_tree, state_dict)`` of the checkpoint at ``path`` (see the module docstring)."""
    return read_maskkit_checkpoint(path)
