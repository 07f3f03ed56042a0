"""maskkit-teacher: data2vec-style EMA-teacher feature targets for maskkit (Baevski et al. 2022).

Registers the target ``teacher`` (:class:`TeacherTarget`), the decoder ``d2v_linear`` (:class:`LinearHead`),
the recipes ``data2vec_vit_base_patch16`` and ``quickstart_data2vec``, and a ``maskkit_step_end`` hook that
moves every teacher after each optimizer step.
"""

from maskkit_teacher.block_outputs import block_outputs
from maskkit_teacher.ema import ema_update_, momentum_at
from maskkit_teacher.linear_head import LinearHead
from maskkit_teacher.teacher import FALLBACK_RAMP_STEPS, TeacherTarget

__version__ = "0.1.0"
__all__ = ["TeacherTarget", "LinearHead", "block_outputs", "ema_update_", "momentum_at", "FALLBACK_RAMP_STEPS"]
