"""Where fine-tuning takes its starting weights: :func:`read_pretrained`, one function for every source.

``read_pretrained(path) -> (recipe_tree, state_dict)``: the pretraining recipe (its ``encoder`` section
describes the architecture; its ``data`` section is the fine-tuning default) and the weights under official
MAE / timm names (``blocks.0.attn.qkv.weight``...). Sources: a maskkit pretraining checkpoint, a transformers
ViTMAE folder and an official MAE checkpoint (``{"model": ...}``), read by :mod:`maskkit.interop`, and a
maskkit fine-tuning checkpoint (to fine-tune again), read here.
"""

from __future__ import annotations

from pathlib import Path

from maskkit.engine.checkpoint import load_training_checkpoint
from maskkit.interop import read_pretrained as read_any_pretrained


def read_finetuned_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """``(recipe_tree, state_dict)`` of a maskkit fine-tuning checkpoint: its encoder section (and data), and
    the classifier's weights (the new head is left out when they are loaded into another classifier)."""
    state = load_training_checkpoint(path)
    recipe = state.get("recipe") or {}
    return {"encoder": state["encoder"], **({"data": recipe["data"]} if "data" in recipe else {})}, state["model"]


def read_pretrained(path: str | Path) -> tuple[dict, dict]:
    """``(recipe_tree, state_dict)`` of the pretrained weights at ``path`` (see the module docstring)."""
    tree, state = read_any_pretrained(path)
    if "finetune" in tree and "encoder" not in tree:  # a fine-tuning checkpoint's recipe
        return read_finetuned_checkpoint(path)
    return tree, state
