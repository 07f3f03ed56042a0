"""The ``blockmask`` plugin: registers the ``block``, ``grid`` and ``uniform`` maskers and two recipes."""

from __future__ import annotations

from pathlib import Path

import maskkit
from maskkit import toolkit
from maskkit_blockmask.block import BlockMasker
from maskkit_blockmask.grid import GridMasker
from maskkit_blockmask.uniform import UniformMasker

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_maskers():
    return {"block": BlockMasker, "grid": GridMasker, "uniform": UniformMasker}


maskkit_add_recipes = toolkit.recipes_hook(RECIPE_DIR)  # {file stem: path} of the shipped recipes
