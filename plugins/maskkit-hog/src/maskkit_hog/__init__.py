"""maskkit-hog: MaskFeat's HOG target (Wei et al., "Masked Feature Prediction for Self-Supervised Visual
Pre-Training", CVPR 2022) for maskkit, with the MaskFeat recipes.

Registers the target ``hog`` (:class:`HOGTarget`) and the recipes ``maskfeat_vit_base_patch16`` and
``quickstart_maskfeat`` through the entry point ``hog`` of the group ``maskkit``.
"""

from maskkit_hog.hog import cell_histograms, gaussian_window, image_gradients, l2_normalize_cells, orientation_bins
from maskkit_hog.target import HOGTarget

__version__ = "0.1.0"

__all__ = ["HOGTarget", "cell_histograms", "gaussian_window", "image_gradients", "l2_normalize_cells",
           "orientation_bins", "__version__"]
