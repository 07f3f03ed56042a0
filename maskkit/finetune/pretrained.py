"""Where fine-tuning takes its starting weights: :func:`read_pretrained`, one function for every source.

``read_pretrained(path) -> (recipe_tree, state_dict)``: the pretraining recipe (its ``encoder`` section
describes the architecture; its ``data`` section is the fine-tuning default) and the weights under official
MAE / timm names (``blocks.0.attn.qkv.weight``...); :func:`load_pretrained` gives them with the reader's notes
(what it had to assume, such as an official checkpoint's head counts), which ``maskkit finetune`` prints.
Sources: a maskkit pretraining checkpoint, a transformers ViTMAE folder and an official MAE checkpoint
(``{"model": ...}``), read by :mod:`maskkit.interop`, and a maskkit fine-tuning checkpoint (to fine-tune
again), read here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maskkit.engine.checkpoint import load_training_checkpoint
from maskkit.interop import Pretrained
from maskkit.interop import load_pretrained as load_any_pretrained


def read_finetuned_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """``(recipe_tree, state_dict)`` of a maskkit fine-tuning checkpoint: its encoder section (and data), and
    the classifier's weights (the new head is left out when they are loaded into another classifier)."""
    state = load_training_checkpoint(path)
    recipe = state.get("recipe") or {}
    return {"encoder": state["encoder"], **({"data": recipe["data"]} if "data" in recipe else {})}, state["model"]


def is_finetuned_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a maskkit fine-tuning checkpoint (a memory-mapped ``weights_only`` peek: cheap even
    for a large file; ``False`` for anything unreadable, which the readers then report)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file, or not one at all: for interop's readers to explain
        return False
    return isinstance(obj, dict) and obj.get("format") == "maskkit" and obj.get("kind") == "finetune"


def load_pretrained(path: str | Path, registry=None) -> Pretrained:
    """The pretrained weights at ``path`` as a :class:`~maskkit.interop.Pretrained`: ``recipe`` (tree),
    ``state_dict``, ``source`` and ``notes`` (what the reader assumed; none for a maskkit checkpoint).
    ``registry`` holds the recipes an official checkpoint's shapes are matched against."""
    if is_finetuned_checkpoint(path):
        tree, state = read_finetuned_checkpoint(path)
        return Pretrained(tree, state, "maskkit")
    return load_any_pretrained(path, registry=registry)


def read_pretrained(path: str | Path) -> tuple[dict, dict]:
    """``(recipe_tree, state_dict)`` of the pretrained weights at ``path`` (see the module docstring)."""
    loaded = load_pretrained(path)
    return loaded.recipe, loaded.state_dict
