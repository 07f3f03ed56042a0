"""The maskkit hooks of maskkit-hog: the ``hog`` target and the MaskFeat recipes."""

from __future__ import annotations

from pathlib import Path

import maskkit
from maskkit import toolkit
from maskkit_hog.target import HOGTarget

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_targets():
    return {"hog": HOGTarget}


maskkit_add_recipes = toolkit.recipes_hook(RECIPE_DIR)  # {file stem: path} of the shipped recipes
