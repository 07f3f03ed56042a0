"""The five interfaces of a masked-modeling step, and the conventions every implementation keeps.

One training step is always the same five moves::

    mask   = masker(B, grid, generator=g)          # bool [B, N], True = hidden (+ the context it names)
    latent = encoder(images, mask)                 # [B, P + N_visible, D] (sparse) or [B, P + N, D] (dense)
    pred   = decoder(latent, mask)                 # [B, N, D_target]
    target = target(images)                        # [B, N, D_target]
    loss   = loss(pred, target, mask)              # scalar
    loss  += sum of every component's aux_losses(...) # optional, by name (AUX_CONTEXT)

Conventions (never broken):

* ``N = h * w`` patches in **row-major** order over the patch grid ``(h, w)``.
* A mask is a ``torch.bool`` tensor ``[B, N]`` with **True = hidden** (masked, to be predicted).
* Tokens are ``[B, T, D]``. Prefix tokens (cls, registers: ``P = encoder.num_prefix_tokens``) come first and
  are never masked.
* A *sparse* encoder processes the visible patches only, in increasing patch index, so every sample of a
  batch must hide the same number of patches: a sparse encoder requires a masker whose ``num_hidden`` is not
  ``None``. A *dense* encoder processes all ``N`` patches (hidden ones replaced by a mask token).
* Images are ``[B, C, H, W]`` float tensors, normalized by the data pipeline; ``H, W`` need not be equal,
  ``C`` is any channel count; ``H`` and ``W`` are multiples of the patch size.
* A masker receives the context it names (:data:`MASKER_CONTEXT`, :func:`masker_context`); what it returns
  is checked against what it declares before an encoder sees it (:func:`maskkit.masking.check_mask`). The
  whole masker contract is in :mod:`maskkit.hookspecs`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable

import attrs
import torch
from torch import nn

from maskkit.errors import ConfigError, did_you_mean

Grid = tuple[int, int]


#: What a masker may ask for, by naming keyword-only parameters of ``__call__`` (the way a pluggy hook
#: implementation takes only the arguments it names). A masker receives exactly the names it declares.
MASKER_CONTEXT: dict[str, str] = {
    "images": "the batch as the encoder sees it, [B, C, H, W] on the device (this process's rows)",
    "step": "the global optimizer step (int, 0-based); 0 outside training",
    "epoch": "the fractional epoch (float, step / steps per epoch); 0.0 outside training",
    "progress": "the fraction of the run trained (float, step / total steps, in [0, 1)); 0.0 outside training",
    "model": "the MaskedModel (unwrapped), to run its encoder or a teacher without gradients",
    "rows": "this process's rows of the global batch (a slice); slice(0, B) in one process",
}

#: What ``aux_losses`` of any component (masker, encoder, decoder, target, loss) may ask for, by name.
AUX_CONTEXT: dict[str, str] = {
    "images": "the batch [B, C, H, W]",
    "mask": "the step's mask [B, N], True = hidden",
    "pred": "the decoder's predictions [B, N, D]",
    "target": "the targets [B, N, D]",
    "patch_loss": "the loss per patch [B, N], detached (Loss.per_patch, or the mean squared error)",
    "latent": "the encoder's output [B, P + N_visible, D] (sparse) or [B, P + N, D] (dense)",
    "model": "the MaskedModel (unwrapped)",
    "extras": "what the masker returned beside the mask (MaskDraw.extras; {} for a plain mask)",
    "step": "the global optimizer step (int)",
    "epoch": "the fractional epoch (float)",
    "progress": "the fraction of the run trained (float, step / total steps)",
}


#: Keyword-only parameters of a masker's ``__call__`` that are not context: the drawing arguments every masker has.
_MASKER_ARGUMENTS = ("generator", "device")


def _parameters(func: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # builtins without a signature: they ask for nothing
        return None


def _masker_call(masker: Any) -> Callable:
    """The function that runs when ``masker(...)`` is called: ``forward`` for an ``nn.Module`` that does not
    override ``__call__``, else ``__call__``."""
    if isinstance(masker, nn.Module) and type(masker).__call__ is nn.Module.__call__:
        return masker.forward
    return masker.__call__ if not inspect.isfunction(masker) else masker


def masker_context(masker: Any, name: str | None = None) -> tuple[str, ...]:
    """The :data:`MASKER_CONTEXT` names ``masker`` asks for: the keyword-only parameters of its ``__call__``
    (``forward`` for an ``nn.Module`` masker that does not override ``__call__``), in declaration order.

    A keyword-only parameter without a default that is neither context nor ``generator``/``device`` can never
    be given, so it is refused with a one-line :class:`~maskkit.errors.ConfigError` naming the masker and the
    names it may ask for (``name``: the masker's registry name for that message; its class name by default).
    ``**kwargs`` asks for nothing (as in pluggy, a masker receives what it names).
    """
    params = _parameters(_masker_call(masker)) or {}
    names = []
    for arg, param in params.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or arg in _MASKER_ARGUMENTS:
            continue
        if arg in MASKER_CONTEXT:
            names.append(arg)
        elif param.default is inspect.Parameter.empty:
            raise ConfigError("masker", f"{name or type(masker).__name__} asks for {arg!r}, which maskkit "
                              f"does not give a masker{did_you_mean(arg, MASKER_CONTEXT)}; a masker may ask for: "
                              f"{', '.join(MASKER_CONTEXT)}")
    return tuple(names)


def aux_context(component: Any, name: str | None = None) -> tuple[str, ...] | None:
    """The :data:`AUX_CONTEXT` names that ``component.aux_losses`` asks for, or ``None`` when the component
    has no ``aux_losses``. A required parameter outside :data:`AUX_CONTEXT` is refused with a one-line
    :class:`~maskkit.errors.ConfigError`."""
    func = getattr(component, "aux_losses", None)
    if func is None:
        return None
    params = _parameters(func) or {}
    names = []
    for arg, param in params.items():
        if param.kind not in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            continue
        if arg in AUX_CONTEXT:
            names.append(arg)
        elif param.default is inspect.Parameter.empty:
            raise ConfigError("", f"{name or type(component).__name__}.aux_losses asks for {arg!r}, which maskkit does "
                              f"not give{did_you_mean(arg, AUX_CONTEXT)}; aux_losses may ask for: "
                              f"{', '.join(AUX_CONTEXT)}")
    return tuple(names)


def is_blind(masker: Any, context: tuple[str, ...] | None = None) -> bool:
    """Whether ``masker`` can be drawn outside the model, for the whole global batch at once: it names neither
    ``images`` nor ``model``, has no trainable parameters and no ``aux_losses``. The engine draws a blind
    masker in the training loop (every rank keeps its slice) and any other inside ``MaskedModel.forward``
    (so DDP and FSDP see its parameters), with ``rows`` telling it which rows of the global batch it draws.
    ``context``: the masker's :func:`masker_context` when the caller has it already."""
    context = masker_context(masker) if context is None else context
    if {"images", "model"} & set(context) or getattr(masker, "aux_losses", None) is not None:
        return False
    return not (isinstance(masker, nn.Module) and any(p.requires_grad for p in masker.parameters()))


@attrs.frozen
class MaskDraw:
    """What a masker may return instead of a bare mask: the mask and ``extras``, tensors handed on to its own
    ``aux_losses(extras=...)`` in the same step (they may carry gradients, e.g. the log-probabilities of a
    learned masker's sampled mask)."""

    mask: torch.Tensor
    extras: dict = attrs.field(factory=dict)


class Masker(ABC):
    """Decides which patches are hidden.

    A *blind* masker is a plain object configured by keyword arguments. All randomness comes from
    ``generator`` so masks are reproducible; the mask is created on ``device`` (never on the host and
    copied) so GPU training does not wait on the CPU.

    A masker may look at the batch, the model and the schedule by naming keyword-only parameters of
    ``__call__`` from :data:`MASKER_CONTEXT` (``images``, ``step``, ``epoch``, ``progress``, ``model``,
    ``rows``); it
    receives exactly those. It may be an ``nn.Module`` too (subclass both, in either order, and define
    ``forward`` or ``__call__``): its parameters train with the
    model's optimizer (``lr_scale`` attribute for their own learning rate), its parameters and buffers are
    saved in checkpoints and left out of exports. It may return a :class:`MaskDraw` to hand tensors to its
    ``aux_losses``, and define ``aux_losses(**named) -> {name: scalar}`` taking names from
    :data:`AUX_CONTEXT`; those losses are added to the training loss and logged by name.

    Whatever a masker returns is checked against what it declares: a bool ``[B, N]`` mask hiding exactly
    ``num_hidden(grid)`` patches in every sample when that is an ``int``.

    The builder passes the wiring arguments the constructor accepts (a recipe may not set them): ``in_dim``
    (the encoder's width D, for a masker with a head on the encoder's features) and ``grid`` (the encoder's
    patch grid ``(h, w)``, for a masker whose state is sized by it, e.g. a buffer ``[h * w]`` of per-patch
    statistics: created in the constructor, it loads from a checkpoint on ``--resume``).

    A masker that needs something of the model it is composed with (a [CLS] token, a teacher target) says so in
    :meth:`check_model`, called when the model is built.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """An ``nn.Module`` masker that defines ``forward`` and not ``__call__`` is called through
        ``nn.Module.__call__`` whichever base comes first (``class M(Masker, nn.Module)`` as well as
        ``class M(nn.Module, Masker)``): otherwise the abstract ``Masker.__call__`` would shadow it when
        ``Masker`` is listed first, and the class could not be instantiated."""
        super().__init_subclass__(**kwargs)
        if (issubclass(cls, nn.Module) and cls.__call__ is Masker.__call__
                and cls.forward is not nn.Module.forward):
            cls.__call__ = nn.Module.__call__

    @abstractmethod
    def __call__(
        self,
        batch_size: int,
        grid: Grid,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Return a bool mask ``[batch_size, h * w]``, True = hidden, for ``grid = (h, w)``.

        ``generator`` must live on ``device`` when given (``torch.Generator(device=...)``).
        """

    @abstractmethod
    def num_hidden(self, grid: Grid) -> int | None:
        """How many patches every sample hides on ``grid``, or ``None`` when the count varies per sample.

        A sparse encoder needs an ``int`` here; recipe validation refuses the pair otherwise.
        """

    def check_model(self, model: Any) -> None:
        """Refuse a model this masker cannot work with; optional (the default accepts every model).

        :class:`maskkit.MaskedModel` calls it with itself (``model.encoder``, ``model.target``...) once all its
        components are set, and again for another masker object a plugin swaps in, so a recipe mistake (AttMask
        on an encoder without a [CLS] token, a teacher source without a teacher target) is refused when the
        model is built: before a run folder is written or a step runs. Inspect, do not run the model. Refuse
        with ``maskkit.ConfigError(key, message)``, ``key`` relative to the masker's section: ``"source"`` is
        reported as ``recipe.yaml: masker.source: message`` and ``""`` as ``recipe.yaml: masker: message``;
        the message names any other key to change (``encoder.class_token``). A masker that does not subclass
        :class:`Masker` may define it too.
        """
        return None


class Encoder(nn.Module, ABC):
    """Images (+ mask) to latent tokens.

    Attributes every encoder sets: ``sparse`` (bool, see the module docstring), ``embed_dim`` (D),
    ``img_size`` ``(H, W)``, ``patch_size`` ``(ph, pw)``, ``in_chans`` (C), ``grid`` ``(H // ph, W // pw)``,
    ``num_prefix_tokens`` (P).
    """

    sparse: bool
    embed_dim: int
    img_size: Grid
    patch_size: Grid
    in_chans: int
    grid: Grid
    num_prefix_tokens: int
    #: names of parameters (top-level attributes) that exist only for pretraining, such as a mask token:
    #: :meth:`export_state_dict` leaves them out
    PRETRAINING_ONLY: tuple[str, ...] = ()

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a downstream model loads (``maskkit export``): ``state_dict()`` without the
        pretraining-only parameters (:attr:`PRETRAINING_ONLY`), under the backbone library's names. An encoder
        whose export needs more (renamed or reshaped weights) overrides this; the encoder decides, not the CLI."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] not in self.PRETRAINING_ONLY}

    def export_arguments(self, recipe_arguments: dict) -> dict | None:
        """The keyword arguments that build this backbone in its own library (timm's ``create_model``) from
        its recipe section's arguments, so ``maskkit export`` can print how to load the file; ``None`` (the
        default) when there is no such library call."""
        return None

    def prefix_attention(self, images: torch.Tensor) -> torch.Tensor:
        """The [CLS] token's attention to each patch in the last block, per head, on the whole image, without
        gradients: ``[B, C, H, W] -> [B, heads, N]`` (softmax weights; each row sums to at most 1, the prefix
        tokens take the rest). What attention-guided maskers (AttMask) rank patches by. It runs in the
        encoder's current mode; a caller that wants it deterministic (no dropout, no stochastic depth) puts the
        encoder in eval mode around the call (:func:`maskkit.toolkit.eval_mode`, as AttMask does). Read the
        weights inside the encoder's own forward (forward hooks), not by calling its layers afterwards: under
        FSDP2 a block's parameters are resharded once its forward ends. Run that forward eagerly
        (``with torch.compiler.set_stance("force_eager")``): forward hooks do not fire inside ``torch.compile``'d
        code, and ``train.compile`` may have compiled the blocks (``train.compile_scope: blocks``).

        Optional: the default raises ``NotImplementedError``, and so must an encoder without a [CLS] token
        (register tokens alone are not one) or without such attention; the built-in timm ViT encoder
        implements it. An encoder that implements it but not for every configuration says which in
        :meth:`prefix_attention_unavailable`."""
        raise NotImplementedError(f"{type(self).__name__} does not give its [CLS] attention (prefix_attention)")

    def prefix_attention_unavailable(self) -> str | None:
        """Why :meth:`prefix_attention` would raise ``NotImplementedError`` (one line, naming the recipe key to
        change when there is one, e.g. ``encoder.class_token``), or ``None`` when it gives the weights. Cheap: it
        runs nothing, so a masker that ranks by the attention checks it when the model is built
        (``Masker.check_model``) and a recipe mistake is refused before training.

        The default: ``None`` for an encoder class that overrides :meth:`prefix_attention`, else the reason the
        default :meth:`prefix_attention` gives; an encoder whose :meth:`prefix_attention` refuses some
        configurations (the built-in ViT without a [CLS] token) overrides this too."""
        if type(self).prefix_attention is Encoder.prefix_attention:
            return f"{type(self).__name__} does not give its [CLS] attention (prefix_attention)"
        return None

    @abstractmethod
    def forward(self, images: torch.Tensor, mask: torch.Tensor, *, num_visible: int | None = None) -> torch.Tensor:
        """Encode ``images [B, C, H, W]`` under ``mask [B, N]``.

        Returns ``[B, P + N_visible, D]`` for a sparse encoder (visible patches in increasing patch index;
        ``num_visible`` may be passed when the caller knows it, which spares a device-to-host sync) and
        ``[B, P + N, D]`` for a dense one.
        """

    @abstractmethod
    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Encode the whole image, nothing hidden: ``[B, C, H, W] -> [B, P + N, D]`` (final norm applied).

        This is what evaluation (kNN, linear probe) and export use.
        """


class Decoder(nn.Module, ABC):
    """Latent tokens to one prediction per patch.

    The builder passes the wiring arguments the constructor accepts (a recipe may not set them): ``in_dim``
    (the encoder's D), ``out_dim`` (the target's D per patch), ``grid``, ``num_prefix_tokens``, ``patch_size``,
    ``in_chans``, ``img_size`` (the encoder's), and ``sparse`` (the encoder's mode: a decoder that needs dense
    latents can refuse a sparse encoder at build time).
    """

    @abstractmethod
    def forward(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``latent`` from the encoder (sparse or dense: tell by ``latent.shape[1]``), ``mask [B, N]``.

        Returns predictions ``[B, N, out_dim]`` for every patch (the loss decides which ones count).
        """


class Target(nn.Module, ABC):
    """What the decoder must predict, per patch.

    The builder passes the wiring arguments the constructor accepts (a recipe may not set them):
    ``patch_size``, ``in_chans``, ``grid``, ``img_size`` (the encoder's) and ``encoder`` (the module itself,
    for teacher targets).

    ``dim`` is the size of one patch's target.
    """

    dim: int

    @abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, C, H, W] -> target [B, N, dim]``, computed without gradients."""

    def to_pixels(self, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """Map predictions ``[B, N, dim]`` back to patch pixels ``[B, N, ph * pw * C]`` in the images' scale,
        for pictures of reconstructions; ``None`` (the default) when the target is not pixels."""
        return None


class Loss(nn.Module, ABC):
    """Compares prediction and target."""

    @abstractmethod
    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``pred, target [B, N, D]``, ``mask [B, N]`` (True = hidden) -> scalar loss."""

    def per_patch(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of every patch, ``pred, target [B, N, D] -> [B, N]``, before the mask selects which count.

        It is what ``aux_losses(patch_loss=...)`` receives (detached). The default is the mean squared error;
        a loss that is not a mean of per-patch terms may keep it or give its closest per-patch measure.
        """
        return (pred.float() - target.float()).square().mean(dim=-1)


@attrs.frozen
class MaskedOutput:
    """What a :class:`MaskedModel` returns.

    ``loss`` scalar, the training loss: ``main_loss`` plus every auxiliary loss; ``pred [B, N, D_target]``;
    ``mask [B, N]`` bool, True = hidden; ``target [B, N, D_target]``; ``aux``: the auxiliary losses by
    ``"<component>.<name>"`` (``"masker.rank"``), empty when no component defines ``aux_losses``;
    ``main_loss``: the loss component's scalar alone (``None`` only when built by hand without it).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    aux: dict = attrs.field(factory=dict)
    main_loss: torch.Tensor | None = None
