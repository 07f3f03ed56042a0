"""Fine-tuning recipes: the ``finetune`` section (:class:`FinetuneConfig`) and the recipe around it.

A fine-tuning recipe is a YAML file with the sections ``description``, ``seed``, ``data_seed``, ``data``,
``finetune`` and ``distributed``. The encoder is not in it: it comes from the pretrained checkpoint (its
recipe's ``encoder`` section), and so does ``data`` when the fine-tuning recipe has none. Errors name the file
and the key, like every recipe error (``finetune_quickstart.yaml: finetune.layer_decay: expected a number in
(0, 1], got 1.5``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import attrs

from maskkit import _validators as v
from maskkit.errors import ConfigError, did_you_mean, expected
from maskkit.finetune.auto_augment import check_auto_augment
from maskkit.recipe import (
    DATA_ENGINE_KEYS,
    Recipe,
    _section_config,
    apply_overrides,
    find_recipe_file,
    parse_yaml,
    read_text_file,
)

SECTIONS = ("description", "seed", "data_seed", "data", "finetune", "distributed")


def _unit_interval(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(attribute.name, expected("a number in (0, 1]", value))


def _ema_decay(inst, attribute, value):
    """An EMA decay in (0, 1): at 1 the average never leaves the weights it started from."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(attribute.name, expected("a number in (0, 1)", value))


