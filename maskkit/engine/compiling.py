"""``train.compile`` and ``train.compile_scope``: whether ``torch.compile`` runs, and over which modules.

Two scopes, each compiling in place (``nn.Module.compile``, so state-dict names do not change):

* ``components`` (the default): each component of the model (encoder, decoder, target, loss; never the masker,
  which draws from generators, often data-dependently) compiled whole. Inductor sees a component as one graph
  and fuses across block boundaries, but the graph grows with depth and so does compile time (about 4 s a block
  on a 2-core CPU, ``benchmarks/compile_time.py``).
* ``blocks`` ("regional" compilation, PyTorch's recipe for models of repeated blocks): each transformer block
  (:func:`transformer_blocks`) compiled alone. Dynamo compiles one block and reuses the code for its twins, so
  compile time stays about the same at any depth; the glue between blocks (patch embedding, gathers, mask-token
  scatter, final norms, head, loss) runs eagerly.
"""

from __future__ import annotations

import torch
from torch import nn

SCOPES = ("components", "blocks")


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    """``train.compile``: ``auto`` compiles on CUDA (the sparse encoder's shapes are static, so compiled kernels
    pay there, most at small launch-bound batches) and runs eagerly elsewhere (compiling costs about a minute on
    a small CPU, longer than most CPU runs)."""
    return setting is True or (setting == "auto" and device.type == "cuda")


def _is_block_list(name: str, module: nn.Module) -> bool:
    attr = name.rpartition(".")[2]
    return isinstance(module, (nn.ModuleList, nn.Sequential)) and (
        attr.endswith("blocks") or attr in ("layer", "layers") or attr.endswith("_layers"))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``, in module order: the members of every ``ModuleList``/``Sequential``
    whose attribute name ends in ``blocks`` (timm's ``blocks``, the MAE decoder's ``decoder_blocks``) or is
    ``layer``, ``layers`` or ``*_layers`` (transformers' ViT encoder, ViTMAE's decoder), innermost lists only: a
    list holding such lists is one of stages (Swin's ``layers``, whose stages hold ``blocks``), not of blocks.
    The members of a plain ``ModuleList`` in such a list are taken one by one."""
    lists = [name for name, module in model.named_modules() if _is_block_list(name, module)]
    innermost = [name for name in lists
                 if not any(other.startswith(f"{name}.") for other in lists if other != name)]
    return [block for name in innermost for block in _members(model.get_submodule(name))]


def _members(blocks: nn.Module) -> list[nn.Module]:
    """The members of a list of blocks, those of a nested ``ModuleList`` (which has no forward of its own: timm's
    Twins keeps a list of lists) taken one by one."""
    return [block for child in blocks.children()
            for block in (_members(child) if type(child) is nn.ModuleList else [child])]


def compile_model(model: nn.Module, scope: str, *, skip: tuple[nn.Module, ...] = ()) -> list[nn.Module]:
    """``torch.compile`` in place the modules ``scope`` names (see the module docstring): ``model``'s children
    but ``skip`` (``components``), or their transformer blocks (``blocks``; a child without any stays eager).
    Returns the modules compiled."""
    if scope not in SCOPES:
        raise ValueError(f"compile scope {scope!r}: expected one of {', '.join(SCOPES)}")
    children = [c for c in model.children() if not any(c is s for s in skip)]
    targets = children if scope == "components" else [b for c in children for b in transformer_blocks(c)]
    for module in targets:
        module.compile()
    return targets
