"""The model that composes masker, encoder, decoder, target and loss (MAE when built from the MAE recipe).

State-dict keys are flattened to the official MAE names: ``encoder.blocks.0...`` is saved as ``blocks.0...``
and ``decoder.decoder_pred...`` as ``decoder_pred...``, so an official checkpoint (``{"model": state_dict}``)
loads with ``strict=True``. Parameters of the target and loss (teacher targets) keep their ``target.``/``loss.``
prefixes.
"""

from __future__ import annotations

import torch
from torch import nn

from maskkit.errors import ConfigError
from maskkit.interfaces import Decoder, Encoder, Loss, MaskedOutput, Masker, Target

_FLAT = ("encoder", "decoder")


class MaskedModel(nn.Module):
    """``images [B, C, H, W] -> MaskedOutput(loss, pred [B, N, D], mask [B, N], target [B, N, D])``.

    ``forward(images, mask=None, generator=None)``: without ``mask`` the masker draws one (from ``generator``);
    with ``mask`` that exact masking is used, which reproduces any given mask.
    """

    def __init__(self, masker: Masker, encoder: Encoder, decoder: Decoder, target: Target, loss: Loss):
        super().__init__()
        if encoder.sparse and masker.num_hidden(encoder.grid) is None:
            raise ConfigError("masker", f"{type(masker).__name__} hides a varying number of patches per sample, "
                                        "which a sparse encoder cannot batch; use a dense encoder "
                                        "(e.g. encoder.dense=true) or a fixed-count masker")
        self.masker = masker
        self.encoder = encoder
        self.decoder = decoder
        self.target = target
        self.loss = loss
        enc_keys = set(encoder.state_dict())
        dec_keys = set(decoder.state_dict())
        clash = enc_keys & dec_keys
        if clash:
            raise ConfigError("decoder", f"encoder and decoder both have parameters named {sorted(clash)[:3]}")
        self._flat_owner = {**{k: "encoder" for k in enc_keys}, **{k: "decoder" for k in dec_keys}}
        self.register_state_dict_post_hook(_flatten_state_dict)
        self.register_load_state_dict_pre_hook(_unflatten_state_dict)

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    def draw_mask(self, batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
        """A mask ``[batch_size, N]`` from this model's masker on this model's grid."""
        return self.masker(batch_size, self.grid, generator=generator, device=device)

    def num_visible(self) -> int | None:
        """Visible patches per sample of this model's masker (host arithmetic, no device work), or ``None``
        when the count varies per sample. Passing it to :meth:`forward` spares the sparse-encoder check."""
        hidden = self.masker.num_hidden(self.grid)
        return None if hidden is None else self.encoder.num_patches - hidden

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, num_visible: int | None = None) -> MaskedOutput:
        """``num_visible``: with a ``mask`` whose visible count per sample is known to the caller (the engine
        draws it from this model's fixed-count masker), skip the check that would sync the device."""
        n = self.encoder.num_patches
        if mask is None:
            mask = self.draw_mask(images.shape[0], generator, images.device)
            num_visible = self.num_visible()
        else:
            mask = mask.to(device=images.device, dtype=torch.bool)
            if mask.shape != (images.shape[0], n):
                raise ValueError(f"mask must be [B, N] = [{images.shape[0]}, {n}], got {list(mask.shape)}")
            if self.encoder.sparse and num_visible is None:
                counts = (~mask).sum(dim=1)
                if bool((counts != counts[0]).any()):
                    raise ValueError("a sparse encoder needs the same number of visible patches in every sample")
        latent = self.encoder(images, mask, num_visible=num_visible)  # [B, P + n_vis, D]
        pred = self.decoder(latent, mask)  # [B, N, D_t]
        target = self.target(images)  # [B, N, D_t]
        loss = self.loss(pred, target, mask)
        return MaskedOutput(loss=loss, pred=pred, mask=mask, target=target)

    def no_weight_decay(self) -> set[str]:
        """Parameter names (as in ``named_parameters``) that get no weight decay besides biases and norms."""
        names = set()
        for child_name, child in self.named_children():
            if hasattr(child, "no_weight_decay"):
                names |= {f"{child_name}.{n}" for n in child.no_weight_decay()}
        return names


def _flatten_state_dict(module: MaskedModel, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        owner, _, inner = rest.partition(".")
        if owner in _FLAT:
            state_dict[prefix + inner] = state_dict.pop(key)


def _unflatten_state_dict(module: MaskedModel, state_dict: dict, prefix: str, *args) -> None:
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        owner = module._flat_owner.get(rest)
        if owner is not None:
            state_dict[f"{prefix}{owner}.{rest}"] = state_dict.pop(key)
