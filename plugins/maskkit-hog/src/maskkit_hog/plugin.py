"""The maskkit hooks of maskkit-hog: the ``hog`` target and the MaskFeat recipes."""

from __future__ import annotations

from pathlib import Path

import maskkit

from maskkit_hog.target import HOGTarget

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_targets():
    return {"hog": HOGTarget}


@maskkit.hookimpl
def maskkit_add_recipes():
    """``{recipe name: path}`` for the YAML files shipped as package data in ``maskkit_hog/recipes/``."""
    return {path.stem: path for path in sorted(RECIPE_DIR.glob("*.yaml"))}
