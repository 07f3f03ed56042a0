"""The ``simmim`` maskkit plugin: what it adds to the registry.

* encoders ``simmim_swin_*_patch4_*`` (every timm Swin with a 4-px stem) and ``simmim_convnext*`` (timm
  ConvNeXt v1/v2 with a patchify stem), dense, mask token at the stem;
* decoder ``simmim`` (the one-layer linear head);
* masker ``simmim_random`` (SimMIM's mask generator, mask patches of ``scale`` grid cells);
* recipes ``simmim_swin_tiny``, ``simmim_vit_base_patch16``, ``quickstart_simmim_swin``.

Loss and target are maskkit's built-ins: ``l1`` and ``pixels``.
"""

from __future__ import annotations

from pathlib import Path

import maskkit
from maskkit import toolkit

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_encoders():
    from maskkit_simmim.convnext import convnext_factories
    from maskkit_simmim.swin import swin_factories

    return {**swin_factories(), **convnext_factories()}


@maskkit.hookimpl
def maskkit_add_decoders():
    from maskkit_simmim.head import SimMIMHead

    return {"simmim": SimMIMHead}


@maskkit.hookimpl
def maskkit_add_maskers():
    from maskkit_simmim.masking import SimMIMRandomMasker

    return {"simmim_random": SimMIMRandomMasker}


maskkit_add_recipes = toolkit.recipes_hook(RECIPE_DIR)  # {file stem: path} of the shipped recipes
