"""maskkit-adaptive: maskers that look at the image, the model and the loss.

``attmask`` (AttMask, ECCV 2022), ``hpm`` (Hard Patches Mining, CVPR 2023), ``adamae`` (AdaMAE, CVPR 2023),
``colormae`` (ColorMAE's filtered noise, ECCV 2024) and ``curriculum`` (random to clustered masking by epoch),
written on maskkit's public API only (``maskkit``, ``maskkit.interfaces``, ``maskkit.masking``).
"""

from maskkit_adaptive.adamae import AdaMAEMasker
from maskkit_adaptive.attention import cls_attention
from maskkit_adaptive.attmask import AttMaskMasker
from maskkit_adaptive.colormae import ColorNoiseMasker, color_noise
from maskkit_adaptive.curriculum import CurriculumMasker
from maskkit_adaptive.hpm import HPMMasker, relative_loss

__version__ = "0.1.0"
__all__ = ["AttMaskMasker", "HPMMasker", "AdaMAEMasker", "ColorNoiseMasker", "CurriculumMasker", "cls_attention",
           "color_noise", "relative_loss"]
