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
    """Masking strategies: factories returning a :class:`maskkit.Masker`.

    Built-in: ``random`` (MAE's argsort-of-noise masking).
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

    Built-in: ``fashion_mnist``, ``image_folder``.
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
