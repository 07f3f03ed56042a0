"""The plugin author's toolkit: argument validators and the recipe-folder hook, public and stable.

A component validates its constructor arguments and raises :class:`maskkit.ConfigError` naming the argument;
the builder adds the recipe file and section, so a user reads
``recipe.yaml: masker.ratio: expected a float in (0, 1), got 1.5``::

    from maskkit import toolkit

    class Stripes(maskkit.Masker):
        def __init__(self, rows: int = 4, ratio: float = 0.5):
            self.rows = toolkit.positive_int(rows, "rows")
            self.ratio = toolkit.ratio(ratio)

Each validator returns the value (converted: ``ratio`` gives a float) so that checking and assigning is one
line. Shipping recipes is one hook: ``maskkit_add_recipes = toolkit.recipes_hook(Path(__file__).parent /
"recipes")``. A masker that scores patches with a pass of the model runs it under :func:`eval_mode`, so that
its masks do not depend on dropout or stochastic depth drawn from the global RNG.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from torch import nn

from maskkit.errors import ConfigError, expected
from maskkit.registry import hookimpl

__all__ = ["ratio", "positive_int", "non_negative_int", "positive_float", "non_negative_float", "boolean",
           "one_of", "recipe_files", "recipes_hook", "eval_mode"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ratio(value: Any, key: str = "ratio") -> float:
    """A fraction strictly between 0 and 1 (a mask ratio), as a float."""
    if not _is_number(value) or not 0.0 < float(value) < 1.0:
        raise ConfigError(key, expected("a float in (0, 1)", value))
    return float(value)


def positive_int(value: Any, key: str) -> int:
    """An int >= 1 (``True`` is not an int here)."""
    if not _is_int(value) or value < 1:
        raise ConfigError(key, expected("a positive int", value))
    return value


def non_negative_int(value: Any, key: str) -> int:
    """An int >= 0."""
    if not _is_int(value) or value < 0:
        raise ConfigError(key, expected("an int >= 0", value))
    return value


def positive_float(value: Any, key: str) -> float:
    """A number > 0, as a float."""
    if not _is_number(value) or value <= 0:
        raise ConfigError(key, expected("a number > 0", value))
    return float(value)


def non_negative_float(value: Any, key: str) -> float:
    """A number >= 0, as a float."""
    if not _is_number(value) or value < 0:
        raise ConfigError(key, expected("a number >= 0", value))
    return float(value)


def boolean(value: Any, key: str) -> bool:
    """``true`` or ``false`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise ConfigError(key, expected("true or false", value))
    return value


def one_of(value: Any, choices: Iterable[Any], key: str) -> Any:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, expected(f"one of {', '.join(map(str, choices))}", value))
    return value


def recipe_files(folder: str | Path) -> dict[str, Path]:
    """``{file stem: path}`` of the ``*.yaml`` recipes in ``folder`` (sorted; empty when there is none): what
    ``maskkit_add_recipes`` returns for a plugin that ships recipes as package data."""
    folder = Path(folder)
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def recipes_hook(folder: str | Path) -> Callable[[], dict[str, Path]]:
    """A ready ``maskkit_add_recipes`` implementation for the recipes in ``folder``::

        maskkit_add_recipes = toolkit.recipes_hook(Path(__file__).resolve().parent / "recipes")
    """
    folder = Path(folder)

    @hookimpl
    def maskkit_add_recipes() -> dict[str, Path]:
        return recipe_files(folder)

    maskkit_add_recipes.__doc__ = f"The YAML recipes shipped in {folder.name}/, named by file stem."
    return maskkit_add_recipes


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``with toolkit.eval_mode(encoder): ...``: ``module`` and all its submodules in eval mode for the block
    (no dropout, no stochastic depth: a deterministic pass), then each submodule's own previous ``training``
    flag back, also when the block raises. For a masker's scoring pass of the model being trained: its masks
    then depend on the images, the weights and the masker's ``generator`` only, not on the global RNG.
    Gradients are not touched: add ``torch.no_grad()`` where the pass needs none."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
