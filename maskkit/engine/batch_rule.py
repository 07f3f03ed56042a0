"""``train.batch_size: auto``: the per-process micro-batch and the accumulation steps that fit the device.

The rule (:func:`pick_batch`, a pure function of the model's step shape, the device and the world size):

* the effective batch (``train.effective_batch``, 4096 in the shipped ViT recipes) is kept exactly, so MAE's
  learning-rate rule (``base_lr x effective / 256``) gives the same rate on any machine:
  ``micro x accum_steps x world_size = effective_batch``;
* on CUDA, the micro-batch is the largest power of two that divides ``effective / world_size``, is at most
  ``MAX_MICRO`` (256: ViT-L/16 reached 42% MFU at 256 against 15% at 64 on an H200, issue 10; larger batches
  add memory more than speed) and whose estimated memory fits in ``MEMORY_SHARE`` of the GPU's: parameters,
  gradients and AdamW state at ``STATE_BYTES_PER_PARAM`` bytes per parameter, plus the activations kept for the
  backward pass, ``ACTIVATION_BYTES`` per token, channel and block of each image (the bf16 estimate of
  Korthikanti et al. 2022 for a transformer block with fused attention; twice that in fp32). The share leaves
  the estimate a factor of two of headroom;
* elsewhere (the CPU), a fixed micro-batch ``CPU_MICRO`` (64), or the largest power of two below it that
  divides ``effective / world_size``.

The trainer writes the picked ``batch_size`` and ``accum_steps`` into the run folder's ``recipe.yaml``; a
resumed run keeps its checkpoint's picks.
"""

from __future__ import annotations

import attrs

from maskkit.errors import ConfigError

ACTIVATION_BYTES = 34  # bf16 bytes kept per token, channel and transformer block
STATE_BYTES_PER_PARAM = 18  # fp32 weight, gradient, two AdamW moments, the bf16 weight copy
MEMORY_SHARE = 0.5
MAX_MICRO = 256
CPU_MICRO = 64


@attrs.frozen
class StepShape:
    """What one image costs in a training step: tokens, width and depth of the encoder and the decoder blocks
    (the encoder's tokens are the visible ones for a sparse encoder), and the parameter count."""

    params: int
    encoder_tokens: int
    encoder_dim: int
    encoder_depth: int
    decoder_tokens: int = 0
    decoder_dim: int = 0
    decoder_depth: int = 0

    @classmethod
    def of(cls, model) -> "StepShape":
        """Read off a built :class:`~maskkit.model.MaskedModel` (a decoder without ``decoder_blocks`` counts as
        no blocks)."""
        enc, dec = model.encoder, model.decoder
        prefix = getattr(enc, "num_prefix_tokens", 0)
        visible = model.num_visible()
        tokens = prefix + (visible if getattr(enc, "sparse", False) and visible is not None else enc.num_patches)
        blocks = getattr(dec, "decoder_blocks", ())
        dec_dim = blocks[0].norm1.normalized_shape[0] if len(blocks) else 0
        return cls(params=sum(p.numel() for p in model.parameters()), encoder_tokens=tokens,
                   encoder_dim=enc.embed_dim, encoder_depth=len(getattr(enc, "blocks", ())),
                   decoder_tokens=getattr(dec, "num_prefix_tokens", 0) + enc.num_patches if len(blocks) else 0,
                   decoder_dim=dec_dim, decoder_depth=len(blocks))

    def activation_bytes(self, bf16: bool = True) -> int:
        """Estimated bytes of activations one image keeps for the backward pass."""
        per_token_layers = (self.encoder_tokens * self.encoder_dim * self.encoder_depth
                            + self.decoder_tokens * self.decoder_dim * self.decoder_depth)
        return ACTIVATION_BYTES * per_token_layers * (1 if bf16 else 2)


def pick_batch(shape: StepShape, *, effective_batch: int, world_size: int, device_type: str,
               memory_bytes: int | None = None, bf16: bool = True) -> tuple[int, int]:
    """``(micro_batch, accum_steps)`` per process for ``effective_batch`` over ``world_size`` processes (see the
    module docstring). ``memory_bytes``: the GPU's total memory (needed on CUDA)."""
    if effective_batch < 1 or effective_batch % world_size:
        raise ConfigError("train.effective_batch", f"expected a positive multiple of the world size {world_size}, "
                                                   f"got {effective_batch}")
    per_rank = effective_batch // world_size
    if device_type == "cuda":
        if not memory_bytes:
            raise ValueError("memory_bytes: the GPU's memory is needed on CUDA")
        budget = MEMORY_SHARE * memory_bytes - STATE_BYTES_PER_PARAM * shape.params
        limit = min(MAX_MICRO, int(budget // max(shape.activation_bytes(bf16), 1)))
        if limit < 1:
            raise ConfigError("train.batch_size", f"auto: the model ({shape.params / 1e6:.0f}M parameters) leaves no "
                                                  f"room for one image in {memory_bytes / 2**30:.0f} GiB; use FSDP "
                                                  "(distributed.strategy=fsdp) and set batch_size")
    else:
        limit = CPU_MICRO
    micro = 1
    while micro * 2 <= limit and per_rank % (micro * 2) == 0:
        micro *= 2
    return micro, per_rank // micro
