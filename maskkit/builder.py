"""Recipe -> components -> model, with the wiring between components and errors that name the recipe key.

Wiring: a decoder needs the encoder's width and grid and the target's size per patch; a target needs the
patch size (and a teacher target the encoder). The builder passes these *wiring arguments* to every factory
whose signature accepts them; a recipe may not set them itself. :data:`WIRING` is the list, documented for
plugin authors on :class:`maskkit.Decoder`, :class:`maskkit.Target` and ``maskkit_add_datasets`` (a test
keeps those docs and this list equal, and the builder refuses to pass anything not in it).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Mapping

import torch

from maskkit.errors import ConfigError, did_you_mean, expected, first_line
from maskkit.model import MaskedModel
from maskkit.recipe import Recipe
from maskkit.registry import Registry, default_registry

WIRING = {
    "masker": ("in_dim", "grid"),
    "decoder": ("in_dim", "out_dim", "grid", "num_prefix_tokens", "patch_size", "in_chans", "img_size", "sparse"),
    "target": ("patch_size", "in_chans", "grid", "img_size", "encoder"),
    "dataset": ("split",),
}


def _signature(factory: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def _type_hints(factory: Callable) -> Mapping[str, Any]:
    func = getattr(factory, "func", factory)  # functools.partial
    func = func.__init__ if inspect.isclass(func) else func
    try:
        return typing.get_type_hints(func)
    except Exception:  # unresolvable annotations: skip type checks rather than fail
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """A light check of recipe values (plain YAML data) against a parameter's annotation."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # other annotations (callables, modules...) are not recipe data


def _describe(hint: Any) -> str:
    text = getattr(hint, "__name__", None) or str(hint)
    return text.replace("typing.", "").replace("NoneType", "None")


def build_component(registry: Registry, kind: str, spec: Mapping[str, Any], *, section: str | None = None,
                    file: str | None = None, wiring: Mapping[str, Any] | None = None) -> Any:
    """Build ``kind`` from a recipe spec ``{name: ..., **kwargs}``, checking argument names and types.

    ``wiring`` holds builder-provided arguments, passed only where the factory accepts them.
    """
    section = section or kind
    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name", expected("a registry name", name), file=file)
    try:
        entry = registry.get(kind, name)
    except ConfigError as exc:
        raise exc.within(section, file) from None
    wiring = dict(wiring or {})
    undeclared = set(wiring) - set(WIRING.get(kind, ()))
    if undeclared:  # a builder bug, not a user error: WIRING is what plugin authors are told
        raise AssertionError(f"the builder passes {sorted(undeclared)} to {kind}s but WIRING does not list them")
    sig = _signature(entry.factory)
    params = sig.parameters if sig else {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    hints = _type_hints(entry.factory)
    for key, value in spec.items():
        if key in WIRING.get(kind, ()):
            raise ConfigError(f"{section}.{key}", "is set by the builder from the other components; remove it",
                              file=file)
        if sig is not None and key not in params and not var_kw:
            user_args = [a for a in accepted if a not in WIRING.get(kind, ())]
            raise ConfigError(f"{section}.{key}", f"{name} has no argument {key!r}{did_you_mean(key, user_args)}; "
                              "it takes: "
                              f"{', '.join(user_args) or 'no arguments'}", file=file)
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"{section}.{key}", expected(_describe(hints[key]), value), file=file)
    kwargs = dict(spec)
    for key, value in wiring.items():
        if key in params:
            kwargs[key] = value
    try:
        return entry.factory(**kwargs)
    except ConfigError as exc:
        raise exc.within(section, file) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(section, f"{name}: {exc}", file=file) from None
    except (RuntimeError, ArithmeticError) as exc:  # torch or arithmetic refusing a value (encoder.depth: -1)
        raise ConfigError(section, f"{name}: {type(exc).__name__}: {first_line(str(exc), 200)}", file=file) from None


def recipe_registry(recipe: Recipe, registry: Registry | None = None, *, require: bool = False) -> Registry:
    """``registry`` (default: the installed plugins) plus the recipe's own ``plugins``. With ``require`` (to
    train) each must load, a one-line error on the recipe's ``plugins`` otherwise; without (to build a model,
    e.g. from a checkpoint) a missing one matters only if it provides a component the recipe names, whose error
    then says it failed to load, so a checkpoint trained with a hook-only plugin still loads without it."""
    registry = (registry or default_registry()).with_plugins(recipe.plugins)
    return registry.require_loaded(recipe.plugins, key="plugins", file=recipe.file) if require else registry


def masker_hidden(masker: Any, grid: tuple[int, int], *, file: str | None = None) -> int | None:
    """``masker.num_hidden(grid)``; a masker refusing the grid (simmim's ``scale``) raises its own key, which is
    then named within the ``masker`` section (``masker.scale: ...``)."""
    try:
        return masker.num_hidden(grid)
    except ConfigError as exc:
        raise (exc.within(None, file) if exc.key == "masker" or exc.key.startswith("masker.")
               else exc.within("masker", file)) from None


