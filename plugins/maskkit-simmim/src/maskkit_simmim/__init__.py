"""SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022) for maskkit.

Dense hierarchical encoders (timm Swin and ConvNeXt) that put a learned mask token in place of the hidden
patches right after the stem, SimMIM's one-layer linear prediction head, SimMIM's random masker (with a mask
patch that may span several grid cells) and the paper's recipes. Registered through the ``maskkit`` entry
point ``simmim`` (:mod:`maskkit_simmim.plugin`).
"""

from maskkit_simmim.convnext import SimMIMConvNeXtEncoder
from maskkit_simmim.head import SimMIMHead, pixel_shuffle_weight_to_patchify
from maskkit_simmim.masking import SimMIMRandomMasker
from maskkit_simmim.swin import SimMIMSwinEncoder

__version__ = "0.1.0"

__all__ = ["SimMIMSwinEncoder", "SimMIMConvNeXtEncoder", "SimMIMHead", "SimMIMRandomMasker",
           "pixel_shuffle_weight_to_patchify", "__version__"]
