"""The model that composes masker, encoder, decoder, target and loss (MAE when built from the MAE recipe).

State-dict keys are flattened to the official MAE names: ``encoder.blocks.0...`` is saved as ``blocks.0...``
and ``decoder.decoder_pred...`` as ``decoder_pred...``, so an official checkpoint (``{"model": state_dict}``)
loads with ``strict=True``. Parameters of the target and loss (teacher targets) keep their ``target.``/``loss.``
prefixes, and so do a masker's (an ``nn.Module`` masker is a child module: ``masker.*``).

Masker contract v2: the masker receives the context it names (:func:`maskkit.interfaces.masker_context`),
what it returns is checked (:func:`maskkit.masking.check_mask`) before the encoder sees it, and after the
main loss every component's ``aux_losses`` is called with the :data:`~maskkit.interfaces.AUX_CONTEXT` names
it declares; those losses are added to ``loss`` and returned by name in ``MaskedOutput.aux``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from maskkit.errors import ConfigError, PluginError
from maskkit.interfaces import (
    Decoder,
    Encoder,
    Loss,
    MaskDraw,
    MaskedOutput,
    Masker,
    Target,
    aux_context,
    is_blind,
    masker_context,
)
from maskkit.masking import draw_checked

_FLAT = ("encoder", "decoder")
COMPONENTS = ("masker", "encoder", "decoder", "target", "loss")


class MaskedModel(nn.Module):
    """``images [B, C, H, W] -> MaskedOutput(loss, pred [B, N, D], mask [B, N], target [B, N, D], aux)``.

    ``forward(images, mask=None, generator=None)``: without ``mask`` the masker draws one (from ``generator``,
    with the context it asks for); with ``mask`` that exact masking is used, which reproduces any given mask.
    ``masker_name`` is how errors name the masker (the builder passes its registry name); ``masker_plugin``, the
    plugin that registered it when that is not maskkit, so a bad mask's error names the file to look at.
    """

    def __init__(self, masker: Masker, encoder: Encoder, decoder: Decoder, target: Target, loss: Loss, *,
                 masker_name: str | None = None, masker_plugin: str | None = None):
        super().__init__()
        self.masker_name = masker_name or type(masker).__name__
        self.masker_plugin = masker_plugin
        if encoder.sparse and masker.num_hidden(encoder.grid) is None:
            raise ConfigError("masker", f"{type(masker).__name__} hides a varying number of patches per sample, "
                                        "which a sparse encoder cannot batch; use a dense encoder "
                                        "(e.g. encoder.dense=true) or a fixed-count masker")
        self.masker = masker
        self._masker_seen: tuple[Any, tuple[str, ...], tuple[str, ...] | None] | None = None
        self.encoder = encoder
        self.decoder = decoder
        self.target = target
        self.loss = loss
        # refuse at build time a masker asking for what maskkit does not give, or refusing this model (check_model)
        self.masker_context()
        self._aux_names: dict[str, tuple[str, ...] | None] = {}
        for name in COMPONENTS[1:]:
            try:
                self._aux_names[name] = aux_context(getattr(self, name))
            except ConfigError as exc:
                raise exc.within(name) from None
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

    def masker_context(self) -> tuple[str, ...]:
        """The context names the current masker asks for (inspected once per masker object: a plugin may swap
        the masker between steps)."""
        return self._masker_info()[0]

    def _masker_info(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """The masker's context names and aux-loss names; a new masker object is first checked against this model
        (its context names, its ``aux_losses`` signature, its :meth:`~maskkit.Masker.check_model`)."""
        seen = self._masker_seen
        if seen is None or seen[0] is not self.masker:
            check = getattr(self.masker, "check_model", None)
            try:
                names = masker_context(self.masker, self.masker_name)
                aux = aux_context(self.masker, self.masker_name)
                if check is not None:
                    check(self)
            except ConfigError as exc:
                raise (exc if exc.key == "masker" or exc.key.startswith("masker.") else exc.within("masker")) from None
            seen = self._masker_seen = (self.masker, names, aux)
        return seen[1], seen[2]

    @property
    def masker_label(self) -> str:
        """The masker as errors name it: ``half``, or ``half (plugin /path/to/half.py)`` for a plugin's."""
        return f"{self.masker_name} (plugin {self.masker_plugin})" if self.masker_plugin else self.masker_name

    def masker_is_blind(self) -> bool:
        """Whether the engine may draw the masks outside the forward, for the global batch at once
        (:func:`maskkit.interfaces.is_blind`); otherwise they are drawn inside :meth:`forward`."""
        return is_blind(self.masker, self.masker_context())

    def draw(self, batch_size: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None, *, images: torch.Tensor | None = None, step: int = 0,
             epoch: float = 0.0, progress: float = 0.0, rows: slice | None = None,
             sync_checks: bool = True) -> MaskDraw:
        """Draw a :class:`~maskkit.interfaces.MaskDraw` from this model's masker on this model's grid, giving it
        the context it names, and check the mask (:func:`maskkit.masking.check_mask`; ``sync_checks=False``
        checks the count with a device-side assertion instead of a host sync).

        ``images [batch_size, C, H, W]`` is required for a masker that looks at them; ``rows`` defaults to
        ``slice(0, batch_size)`` (one process); ``device`` defaults to the images' device.
        """
        names = self.masker_context()
        if images is not None and device is None:
            device = images.device
        return draw_checked(self.masker, batch_size, self.grid, generator=generator, device=device,
                            context={"images": images, "step": step, "epoch": epoch, "progress": progress,
                                     "model": self, "rows": rows},
                            name=self.masker_label, sync=sync_checks, names=names)

    def draw_mask(self, batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, **context: Any) -> torch.Tensor:
        """A checked mask ``[batch_size, N]`` from this model's masker on this model's grid (``context``: the
        keyword arguments of :meth:`draw`, e.g. ``images=`` for a masker that looks at them)."""
        return self.draw(batch_size, generator, device, **context).mask

    def num_visible(self) -> int | None:
        """Visible patches per sample of this model's masker (host arithmetic, no device work), or ``None``
        when the count varies per sample. Passing it to :meth:`forward` spares the sparse-encoder check."""
        hidden = self.masker.num_hidden(self.grid)
        return None if hidden is None else self.encoder.num_patches - hidden

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None, num_visible: int | None = None, step: int = 0,
                epoch: float = 0.0, progress: float = 0.0, rows: slice | None = None,
                sync_checks: bool = True) -> MaskedOutput:
        """``num_visible``: with a ``mask`` whose visible count per sample is known to the caller (the engine
        draws it from this model's fixed-count masker), skip the check that would sync the device.

        Without ``mask``, the masker draws one from ``generator`` with the context it names: these ``images``,
        ``step``, ``epoch``, ``progress``, ``rows`` (this process's rows of the global batch; ``slice(0, B)`` by
        default) and this model; the mask is checked (:meth:`draw`) before the encoder sees it. Every component's
        ``aux_losses`` is then added to the loss; the masker's only when it drew the mask.
        """
        n = self.encoder.num_patches
        extras: dict = {}
        drawn = None
        if mask is None:
            drawn = self.draw(images.shape[0], generator, images.device, images=images, step=step, epoch=epoch,
                              progress=progress, rows=rows, sync_checks=sync_checks)
            mask, extras = drawn.mask, drawn.extras
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
        main_loss = self.loss(pred, target, mask)
        aux = self._aux_losses(images=images, mask=mask, pred=pred, target=target, latent=latent, extras=extras,
                               step=step, epoch=epoch, progress=progress, masker_drew=drawn is not None)
        loss = main_loss
        for value in aux.values():
            loss = loss + value.float()
        return MaskedOutput(loss=loss, pred=pred, mask=mask, target=target, aux=aux, main_loss=main_loss)

    def _aux_losses(self, *, masker_drew: bool, **given: Any) -> dict[str, torch.Tensor]:
        """Call ``aux_losses`` of every component that defines it with the names it declares;
        ``{"<component>.<name>": scalar}``. The masker's only when it drew this step's mask (a mask given to
        :meth:`forward` has no extras of the masker's, and the masker did not choose it)."""
        names = {"masker": self._masker_info()[1] if masker_drew else None, **self._aux_names}
        if not any(v is not None for v in names.values()):
            return {}
        context = {**given, "model": self}
        patch_loss: list[torch.Tensor] = []

        def per_patch() -> torch.Tensor:  # [B, N], computed once, only when asked for
            if not patch_loss:
                pred, target = given["pred"].detach(), given["target"].detach()
                fn = getattr(self.loss, "per_patch", None)
                pred, target = pred.float(), target.float()  # fp32 under autocast too
                value = fn(pred, target) if fn is not None else (pred - target).square().mean(-1)
                patch_loss.append(value.detach())
            return patch_loss[0]

        aux = {}
        for component in COMPONENTS:
            wanted = names.get(component)
            if wanted is None:
                continue
            kwargs = {name: per_patch() if name == "patch_loss" else context[name] for name in wanted}
            result = getattr(self, component).aux_losses(**kwargs)
            label = self.masker_label if component == "masker" else type(getattr(self, component)).__name__
            if not isinstance(result, Mapping):
                raise PluginError(f"{component} {label}: aux_losses returned {type(result).__name__}, expected "
                                  "{name: scalar tensor}")
            for key, value in result.items():
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise PluginError(f"{component} {label}: aux_losses()[{key!r}] is {shape}, expected a scalar "
                                      "tensor")
                aux[f"{component}.{key}"] = value.sum()  # 0-d, and not a view (FSDP warns about views)
        return aux

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
