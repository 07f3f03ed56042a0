"""The built-in plugin: MAE's components, the default datasets and the shipped recipes.

Registered by :func:`maskkit.registry.make_plugin_manager` exactly like a third-party plugin.
"""

from __future__ import annotations

from pathlib import Path

from maskkit.builtin import losses, targets
from maskkit.builtin.decoder import MAEDecoder
from maskkit.builtin.masking import RandomMasker
from maskkit.builtin.vit import timm_vit_factories
from maskkit.registry import hookimpl
from maskkit.toolkit import recipe_files

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes"


@hookimpl
def maskkit_add_maskers():
    return {"random": RandomMasker}


@hookimpl
def maskkit_add_encoders():
    return timm_vit_factories()


@hookimpl
def maskkit_add_decoders():
    return {"mae": MAEDecoder}


@hookimpl
def maskkit_add_targets():
    return {"pixels": targets.pixels, "norm_pixels": targets.norm_pixels}


@hookimpl
def maskkit_add_losses():
    return {"mse": losses.MSELoss, "l1": losses.L1Loss, "smooth_l1": losses.SmoothL1Loss, "cosine": losses.CosineLoss}


@hookimpl
def maskkit_add_datasets():
    from maskkit.data.fashion_mnist import FashionMNIST
    from maskkit.data.image_folder import image_folder_split

    return {"fashion_mnist": FashionMNIST, "image_folder": image_folder_split}


@hookimpl
def maskkit_add_recipes():
    """The recipes in the source tree's ``recipes/`` folder (maskkit is installed editable from a clone);
    ``recipes/compare/`` holds comparison specs, not recipes."""
    return recipe_files(RECIPE_DIR)
