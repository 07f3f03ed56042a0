"""maskkit: a pluggable masked-modeling framework for PyTorch, with MAE as the reference recipe.

>>> import maskkit
>>> recipe = maskkit.load_recipe("recipes/quickstart.yaml", overrides=["train.epochs=1"])
>>> model = maskkit.build_model(recipe)
>>> out = model(images)              # out.loss, out.pred [B, N, D], out.mask [B, N]
"""

__version__ = "0.1.0"

from maskkit.builder import build_model  # noqa: E402
from maskkit.errors import CheckpointError, ConfigError, MaskkitError, PluginError, TrainingError  # noqa: E402
from maskkit.interfaces import (  # noqa: E402
                                AUX_CONTEXT,
                                MASKER_CONTEXT,
                                Decoder,
                                Encoder,
                                Loss,
                                MaskDraw,
                                MaskedOutput,
                                Masker,
                                Target,
)
from maskkit.model import MaskedModel  # noqa: E402
from maskkit.recipe import Recipe, load_recipe  # noqa: E402
from maskkit.registry import Registry, create, default_registry, hookimpl, list_components  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "create", "list_components", "default_registry", "Registry",
    "Masker", "Encoder", "Decoder", "Target", "Loss", "MaskedOutput", "MaskedModel", "MaskDraw",
    "MASKER_CONTEXT", "AUX_CONTEXT",
    "Recipe", "load_recipe", "build_model",
    "MaskkitError", "ConfigError", "PluginError", "CheckpointError", "TrainingError",
]
