"""The exponential moving average that makes a teacher, and data2vec's linear momentum ramp.

data2vec (Baevski et al. 2022, section 3.2) updates the teacher after every optimizer step as
``teacher = tau * teacher + (1 - tau) * student``, with ``tau`` rising linearly from ``tau_0`` to ``tau_e``
over the first ``tau_n`` updates and held at ``tau_e`` afterwards (fairseq's ``get_annealed_rate``).
"""

from __future__ import annotations

import torch
from torch import nn


def momentum_at(step: int, start: float, end: float, ramp_steps: int) -> float:
    """The EMA momentum after optimizer step ``step`` (0-based): ``start`` at step 0, linear to ``end`` at
    step ``ramp_steps``, ``end`` from then on. ``ramp_steps <= 0`` means ``end`` from the first step."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return float(end)
    return float(start) + (float(end) - float(start)) * max(step, 0) / ramp_steps


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: every parameter of ``teacher`` becomes ``momentum * teacher + (1 - momentum) * student``;
    every buffer of ``teacher`` is copied from ``student``.

    The two modules must have the same structure (the teacher is a deep copy of the student). The update is a
    single ``torch._foreach_lerp_`` (``t + (1 - m) * (s - t)``), which leaves a parameter bit-identical when
    teacher and student agree (frozen position embeddings never drift) and when ``momentum == 1``.
    """
    t_named = list(teacher.named_parameters())
    s_named = list(student.named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in s_named]:
        raise RuntimeError("teacher and student parameters differ in names or order; the teacher must be a "
                           "deep copy of the student")
    t_params = [p for _, p in t_named]
    s_params = [p.detach() for _, p in s_named]
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - float(momentum))
    for (_, t_buf), (_, s_buf) in zip(teacher.named_buffers(), student.named_buffers()):
        t_buf.copy_(s_buf)
