"""The ``teacher`` plugin: data2vec's EMA-teacher target, its linear head, its recipes and its EMA hook.

Registered through the entry point ``teacher = "maskkit_teacher.plugin"`` (group ``maskkit``).
"""

from __future__ import annotations

from pathlib import Path

import torch

import maskkit
from maskkit import toolkit
from maskkit_teacher.linear_head import LinearHead
from maskkit_teacher.teacher import TeacherTarget

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"


@maskkit.hookimpl
def maskkit_add_targets():
    return {"teacher": TeacherTarget}


@maskkit.hookimpl
def maskkit_add_decoders():
    return {"d2v_linear": LinearHead}


maskkit_add_recipes = toolkit.recipes_hook(RECIPE_DIR)  # {file stem: path} of the shipped recipes


@maskkit.hookimpl
def maskkit_step_end(trainer, model: torch.nn.Module, step: int) -> None:
    """After optimizer step ``step``: EMA-update the teacher of every :class:`TeacherTarget` in ``model``.

    The run length for the default momentum ramp is read from ``trainer.total_steps`` when the trainer has
    it (``trainer`` may be None). Searching ``model.modules()`` also finds the target inside a DDP or
    ``torch.compile`` wrapper.
    """
    total_steps = getattr(trainer, "total_steps", None)
    for module in model.modules():
        if isinstance(module, TeacherTarget):
            module.ema_step(step, total_steps=total_steps)
