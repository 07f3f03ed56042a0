"""maskkit maskers from the masked-image-modeling literature.

* :class:`BlockMasker` (``block``): BEiT's block-wise masking (Bao et al., 2021, Algorithm 1), exact count.
* :class:`GridMasker` (``grid``): MAE's grid-wise sampling (He et al., 2022, Table 1f).
* :class:`UniformMasker` (``uniform``): UM-MAE's uniform sampling and secondary masking (Li et al., 2022).
"""

from maskkit_blockmask.block import BlockMasker, BlockMaskSample
from maskkit_blockmask.grid import GridMasker
from maskkit_blockmask.uniform import UniformMasker

__all__ = ["BlockMasker", "BlockMaskSample", "GridMasker", "UniformMasker"]
