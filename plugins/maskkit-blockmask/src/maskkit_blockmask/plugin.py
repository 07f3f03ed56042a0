"""The ``blockmask`` plugin: registers the ``block``, ``grid`` and ``uniform`` maskers and two recipes."""

from __future__ import annotations

from pathlib import Path

import maskkit
from maskkit_blockmask.block import BlockMasker
from maskkit_blockmask.grid import GridMasker
from maskkit_blockmask.uniform import UniformMasker

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_maskers():
    return {"block": BlockMasker, "grid": GridMasker, "uniform": UniformMasker}


@maskkit.hookimpl
def maskkit_add_recipes():
    """The YAML files shipped in ``maskkit_blockmask/recipes/``, named by file stem."""
    return {path.stem: path for path in sorted(RECIPE_DIR.glob("*.yaml"))}