def build_model(recipe: Recipe, registry: Registry | None = None) -> MaskedModel:
    """The :class:`MaskedModel` a recipe describes (random init; nothing downloads).

    Validates the masker/encoder pairing before building anything heavy: a sparse encoder needs a masker that
    hides a fixed count. The recipe's ``plugins`` are loaded into (a copy of) ``registry`` first.
    """
    registry = recipe_registry(recipe, registry)
    file = recipe.file
    encoder = build_component(registry, "encoder", recipe.component("encoder"), file=file)
    masker = build_masker(recipe, registry, encoder)
    hidden = masker_hidden(masker, encoder.grid, file=file)
    if encoder.sparse and hidden is None:
        raise ConfigError("masker", f"{recipe.component('masker')['name']} hides a varying number of patches per "
                          f"sample, but encoder {recipe.component('encoder')['name']} is sparse (visible tokens "
                          "only); use a dense encoder or a fixed-count masker", file=file)
    common = {"patch_size": encoder.patch_size, "in_chans": encoder.in_chans, "grid": encoder.grid,
              "img_size": encoder.img_size}
    target = build_component(registry, "target", recipe.component("target"), file=file,
                             wiring={**common, "encoder": encoder})
    decoder = build_component(registry, "decoder", recipe.component("decoder"), file=file,
                              wiring={**common, "in_dim": encoder.embed_dim, "out_dim": target.dim,
                                      "num_prefix_tokens": encoder.num_prefix_tokens, "sparse": encoder.sparse})
    loss = build_component(registry, "loss", recipe.component("loss"), file=file)
    try:
        name = recipe.component("masker")["name"]
        plugin = registry.get("masker", name).plugin
        return MaskedModel(masker, encoder, decoder, target, loss, masker_name=name,
                           masker_plugin=None if plugin == "maskkit" else plugin)
    except ConfigError as exc:
        raise exc.within(None, file) from None


def build_masker(recipe: Recipe, registry: Registry | None = None, encoder: Any = None,
                 grid: tuple[int, int] | None = None) -> Any:
    """The recipe's masker, wired to ``encoder`` (``in_dim``: its width, for maskers with a head on its
    features; ``grid``: its patch grid, for maskers whose state is sized by it, unless ``grid`` is given, as
    ``maskkit masks show --grid`` does). Without ``encoder``, the recipe's encoder is built for its wiring (the
    global RNG is left as it was), so a masker can be built and checked alone."""
    registry = recipe_registry(recipe, registry)
    if encoder is None:
        with torch.random.fork_rng(devices=[]):
            encoder = build_component(registry, "encoder", recipe.component("encoder"), file=recipe.file)
    return build_component(registry, "masker", recipe.component("masker"), file=recipe.file,
                           wiring={"in_dim": encoder.embed_dim, "grid": tuple(grid or encoder.grid)})


def build_dataset(recipe: Recipe, split: str, registry: Registry | None = None, *,
                  in_chans: int | None = None) -> Any:
    """The dataset of the recipe's ``data`` section for ``split`` (``"train"`` or ``"test"``).

    ``in_chans``: the encoder's channel count; a dataset whose images have another (by the length of its
    ``mean``) is a one-line error naming ``data``, before any image meets the model.
    """
    registry = recipe_registry(recipe, registry)
    spec = recipe.dataset_spec()
    try:
        dataset = build_component(registry, "dataset", spec, section="data", file=recipe.file,
                                  wiring={"split": split})
    except FileNotFoundError as exc:
        raise ConfigError("data", str(exc), file=recipe.file) from None
    channels = len(getattr(dataset, "mean", None) or ())
    if in_chans is not None and channels and channels != in_chans:
        raise ConfigError("data", f"{spec.get('name')} gives {channels}-channel images, but the encoder takes "
                          f"{in_chans} (encoder.in_chans); make them agree", file=recipe.file)
    return dataset


def build_test_split(recipe: Recipe, train_set: Any, registry: Registry | None = None, *,
                     in_chans: int | None = None) -> Any:
    """The recipe's test split (:func:`build_dataset`), its labels indexing ``train_set``'s classes, matched by
    name (:func:`~maskkit.data.splits.align_test_classes`: a ``val/`` lacking some classes); a test class the
    training split lacks is a one-line error naming the recipe's file and ``data``."""
    from maskkit.data.splits import align_test_classes

    test_set = build_dataset(recipe, "test", registry, in_chans=in_chans)
    if not getattr(train_set, "classes", None):  # unlabelled, or a dataset that names no classes
        return test_set
    try:
        return align_test_classes(train_set, test_set)
    except ConfigError as exc:
        raise exc.within(None, recipe.file) from None
