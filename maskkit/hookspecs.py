"""The maskkit plugin contract: every hook a plugin may implement, one documented function each.

This module is the plugin reference manual. A plugin is any module or object with functions named like the
hooks below and marked with :data:`maskkit.hookimpl`; a third-party package advertises it through the
entry-point group ``maskkit``::

    # pyproject.toml of your plugin
    [project.entry-points.maskkit]
    my_masking = "my_masking.plugin"

    # my_masking/plugin.py
    import maskkit

    @maskkit.hookimpl
    def maskkit_add_maskers():
        return {"checkerboard": CheckerboardMasker}

maskkit's own MAE components are registered by :mod:`maskkit.builtin.plugin` through these very hooks.
Set ``MASKKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to load no entry points (built-ins only).

Rules:

* Component hooks (``maskkit_add_*``) return ``{name: factory}``. A factory is a class or function whose
  keyword arguments are the recipe keys (``masker: {name: block, ratio: 0.5}`` calls
  ``factory(ratio=0.5)``). Names are snake_case and unique across all plugins: a clash is an error naming both
  plugins. All results are collected (none "wins").
* Event hooks (``maskkit_train_*``, ``maskkit_step_*``...) are called for every plugin; their return values
  are ignored. Implementations may take any subset of the listed arguments (pluggy passes by name).
* Hooks only grow: new arguments may be added, nothing is renamed or removed.
* Failures are reported by plugin name: a component hook that raises leaves its whole plugin out (listed by
  ``maskkit plugins``, like a plugin that fails to import); an exception from any other plugin code stops the
  command with one line ``plugin 'NAME' failed: ...`` (exit 2), and ``maskkit compare`` records it as the
  failure of that run.

The masker contract (version 2: a masker that looks at the image, the model and the loss)
---------------------------------------------------------------------------------------------

A masker is called ``masker(batch_size, grid, *, generator, device, **context)`` and returns a bool mask
``[B, N]`` (True = hidden), or a :class:`maskkit.MaskDraw` ``(mask, extras)``. Everything beyond that is asked
for by name, as pluggy hook implementations take the arguments they name:

* **Context.** Keyword-only parameters of ``__call__`` (of ``forward`` for an ``nn.Module`` masker that does
  not override ``__call__``) named from :data:`maskkit.MASKER_CONTEXT` receive: ``images`` (the batch as the
  encoder sees it, ``[B, C, H, W]`` on the device), ``step`` (global optimizer step), ``epoch`` (fractional),
  ``progress`` (the fraction of the run trained, step / total steps: a schedule over the whole run),
  ``model`` (the unwrapped :class:`maskkit.MaskedModel`: run its encoder or a teacher under ``torch.no_grad``)
  and ``rows`` (this process's rows of the global batch). Another keyword-only parameter without a default is
  refused when the model is built, with one line naming the masker and the allowed names.
  :func:`maskkit.interfaces.masker_context` is the rule, shared by the trainer, ``masks show`` and compare.
* **Where it is drawn.** A *blind* masker (no ``images``/``model``, no trainable parameters, no
  ``aux_losses``) is drawn by the training loop for the whole global batch from a generator seeded by
  ``(seed, micro_step)``, and every process keeps its rows. Any other masker is drawn inside
  ``MaskedModel.forward`` (so DDP and FSDP see its parameters), from the same generator on every process,
  with ``rows`` saying which rows of the global batch it draws: draw randomness with
  ``maskkit.masking.noise(batch_size, n, generator=..., device=..., rows=rows)`` and two processes with batch B
  draw exactly what one process with batch 2B draws. ``maskkit.masking.mask_from_scores`` turns scores into
  a mask with an exact count.
* **State and parameters.** A masker may subclass ``nn.Module`` too: it becomes the model's child ``masker``,
  its parameters and buffers are saved in checkpoints under ``masker.*`` (``--resume`` is exact) and left out
  of ``maskkit export``; its trainable parameters get their own AdamW group, learning rate = base x
  ``lr_scale`` (an attribute, 1.0 by default; any component may set one). Under DDP, buffers follow rank 0's;
  under FSDP each process updates its own buffers, so keep buffer updates independent of the local batch.
  Create buffers with their final shape in the constructor (a buffer sized by the patch grid takes the
  ``grid`` wiring argument), so that the checkpoint's state loads into them on ``--resume``.
* **Auxiliary losses.** After the main loss, ``aux_losses(**named) -> {name: scalar}`` is called on every
  component that defines it (masker, encoder, decoder, target, loss) with the :data:`maskkit.AUX_CONTEXT`
  names it declares: ``images``, ``mask``, ``pred``, ``target``, ``patch_loss`` (``[B, N]``, detached:
  ``Loss.per_patch`` or the squared error), ``latent``, ``model``, ``extras`` (the ``MaskDraw``'s), ``step``,
  ``epoch``, ``progress``. They are added to the training loss, returned in ``MaskedOutput.aux`` as ``"masker.<name>"``
  and logged in ``metrics.jsonl`` as ``aux/masker.<name>`` beside ``loss_main`` (``loss`` stays the total).
  A masker's parameters train only through them: the mask is discrete. (The masker's are called only when it
  drew the step's mask: ``model(images, mask=...)`` leaves them out.)
* **Build-time check.** A masker that needs something of the model it is composed with (a [CLS] token, a
  teacher target) defines ``check_model(model) -> None`` (:meth:`maskkit.Masker.check_model`; optional, the
  default accepts every model). :class:`maskkit.MaskedModel` calls it with itself once its components are set
  (and for another masker object a plugin swaps in), so a recipe mistake is refused when the model is built,
  before a run folder is written: ``maskkit.ConfigError(key, message)`` with ``key`` relative to the masker's
  section becomes ``recipe.yaml: masker.<key>: message`` (exit 2). It inspects (``model.target``,
  ``model.encoder.prefix_attention_unavailable()``...), it does not run the model.
* **Checks.** Whatever a masker returns is checked before the encoder sees it: a ``torch.bool`` tensor of
  shape ``[B, N]`` on the device, hiding exactly ``num_hidden(grid)`` patches in every sample when that is an
  ``int``. On the CPU the count is checked on the host at every step; on a GPU on the host for the first
  micro-steps of a run, then by a device-side assertion (no sync). A wrong mask is a one-line
  :class:`maskkit.errors.MaskError` naming the masker (and the plugin that registered it), what it declared
  and what came back (the CLI exits 2). ``maskkit masks show NAME`` prints what the masks really hide;
  ``maskkit.masking.check_masker`` is the same check for scripts and ``compare``.
* **Determinism.** Same seed and data, same masks; ``--resume`` is exact (state is in the checkpoint); two
  processes draw what one draws when randomness comes from ``noise(rows=...)``. A masker whose masks of a
  sample depend on the rest of the batch cannot promise the last: say so in its docstring and set
  ``rows_invariant = False`` in its :class:`maskkit.testing.ContextMaskerContract` test.
* **Tests and cost.** ``maskkit.testing.ContextMaskerContract`` and ``LearnableMaskerContract`` check all of
  the above on real images; ``maskkit bench --masker NAME[,key=value]`` measures the cost per step against
  ``random``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from maskkit.engine.trainer import Trainer

hookspec = pluggy.HookspecMarker("maskkit")

Factory = Callable[..., Any]


# --------------------------------------------------------------------------------------------------------
# Components: each returns {name: factory}. Collected from every plugin.
# --------------------------------------------------------------------------------------------------------


@hookspec
def maskkit_add_maskers() -> Mapping[str, Factory]:
    """Masking strategies: factories returning a :class:`maskkit.Masker` (see "The masker contract" above:
    a masker may ask for the images, the model, the step, and train its own parameters).

    The builder passes the wiring arguments the factory accepts, listed on :class:`maskkit.Masker` (the
    encoder's width ``in_dim``, its patch grid ``grid``); recipes must not set them. Built-in: ``random``
    (MAE's argsort-of-noise masking).
    """


@hookspec
def maskkit_add_encoders() -> Mapping[str, Factory]:
    """Encoders: factories returning a :class:`maskkit.Encoder`.

    Built-in: every timm ViT (``vit_*``), run sparse on the visible tokens (``dense=True``: all tokens).
    """


@hookspec
def maskkit_add_decoders() -> Mapping[str, Factory]:
    """Decoders: factories returning a :class:`maskkit.Decoder`.

    The builder passes the wiring arguments the factory accepts, listed on :class:`maskkit.Decoder` (the
    encoder's width and geometry, the target's size per patch); recipes must not set them. Built-in: ``mae``.
    """


@hookspec
def maskkit_add_targets() -> Mapping[str, Factory]:
    """Targets: factories returning a :class:`maskkit.Target`.

    The builder passes the wiring arguments the factory accepts, listed on :class:`maskkit.Target` (the
    encoder's geometry, and the encoder itself for teacher targets). Built-in: ``pixels``, ``norm_pixels``.
    """


@hookspec
def maskkit_add_losses() -> Mapping[str, Factory]:
    """Losses: factories returning a :class:`maskkit.Loss`. Built-in: ``mse``, ``l1``, ``smooth_l1``, ``cosine``."""


@hookspec
def maskkit_add_datasets() -> Mapping[str, Factory]:
    """Datasets: factories returning a ``torch.utils.data.Dataset`` of ``(uint8 image [C, H, W], label)``.

    The dataset also carries ``in_chans``, ``mean`` and ``std``.

    The builder passes the wiring arguments the factory accepts: ``split`` ("train" or "test").

    A dataset of image files may also offer ``encoded(index) -> (EncodedImage or uint8 [C, H, W], label)``
    (:mod:`maskkit.data.encoded`): JPEG bytes left undecoded for ``data.decode: device``, which pretraining
    then decodes on the training device. Without it, ``data.decode: device`` is refused in one line.

    Built-in: ``fashion_mnist``, ``image_folder`` (which offers ``encoded``).
    """


@hookspec
def maskkit_add_recipes() -> Mapping[str, Path]:
    """Recipe files this plugin ships: ``{recipe_name: path_to_yaml}``.

    ``maskkit train NAME`` finds a recipe by this name when ``NAME`` is not a path; ``maskkit recipes`` lists
    them. Names clash like component names.
    """


# --------------------------------------------------------------------------------------------------------
# Engine events: called on every plugin, return values ignored.
# --------------------------------------------------------------------------------------------------------


@hookspec
def maskkit_train_start(trainer: "Trainer", model: "torch.nn.Module") -> None:
    """The run is set up (model built, optimizer made, resumed if asked) and the first step is next."""


@hookspec
def maskkit_step_start(trainer: "Trainer", model: "torch.nn.Module", step: int) -> None:
    """Optimizer step ``step`` (0-based) is about to run: the place for schedules (say, of the mask ratio)."""


@hookspec
def maskkit_step_end(trainer: "Trainer", model: "torch.nn.Module", step: int, loss: "torch.Tensor") -> None:
    """Optimizer step ``step`` is done (parameters updated). ``loss`` is this step's loss, still on device.

    The place for EMA teachers and per-step bookkeeping. Avoid ``loss.item()`` here: it forces a device sync.
    """


@hookspec
def maskkit_epoch_end(trainer: "Trainer", model: "torch.nn.Module", epoch: int) -> None:
    """Epoch ``epoch`` (0-based) finished."""


@hookspec
def maskkit_checkpoint_saved(trainer: "Trainer", path: Path, step: int) -> None:
    """A checkpoint was written (atomically) to ``path`` after ``step`` optimizer steps."""


@hookspec
def maskkit_train_end(trainer: "Trainer", model: "torch.nn.Module", run_dir: Path) -> None:
    """Training finished and the final checkpoint is written; evaluation follows."""