def _probability(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(attribute.name, expected("a probability in [0, 1]", value))


def _smoothing(inst, attribute, value):
    """Label smoothing in [0, 1): at 1 every target is uniform, nothing is learnt (and timm's
    ``LabelSmoothingCrossEntropy`` asserts ``smoothing < 1``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(attribute.name, expected("a number in [0, 1)", value))


def _minmax(inst, attribute, value):
    if value is not None and not (v.number_pair(value) and 0 < value[0] < value[1] <= 1):
        raise ConfigError(attribute.name, expected("null or [min, max] with 0 < min < max <= 1", v.shown(value)))


def _betas(inst, attribute, value):
    v.betas(inst, attribute, v.shown(value))


@attrs.frozen(kw_only=True)
class FinetuneConfig:
    """The ``finetune`` section. Defaults are the official MAE's ViT-B fine-tuning recipe (FINETUNE.md: 100 epochs,
    32 images per GPU on 32 GPUs = 1024, ``--blr 5e-4 --layer_decay 0.65 --weight_decay 0.05 --drop_path 0.1
    --mixup 0.8 --cutmix 1.0 --reprob 0.25``), and ``main_finetune.py``'s defaults for everything that recipe
    does not set (5 warmup epochs, ``min_lr`` 1e-6, no gradient clipping, mean-pool head, Mixup probability 1 and
    switch 0.5, label smoothing 0.1, ``rand-m9-mstd0.5-inc1``, erasing ``pixel`` x 1, no colour jitter), and what
    it leaves to its libraries: AdamW betas (0.9, 0.999), timm's crop scale (0.08, 1) and flip 0.5.
    (``main_finetune.py``'s own defaults differ: base lr 1e-3, layer decay 0.75, 50 epochs, batch 64, no Mixup
    or CutMix.) ``batch_size`` is per process: the recipe's effective 1024 needs 32 processes, or ``accum_steps``
    (the shipped ``finetune_vit_base_patch16``: 8 GPUs x 32 x 4). EMA is maskkit's option, off as in MAE.

    Optimisation: AdamW (``betas``, ``weight_decay``) with layer-wise learning-rate decay (``layer_decay``:
    the head and the final norm get the learning rate, the last block ``layer_decay`` times it, ..., the patch
    embedding ``layer_decay ** (depth + 1)``; 1 turns it off), ``lr = base_lr * effective_batch / 256`` unless ``lr``
    is given, linear warmup for ``warmup_epochs`` then cosine to ``min_lr``. ``batch_size`` is per process and
    micro-step; the effective batch is ``batch_size * accum_steps * world_size``.

    Model: ``drop_path`` (stochastic depth rate), ``global_pool``: ``avg`` (MAE's head: mean of the patch tokens,
    then a fresh LayerNorm ``fc_norm``, the encoder's last norm dropped) or ``token`` (the class token after the
    encoder's norm; an encoder with ``class_token: false`` is refused). ``tune_blocks``: partial fine-tuning
    (MAE Figure 9): train only the last ``tune_blocks`` transformer blocks, the final norm and the head (0: the
    head alone); ``null`` trains everything.
    ``init``: ``pretrained`` loads the checkpoint's encoder; ``random`` keeps the random initialisation (the
    baseline of the same architecture and budget).

    Regularisation: Mixup (``mixup`` alpha) and CutMix (``cutmix`` alpha, ``cutmix_minmax``), applied to a
    batch with probability ``mixup_prob``, CutMix instead of Mixup with ``mixup_switch_prob`` (0 for both
    alphas turns them off); label smoothing ``smoothing``; RandAugment ``auto_augment`` (timm's string,
    ``null`` for none; checked when the recipe is loaded: a head or part timm refuses, or one it would silently
    skip, such as ``mstdX``, is refused, see :mod:`maskkit.finetune.auto_augment`), random erasing with
    probability ``reprob`` (``remode``, ``recount``), random resized crop ``scale``, horizontal flip probability
    ``hflip``, ``color_jitter`` (MAE: off, ``null``). ``ema``: also keep an exponential moving average of the
    weights (decay ``ema_decay``) and score it.
    """

    epochs: int = attrs.field(default=100, validator=v.positive_int)
    max_steps: int | None = attrs.field(default=None, validator=v.optional(v.positive_int))
    batch_size: int = attrs.field(default=32, validator=v.positive_int)
    accum_steps: int = attrs.field(default=1, validator=v.positive_int)
    base_lr: float = attrs.field(default=5e-4, validator=v.non_negative_float)
    lr: float | None = attrs.field(default=None, validator=v.optional(v.non_negative_float))
    min_lr: float = attrs.field(default=1e-6, validator=v.non_negative_float)
    warmup_epochs: float = attrs.field(default=5.0, validator=v.non_negative_float)
    weight_decay: float = attrs.field(default=0.05, validator=v.non_negative_float)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas,
                                         converter=v.sequence_to_tuple)
    layer_decay: float = attrs.field(default=0.65, validator=_unit_interval)
    clip_grad: float | None = attrs.field(default=None, validator=v.optional(v.non_negative_float))
    drop_path: float = attrs.field(default=0.1, validator=_probability)
    global_pool: str = attrs.field(default="avg", validator=v.one_of("avg", "token"))
    tune_blocks: int | None = attrs.field(default=None, validator=v.optional(v.non_negative_int))
    init: str = attrs.field(default="pretrained", validator=v.one_of("pretrained", "random"))
    mixup: float = attrs.field(default=0.8, validator=v.non_negative_float)
    cutmix: float = attrs.field(default=1.0, validator=v.non_negative_float)
    cutmix_minmax: tuple[float, float] | None = attrs.field(default=None, validator=_minmax,
                                                            converter=v.sequence_to_tuple)
    mixup_prob: float = attrs.field(default=1.0, validator=_probability)
    mixup_switch_prob: float = attrs.field(default=0.5, validator=_probability)
    smoothing: float = attrs.field(default=0.1, validator=_smoothing)
    auto_augment: str | None = attrs.field(default="rand-m9-mstd0.5-inc1", validator=check_auto_augment)
    color_jitter: float | None = attrs.field(default=None, validator=v.optional(v.non_negative_float))
    reprob: float = attrs.field(default=0.25, validator=_probability)
    remode: str = attrs.field(default="pixel", validator=v.one_of("pixel", "rand", "const"))
    recount: int = attrs.field(default=1, validator=v.positive_int)
    scale: tuple[float, float] = attrs.field(default=(0.08, 1.0), validator=v.crop_scale, converter=v.sequence_to_tuple)
    hflip: float = attrs.field(default=0.5, validator=_probability)
    ema: bool = attrs.field(default=False, validator=v.boolean)
    ema_decay: float = attrs.field(default=0.9999, validator=_ema_decay)
    precision: str = attrs.field(default="auto", validator=v.one_of("auto", "fp32", "bf16"))
    device: str = attrs.field(default="auto", validator=v.device)
    num_workers: int = attrs.field(default=0, validator=v.non_negative_int)
    log_every: int = attrs.field(default=10, validator=v.positive_int)
    ckpt_every: int = attrs.field(default=0, validator=v.non_negative_int)
    eval_batch_size: int = attrs.field(default=256, validator=v.positive_int)

    @property
    def mixup_active(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None)


@attrs.frozen
class FinetuneRecipe(Recipe):
    """A loaded fine-tuning recipe (see the module docstring); ``tree`` is what ``recipe.yaml`` holds."""

    @property
    def finetune(self) -> FinetuneConfig:
        return _section_config(FinetuneConfig, self.tree, "finetune", self.file)

    def with_overrides(self, overrides: Iterable[str]) -> "FinetuneRecipe":
        return FinetuneRecipe(apply_overrides(self.tree, overrides, self.file), self.path)

    def validate(self) -> None:
        for key in self.tree:
            if key not in SECTIONS:
                raise ConfigError(str(key), f"unknown section of a fine-tuning recipe{did_you_mean(key, SECTIONS)}; "
                                  "expected one of "
                                  f"{', '.join(SECTIONS)} (the encoder comes from the checkpoint)", file=self.file)
        _ = self.seed, self.data_seed, self.finetune, self.distributed
        self.component("data")
        if self.decode != "host":  # the pretraining engine's data keys that fine-tuning does not offer
            raise ConfigError("data.decode", "device is for pretraining; fine-tuning's augmentation (RandAugment, "
                              "random erasing) works on images decoded in the loader workers: leave it out",
                              file=self.file)
        if self.on_bad_image != "stop":
            raise ConfigError("data.on_bad_image", "skip is for pretraining; fine-tuning stops at an unreadable "
                              "image, naming it: leave it out", file=self.file)


def pretraining_data(pretrained_tree: dict) -> dict:
    """The pretraining recipe's ``data`` section as a fine-tuning recipe takes it: the dataset, without the
    pretraining engine's own choices (``decode``, ``on_bad_image``: :data:`~maskkit.recipe.DATA_ENGINE_KEYS`)."""
    return {k: copy.deepcopy(v) for k, v in pretrained_tree["data"].items() if k not in DATA_ENGINE_KEYS}


def load_finetune_recipe(source: str | Path | dict | None, overrides: Iterable[str] = (), *,
                         pretrained_tree: dict | None = None, registry=None) -> FinetuneRecipe:
    """A fine-tuning recipe from a YAML path, a registered recipe name (``finetune_quickstart``), a dict, or
    ``None`` (every default); its ``data`` section defaults to ``pretrained_tree``'s. Overrides apply last."""
    if source is None or isinstance(source, dict):
        tree, path = copy.deepcopy(source or {}), None
    else:
        path = find_recipe_file(source, registry, what="fine-tuning recipe")
        tree = parse_yaml(read_text_file(path), str(path))
        if "finetune" not in tree and "encoder" in tree:
            raise ConfigError("", "a pretraining recipe, not a fine-tuning one (no finetune section); "
                              "see recipes/finetune_quickstart.yaml", file=str(path))
    if "data" not in tree and pretrained_tree and isinstance(pretrained_tree.get("data"), dict):
        tree["data"] = pretraining_data(pretrained_tree)
    name = str(path) if path else ("the default fine-tuning recipe (no --recipe)" if source is None else None)
    recipe = FinetuneRecipe(tree, name).with_overrides(overrides)
    recipe.validate()
    return recipe
