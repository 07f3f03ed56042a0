"""The ``adaptive`` plugin: registers ``attmask``, ``hpm``, ``adamae``, ``colormae`` and ``curriculum``, and
one quickstart recipe per masker."""

from __future__ import annotations

from pathlib import Path

import maskkit
from maskkit_adaptive.adamae import AdaMAEMasker
from maskkit_adaptive.attmask import AttMaskMasker
from maskkit_adaptive.colormae import ColorNoiseMasker
from maskkit_adaptive.curriculum import CurriculumMasker
from maskkit_adaptive.hpm import HPMMasker

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_maskers():
    return {"attmask": AttMaskMasker, "hpm": HPMMasker, "adamae": AdaMAEMasker, "colormae": ColorNoiseMasker,
            "curriculum": CurriculumMasker}


@maskkit.hookimpl
def maskkit_add_recipes():
    """The YAML files shipped in ``maskkit_adaptive/recipes/``, named by file stem."""
    return {path.stem: path for path in sorted(RECIPE_DIR.glob("*.yaml"))}
