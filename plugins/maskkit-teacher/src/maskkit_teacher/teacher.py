"""data2vec's target: the top-K block outputs of an EMA teacher that sees the whole image.

Baevski et al. 2022, "data2vec: A General Framework for Self-supervised Learning in Speech, Vision and
Language" (arXiv:2202.03555), sections 3.2-3.3, with the settings of the official vision code
(github.com/facebookresearch/data2vec_vision, ``beit/engine_for_cyclical.py``): the teacher is a momentum copy
of the student encoder run on the unmasked image; the target of each patch is the average of the outputs
of its top K blocks (end of block, after the residual; prefix tokens dropped), each first layer-normalized
without affine parameters (``F.layer_norm``, the official default for vision: ``target_layer_norm_last``;
speech uses instance norm instead), and optionally layer-normalized again after averaging
(``post_layer_norm``, the official ViT-B command's ``--post_target_layer_norm``).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F

from maskkit import Encoder, Target
from maskkit.errors import ConfigError, expected
from maskkit_teacher.block_outputs import block_outputs, encoder_depth
from maskkit_teacher.ema import ema_update_, momentum_at

#: The momentum ramp length used when ``ramp_steps`` is None and the run length is unknown (the step-end hook
#: got no trainer, or one without ``total_steps``). A warning says so when it is used.
FALLBACK_RAMP_STEPS = 10_000


def _check_momentum(value: float, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(key, expected("a float in [0, 1]", value))
    return float(value)


class TeacherTarget(Target):
    """``images [B, C, H, W] -> target [B, N, D]``: averaged top-K block outputs of an EMA teacher.

    ``encoder`` is the student (passed by the builder); the teacher is ``copy.deepcopy(encoder)``, frozen
    (``requires_grad=False``), always in eval mode, and a submodule (``self.teacher``), so its weights are in
    the model's state dict under ``target.teacher.*`` and a resumed run continues exactly. The student is
    only referenced (not a submodule: its weights are saved once, as the encoder's).

    The teacher moves only when :meth:`ema_step` runs; the plugin's ``maskkit_step_end`` hook calls it after
    every optimizer step with the momentum ramped linearly from ``momentum`` to ``momentum_end`` over
    ``ramp_steps`` steps (None: the whole run, ``trainer.total_steps``, if the trainer says; else
    :data:`FALLBACK_RAMP_STEPS`, with a warning), then held.

    ``top_k`` blocks are averaged (1 <= top_k <= depth); ``layer_norm`` normalizes each block output over
    ``D`` without affine before averaging; ``post_layer_norm`` normalizes the average the same way. The
    target is computed without gradients, in at least float32, and returned in ``images.dtype``.
    """

    def __init__(
        self,
        encoder: Encoder,
        top_k: int = 6,
        layer_norm: bool = True,
        post_layer_norm: bool = False,
        momentum: float = 0.999,
        momentum_end: float = 0.9999,
        ramp_steps: int | None = None,
    ):
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise ConfigError("encoder", expected("a maskkit.Encoder", type(encoder).__name__))
        depth = encoder_depth(encoder)
        if depth is None and not callable(getattr(encoder, "forward_block_outputs", None)):
            raise ConfigError("", f"the teacher target needs the encoder's block outputs, but "
                                  f"{type(encoder).__name__} has neither a 'blocks' list nor forward_block_outputs")
        limit = f"an int in [1, {depth}] (the encoder's depth)" if depth else "a positive int"
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1 or (depth and top_k > depth):
            raise ConfigError("top_k", expected(limit, top_k))
        for key, flag in (("layer_norm", layer_norm), ("post_layer_norm", post_layer_norm)):
            if not isinstance(flag, bool):
                raise ConfigError(key, expected("true or false", flag))
        if ramp_steps is not None and (isinstance(ramp_steps, bool) or not isinstance(ramp_steps, int)
                                       or ramp_steps < 0):
            raise ConfigError("ramp_steps", expected("an int >= 0 or null (the whole run)", ramp_steps))
        self.top_k = top_k
        self.layer_norm = layer_norm
        self.post_layer_norm = post_layer_norm
        self.momentum = _check_momentum(momentum, "momentum")
        self.momentum_end = _check_momentum(momentum_end, "momentum_end")
        self.ramp_steps = ramp_steps
        self.dim = encoder.embed_dim
        self.num_prefix_tokens = encoder.num_prefix_tokens
        self.num_patches = encoder.num_patches

        self.teacher = copy.deepcopy(encoder)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._student = (encoder,)  # a reference in a tuple: nn.Module does not register it as a submodule
        self.last_momentum: float | None = None  # the momentum of the latest EMA update (for logging)
        self._last_ema_step: int | None = None
        self._warned_fallback = False

    @property
    def student(self) -> Encoder:
        """The student encoder whose moving average the teacher is."""
        return self._student[0]

    def train(self, mode: bool = True) -> "TeacherTarget":
        """Switch the target's mode; the teacher itself stays in eval mode (no dropout, no drop-path)."""
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        param = next(self.teacher.parameters(), None)
        x = images.to(param.dtype) if param is not None and param.dtype != images.dtype else images
        p = self.num_prefix_tokens
        layers = [y[:, p:] for y in block_outputs(self.teacher, x, self.top_k)]  # K x [B, N, D]
        if layers[0].shape[1] != self.num_patches:
            raise RuntimeError(f"teacher blocks returned {layers[0].shape[1] + p} tokens, expected P + N = "
                               f"{p + self.num_patches}")
        compute = torch.promote_types(layers[0].dtype, torch.float32)
        layers = [y.to(compute) for y in layers]
        if self.layer_norm:
            layers = [F.layer_norm(y, y.shape[-1:]) for y in layers]
        target = torch.stack(layers).mean(dim=0)  # [B, N, D]
        if self.post_layer_norm:
            target = F.layer_norm(target, target.shape[-1:])
        return target.to(images.dtype)

    def momentum_at(self, step: int, total_steps: int | None = None) -> float:
        """The momentum used after optimizer step ``step``; ``total_steps`` is the run length, if known."""
        if self.momentum == self.momentum_end:  # constant: the ramp length does not matter
            return self.momentum_end
        return momentum_at(step, self.momentum, self.momentum_end, self._ramp(total_steps))

    def _ramp(self, total_steps: int | None) -> int:
        if self.ramp_steps is not None:
            return self.ramp_steps
        if total_steps is not None:
            return int(total_steps)
        if not self._warned_fallback:
            warnings.warn(f"teacher target: ramp_steps is null and the run length is unknown (no "
                          f"trainer.total_steps); ramping the momentum over {FALLBACK_RAMP_STEPS} steps. Set "
                          f"target.ramp_steps to choose.", stacklevel=3)
            self._warned_fallback = True
        return FALLBACK_RAMP_STEPS

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter (buffers copied)."""
        ema_update_(self.teacher, self.student, momentum)
        self.last_momentum = float(momentum)

    def ema_step(self, step: int, total_steps: int | None = None) -> float:
        """The EMA update after optimizer step ``step``; returns the momentum used.

        Raises ``RuntimeError`` if called twice in a row for the same ``step`` (say, the hook ran twice per
        step): a doubled update would silently change the effective momentum. A smaller step than the last
        one is accepted (a new run of the same model object).
        """
        if self._last_ema_step is not None and step == self._last_ema_step:
            raise RuntimeError(f"teacher EMA update for step {step} was already applied; maskkit_step_end must "
                               "run once per optimizer step")
        momentum = self.momentum_at(step, total_steps)
        self.update_teacher(momentum)
        self._last_ema_step = step
        return momentum

    def extra_repr(self) -> str:
        return (f"top_k={self.top_k}, layer_norm={self.layer_norm}, post_layer_norm={self.post_layer_norm}, "
                f"momentum={self.momentum}->{self.momentum_end}, ramp_steps={self.ramp_steps}")
