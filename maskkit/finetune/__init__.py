"""End-to-end fine-tuning of a pretrained encoder for classification, the MAE way (``maskkit finetune``).

- :mod:`maskkit.finetune.config`: the ``finetune`` recipe section and fine-tuning recipes;
- :mod:`maskkit.finetune.model`: timm's ViT classifier with the pretrained encoder, partial fine-tuning,
  layer-wise learning-rate decay groups;
- :mod:`maskkit.finetune.data`: MAE's augmentation and Mixup/CutMix from timm, seeded the engine's way;
- :mod:`maskkit.finetune.loop`: :class:`FinetuneTrainer`, the loop, its checkpoints and the test scores;
- :mod:`maskkit.finetune.pretrained`: :func:`read_pretrained` (:func:`load_pretrained` with the reader's notes),
  where the starting weights come from.
"""

from maskkit.finetune.config import FinetuneConfig, FinetuneRecipe, load_finetune_recipe
from maskkit.finetune.loop import FinetuneResult, FinetuneTrainer, load_finetune_checkpoint
from maskkit.finetune.pretrained import load_pretrained, read_pretrained

__all__ = ["FinetuneConfig", "FinetuneRecipe", "load_finetune_recipe", "FinetuneTrainer", "FinetuneResult",
           "load_finetune_checkpoint", "load_pretrained", "read_pretrained", "finetune"]


def finetune(pretrained, recipe=None, overrides=(), *, out_dir, registry=None, console=None, progress=True):
    """Fine-tune the encoder of checkpoint ``pretrained`` with fine-tuning ``recipe`` (path, registered name,
    dict or None for the defaults) plus ``overrides``; returns :class:`FinetuneResult`."""
    tree, state = read_pretrained(pretrained)
    ft_recipe = load_finetune_recipe(recipe, overrides, pretrained_tree=tree, registry=registry)
    trainer = FinetuneTrainer(ft_recipe, out_dir, pretrained=(tree["encoder"], state, str(pretrained)),
                              registry=registry, console=console, progress=progress)
    result = trainer.fit()
    trainer.dist.shutdown()
    return result
