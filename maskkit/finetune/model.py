"""The fine-tuning model: timm's own VisionTransformer classifier, built with the pretrained encoder's
architecture, with the pretrained encoder weights loaded into it.

Using timm's classifier (rather than a maskkit wrapper) gives MAE's fine-tuning head for free
(``global_pool="avg"``: mean of the patch tokens, then ``fc_norm``, a fresh LayerNorm, and the encoder's last
norm dropped), drop path, ``group_matcher`` for layer-wise learning-rate decay, and state-dict keys that are
timm's and the official MAE fine-tuned checkpoints' (``blocks.0.attn.qkv.weight``, ``fc_norm.weight``,
``head.weight``): a fine-tuned maskkit checkpoint's ``model`` loads into ``timm.create_model(...)`` as it is.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping

import timm
import torch
from torch import nn

from maskkit.builtin.vit import TimmViTEncoder
from maskkit.errors import CheckpointError, ConfigError, expected

HEAD_INIT_STD = 2e-5  # the official MAE fine-tuning initialises the new head with trunc_normal(std=2e-5)
# encoder-section arguments of pretraining that fine-tuning sets itself: the stochastic depth rate is the
# fine-tuning recipe's ``finetune.drop_path`` (MAE pretrains without drop path and fine-tunes with it)
PRETRAINING_REGULARISATION = ("drop_path_rate",)


def timm_classifier_arguments(encoder_spec: Mapping[str, Any]) -> tuple[str, dict]:
    """``(timm model name, timm.create_model keyword arguments)`` of a pretraining recipe's ``encoder`` section
    (``{name: vit_..., img_size: 28, ...}``): maskkit's own arguments (``sincos_pos_embed``...) are dropped, and
    so is the pretraining ``drop_path_rate`` (:data:`PRETRAINING_REGULARISATION`; ``finetune.drop_path`` sets
    the classifier's)."""
    spec = dict(encoder_spec)
    name = spec.pop("name", None)
    if not isinstance(name, str) or name not in timm.list_models("vit_*"):
        raise ConfigError("encoder.name", expected("a timm ViT encoder (fine-tuning builds timm's ViT classifier)",
                                                   name))
    left_out = (*TimmViTEncoder.MASKKIT_ARGUMENTS, *PRETRAINING_REGULARISATION)
    kwargs = {k: val for k, val in spec.items() if k not in left_out}
    eps = spec.get("norm_eps", 1e-6)
    if eps != 1e-6:  # as TimmViTEncoder does (timm's default LayerNorm eps is 1e-6); fc_norm gets it too
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(eps))
    return name, kwargs


def check_global_pool(encoder_spec: Mapping[str, Any], global_pool: str) -> None:
    """Refuse (:class:`ConfigError` on ``finetune.global_pool``) a head the encoder cannot feed: ``token``
    classifies the class token, which an encoder section with ``class_token: false`` has not."""
    if global_pool == "token" and not encoder_spec.get("class_token", True):
        raise ConfigError("finetune.global_pool", "token classifies the class token, which the pretrained encoder "
                          "has not (class_token: false in its encoder section); use avg (the mean of the patch "
                          "tokens, MAE's head)")


def build_classifier(encoder_spec: Mapping[str, Any], num_classes: int, *, drop_path: float = 0.0,
                     global_pool: str = "avg") -> nn.Module:
    """A timm ViT classifier ``images [B, C, H, W] -> logits [B, num_classes]`` with the architecture of
    ``encoder_spec`` (random init; nothing downloads). The head starts near zero, as MAE's."""
    check_global_pool(encoder_spec, global_pool)
    name, kwargs = timm_classifier_arguments(encoder_spec)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, global_pool=global_pool,
                                  drop_path_rate=drop_path, **kwargs)
    except TypeError as exc:
        raise ConfigError("encoder", f"timm rejected the arguments of {name}: {exc}") from None
    nn.init.trunc_normal_(model.head.weight, std=HEAD_INIT_STD)
    nn.init.zeros_(model.head.bias)
    return model


HEAD_PREFIXES = ("head.", "fc_norm.")


def encoder_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of ``model`` that a pretrained encoder provides (everything but the new head)."""
    return [k for k in model.state_dict() if not k.startswith(HEAD_PREFIXES)]


def load_pretrained_encoder(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> int:
    """Copy the encoder weights of ``state_dict`` (official MAE / timm names, as a maskkit checkpoint's
    ``model``) into ``model``; the decoder's and the mask tokens are ignored, the head stays fresh.
    Returns the number of tensors loaded; a missing or misshapen encoder tensor is a one-line error."""
    wanted = encoder_keys(model)
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: no pretrained weights for {len(missing)} encoder tensor(s) of the "
                              f"classifier, e.g. {missing[:3]}")
    own = model.state_dict()
    for key in wanted:
        if tuple(state_dict[key].shape) != tuple(own[key].shape):
            raise CheckpointError(f"{source}: {key} has shape {list(state_dict[key].shape)}, the classifier "
                                  f"needs {list(own[key].shape)}")
    model.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
    return len(wanted)


def freeze_for_partial_finetuning(model: nn.Module, tune_blocks: int) -> None:
    """MAE's partial fine-tuning (Figure 9): train the last ``tune_blocks`` blocks, the final norm(s) and the
    head; freeze the patch embedding, tokens, position embedding and the earlier blocks."""
    depth = len(model.blocks)
    if tune_blocks > depth:
        raise ConfigError("finetune.tune_blocks", expected(f"at most the encoder depth {depth}", tune_blocks))
    model.requires_grad_(False)
    for block in list(model.blocks)[depth - tune_blocks:]:
        block.requires_grad_(True)
    for name in ("norm", "fc_norm", "head"):
        module = getattr(model, name, None)
        if module is not None:
            module.requires_grad_(True)


# parameters before the first block: layer 0 with the official ``cls_token``, ``pos_embed`` and ``patch_embed``
# (``reg_token`` and ``norm_pre`` are timm-only stem parts, which MAE's ViTs do not have)
_EMBEDDING_NAMES = ("cls_token", "pos_embed", "reg_token")
_EMBEDDING_PREFIXES = ("patch_embed.", "norm_pre.")


def layer_id(name: str, depth: int) -> int:
    """The layer of parameter ``name`` in the official MAE's ``util/lr_decay.py`` (``get_layer_id_for_vit``):
    the tokens, position and patch embedding 0, ``blocks.i.*`` ``i + 1``, everything else (the final ``norm``,
    ``fc_norm``, the head) ``depth + 1``."""
    if name in _EMBEDDING_NAMES or name.startswith(_EMBEDDING_PREFIXES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def layer_decay_groups(model: nn.Module, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with layer-wise learning-rate decay, as the official MAE's ``param_groups_lrd``.

    Layer ids are :func:`layer_id`'s; a group's ``lr_scale`` is ``layer_decay ** (depth + 1 - layer_id)``, so the
    head and the final norm (with either head: ``global_pool`` ``avg`` or ``token``) get 1, the last block
    ``layer_decay``, the embeddings ``layer_decay ** (depth + 1)``. (timm's ``param_groups_layer_decay`` differs:
    its ViT ``group_matcher`` puts the final ``norm`` with the last block.) No weight decay on 1-D parameters and
    the model's ``no_weight_decay()`` names. Frozen parameters are left out. Groups come in the order of their
    first parameter in ``named_parameters()``."""
    depth = len(model.blocks)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name in skip)
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, decay), {"lr_scale": layer_decay ** (depth + 1 - layer),
                                                   "weight_decay": weight_decay if decay else 0.0, "params": []})
        group["params"].append(param)
    return list(groups.values())
