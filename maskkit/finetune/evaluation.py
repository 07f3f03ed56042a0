"""Fine-tuning as an evaluation of a pretrained checkpoint (what ``maskkit compare`` runs for
``eval: {finetune: {...}}``).

The settings are a mapping: an optional ``recipe`` (a fine-tuning recipe path or registered name, e.g.
``finetune_quickstart``) and any keys of its ``finetune`` section (``max_steps: 50``, ``layer_decay: 0.75``...).
Each pretraining run is fine-tuned with its own ``seed`` and the comparison's ``data_seed``, on the pretraining
recipe's data, so fine-tuning scores are paired across variants like the kNN and linear ones.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Mapping

from maskkit.errors import ConfigError, expected
from maskkit.finetune.config import FinetuneRecipe, load_finetune_recipe, pretraining_data

SETTINGS_RECIPE_KEY = "recipe"
SCORE_KEYS = ("top1", "top5", "ema_top1", "ema_top5")


def finetune_recipe_for(settings: Mapping[str, Any], pretrained_tree: dict, *, seed: int, data_seed: int,
                        file: str | None = None, key: str = "eval.finetune", registry=None) -> FinetuneRecipe:
    """The fine-tuning recipe of ``settings`` for one pretrained run (``seed``, ``data_seed``; its data).
    ``settings``' ``recipe`` is read as ``maskkit finetune --recipe`` reads it (a fine-tuning recipe without a
    ``data`` section takes ``pretrained_tree``'s; registered names from ``registry``). Errors name ``file`` and
    ``key`` (``my_spec.yaml: eval.finetune.layer_decay: expected ...``)."""
    if not isinstance(settings, Mapping):
        raise ConfigError(key, expected("a mapping (recipe: NAME and finetune keys)", settings), file=file)
    settings = dict(settings)
    source = settings.pop(SETTINGS_RECIPE_KEY, None)
    try:
        tree = copy.deepcopy(load_finetune_recipe(source, pretrained_tree=pretrained_tree, registry=registry).tree) \
            if source is not None else {}
    except ConfigError as exc:
        raise ConfigError(f"{key}.{SETTINGS_RECIPE_KEY}", f"{exc}", file=file) from None
    tree["finetune"] = {**(tree.get("finetune") or {}), **settings}
    tree.update(seed=seed, data_seed=data_seed)
    if isinstance(pretrained_tree.get("data"), dict):
        tree["data"] = pretraining_data(pretrained_tree)
    recipe = FinetuneRecipe(tree, file)
    try:
        recipe.validate()
    except ConfigError as exc:
        inner = exc.key[len("finetune."):] if exc.key.startswith("finetune.") else exc.key
        raise ConfigError(f"{key}.{inner}" if inner != "finetune" else key, exc.message, file=file) from None
    return recipe


def finetune_evaluation(checkpoint: str | Path, settings: Mapping[str, Any], out_dir: str | Path, *, seed: int,
                        data_seed: int, device: str | None = None, registry=None, console=None,
                        progress: bool = True) -> dict:
    """Fine-tune the encoder of ``checkpoint`` into ``out_dir`` and return ``finetune.json``'s scores.

    An interrupted fine-tuning with the same recipe in ``out_dir`` is resumed (exactly); anything else there is
    replaced. ``device`` fills ``finetune.device`` when the settings do not set it."""
    from maskkit.finetune.loop import CHECKPOINT_NAME, FinetuneTrainer, load_finetune_checkpoint
    from maskkit.finetune.pretrained import read_pretrained

    out_dir = Path(out_dir)
    tree, state = read_pretrained(checkpoint)
    settings = dict(settings)
    if device is not None:
        settings.setdefault("device", device)
    recipe = finetune_recipe_for(settings, tree, seed=seed, data_seed=data_seed, registry=registry)
    resume = None
    saved = out_dir / CHECKPOINT_NAME
    if saved.is_file():
        previous = load_finetune_checkpoint(saved)
        if previous.get("recipe") == recipe.tree and not (out_dir / "finetune.json").exists():
            resume = saved
    if resume is None and out_dir.exists():
        shutil.rmtree(out_dir)
    trainer = FinetuneTrainer(recipe, out_dir, pretrained=(tree["encoder"], state, str(checkpoint)),
                              registry=registry, resume=resume, console=console, progress=progress)
    return trainer.fit().scores
