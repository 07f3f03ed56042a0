"""Comparison specs: a base recipe, named variants, seeds, an evaluation and a matched budget, in one YAML file.

::

    description: MAE Table 1f on the quickstart data
    base: ../quickstart.yaml            # a recipe path (relative to this file) or a registered recipe name
    overrides: [train.log_every=10]     # optional, applied to the base for every variant
    variants:                           # name -> changes to the base (insertion order is the table's order)
      random75: {}                      #   the base as it is
      block50: {masker: {name: block, ratio: 0.5}}   # a whole section swapped
      ratio50: {masker.ratio: 0.5}      #   a dotted key set
      ratio60: [masker.ratio=0.6]       #   dotted overrides, as on the command line
    seeds: 3                            # seeds 0, 1, 2 (or a list: [0, 7]); init and masks vary with the seed
    data_seed: 0                        # data order and augmentations: the same in every run (default: base's)
    eval: {knn: true, linear: true}     # kNN k=20 cosine T=0.07 and/or a linear probe, on frozen features
    budget: {match: tokens, epochs: 10, reference: random75}   # or {match: epochs, epochs: 10}
    plugins: [my_masker.py]             # optional: one-file plugins or modules (paths relative to this file)

A variant may not change what every run of a comparison must share (:data:`SHARED_KEYS`): the seeds, the
data and its order, the evaluation, the batch and the budget. Those come from the base and the spec. Every
error is one line naming the spec file and the key (``spec.yaml: variants.block50.masker.name: ...``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import attrs
import yaml

from maskkit._validators import check_device
from maskkit.errors import ConfigError, did_you_mean, expected
from maskkit.recipe import SECTIONS, Recipe, load_recipe, parse_yaml, read_text_file, safe_load

SPEC_KEYS = ("description", "plugins", "base", "overrides", "variants", "seeds", "data_seed", "budget", "eval",
             "device")
BUDGET_KEYS = ("match", "epochs", "steps", "tokens", "reference")
EVAL_KEYS = ("knn", "linear", "baseline", "k", "temperature", "pool", "batch_size", "reconstructions",
             "mask_samples", "quick", "finetune")
# --quick: kNN on a fixed subset of the splits, no linear probe (for iterating on an idea, not for a table)
QUICK_TRAIN_IMAGES = 2000
QUICK_TEST_IMAGES = 1000
MATCHES = ("epochs", "tokens")
# Recipe keys that every run of a comparison shares; a variant changing one is refused.
SHARED_KEYS = (("seed",), ("data_seed",), ("data",), ("eval",), ("train", "epochs"), ("train", "max_steps"),
               ("train", "batch_size"), ("train", "accum_steps"), ("train", "device"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MISSING = object()
# What building a variant's model may raise outside a component's constructor (whose refusals the builder
# already turns into a ConfigError naming the section, e.g. ``encoder.depth: -1``): such an error becomes the
# spec's one-line error naming the variant.
BUILD_ERRORS = (ValueError, TypeError, RuntimeError, ArithmeticError)


@attrs.frozen
class Change:
    """One change a variant makes to the base: set ``key`` (dotted) to ``value`` (a whole section when the key
    has no dot)."""

    key: str
    value: Any

    def describe(self) -> str:
        return f"{self.key}={_inline(self.value)}"


@attrs.frozen
class Variant:
    """A named variant: its changes and the resolved recipe tree (base + spec overrides + changes)."""

    name: str
    changes: tuple[Change, ...]
    tree: dict = attrs.field(repr=False)

    def describe(self) -> str:
        return ", ".join(c.describe() for c in self.changes) or "(base)"

    @property
    def masker(self) -> dict:
        return dict(self.tree["masker"])


@attrs.frozen
class BudgetSpec:
    """``match: epochs``: every variant trains ``epochs`` (or ``steps``) steps. ``match: tokens``: every variant
    processes the encoder tokens that ``reference`` processes in ``epochs`` (or ``steps``), or ``tokens``."""

    match: str = "epochs"
    epochs: float | None = None
    steps: int | None = None
    tokens: int | None = None
    reference: str | None = None


@attrs.frozen
class EvalSpec:
    """What is measured after training, the same for every run. ``k``, ``temperature``, ``pool`` and
    ``batch_size`` default to the base recipe's ``eval`` section (MAE/DINO: k=20, cosine, T=0.07). The
    random-init ``baseline`` is scored by default: a variant below it learned nothing usable. ``quick``
    scores kNN on ``train_images`` / ``test_images`` of the splits and skips the linear probe and fine-tuning."""

    knn: bool = True
    linear: bool = False
    baseline: bool = True
    k: int = 20
    temperature: float = 0.07
    pool: str = "mean"
    batch_size: int = 256
    reconstructions: int = 6
    mask_samples: int = 8
    finetune: dict | None = None  # fine-tuning settings (maskkit.finetune.evaluation), None: no fine-tuning
    quick: bool = False
    train_images: int | None = None  # None: the whole split
    test_images: int | None = None

    def as_quick(self) -> "EvalSpec":
        """This evaluation in quick mode: kNN only, on a fixed subset (:data:`QUICK_TRAIN_IMAGES` /
        :data:`QUICK_TEST_IMAGES` images); no linear probe and no fine-tuning (the report says "kNN only")."""
        return attrs.evolve(self, quick=True, knn=True, linear=False, finetune=None, train_images=QUICK_TRAIN_IMAGES,
                            test_images=QUICK_TEST_IMAGES)

    def recipe_overrides(self) -> dict:
        """The ``eval`` section keys this spec sets on each run's evaluation recipe."""
        return {"k": self.k, "temperature": self.temperature, "pool": self.pool, "batch_size": self.batch_size}


@attrs.frozen
class CompareSpec:
    file: str
    description: str
    base: str
    base_tree: dict = attrs.field(repr=False)
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    data_seed: int
    budget: BudgetSpec
    eval: EvalSpec
    device: str | None = None
    plugins: tuple[str, ...] = ()  # the spec's own one-file plugins or modules, resolved (absolute paths)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def stem(self) -> str:
        return Path(self.file).stem


# -- helpers ------------------------------------------------------------------------------------------------


def _inline(value: Any) -> str:
    """``value`` as one line of flow-style YAML (``{name: block, ratio: 0.5}``, ``0.5``)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)
    return text.removesuffix("...\n").strip()


def _get(tree: dict, path: tuple) -> Any:
    node: Any = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` in ``tree`` (creating mappings on the way); ValueError when a parent is no mapping."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"cannot set {key}: {'.'.join(parts[:depth + 1])} is {child!r}, not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _check_key(key: Any, where: str, file: str) -> str:
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise ConfigError(where, f"bad key {key!r}: expected a recipe section or a dotted key such as "
                                 "masker.ratio", file=file)
    head = key.split(".")[0]
    if head not in SECTIONS:
        raise ConfigError(f"{where}.{key}", f"unknown key{did_you_mean(head, SECTIONS)}; a variant changes recipe "
                          f"sections ({', '.join(SECTIONS)}) or dotted keys inside them", file=file)
    return key


def _parse_override(item: Any, where: str, file: str) -> Change:
    if not isinstance(item, str):
        raise ConfigError(where, expected("a 'key.path=value' string", item), file=file)
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(where, f"bad override {item!r}: expected key.path=value", file=file)
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(where, f"bad override {item!r}: the value is not valid YAML", file=file) from None
    return Change(_check_key(key, where, file), value)


def _parse_changes(raw: Any, where: str, file: str) -> tuple[Change, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list):
        return tuple(_parse_override(item, f"{where}[{i}]" if len(raw) > 1 else where, file)
                     for i, item in enumerate(raw))
    if isinstance(raw, dict):
        return tuple(Change(_check_key(key, where, file), value) for key, value in raw.items())
    raise ConfigError(where, expected("a mapping of changes (masker: {...}, masker.ratio: 0.5), a list of "
                                      "key=value overrides, or nothing", raw), file=file)


def _int(value: Any, key: str, file: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, expected(f"an int >= {minimum}", value), file=file)
    return value


def _bool(value: Any, key: str, file: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, expected("true or false", value), file=file)
    return value


def _mapping(raw: Any, key: str, allowed: tuple[str, ...], file: str) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(key, expected("a mapping", raw), file=file)
    for name in raw:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", f"unknown key{did_you_mean(name, allowed)}; expected one of "
                                               f"{', '.join(allowed)}", file=file)
    return raw


# -- sections -----------------------------------------------------------------------------------------------


def _parse_seeds(raw: Any, file: str) -> tuple[int, ...]:
    if raw is None:
        return (0,)
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise ConfigError("seeds", expected("a positive count or a list of ints", raw), file=file)
        return tuple(range(raw))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        if len(set(raw)) != len(raw):
            raise ConfigError("seeds", f"repeated seed in {raw}", file=file)
        return tuple(raw)
    raise ConfigError("seeds", expected("a positive count (3 means seeds 0, 1, 2) or a list of ints", raw),
                      file=file)


def _parse_budget(raw: Any, variants: list[str], file: str) -> BudgetSpec:
    raw = _mapping(raw, "budget", BUDGET_KEYS, file)
    match = raw.get("match", "epochs")
    if match not in MATCHES:
        raise ConfigError("budget.match", expected(f"one of {', '.join(MATCHES)}", match), file=file)
    given = [k for k in ("epochs", "steps", "tokens") if raw.get(k) is not None]
    if len(given) > 1:
        raise ConfigError("budget", f"give one of epochs, steps, tokens, not {' and '.join(given)}", file=file)
    epochs = raw.get("epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0):
        raise ConfigError("budget.epochs", expected("a number > 0", epochs), file=file)
    steps = None if raw.get("steps") is None else _int(raw["steps"], "budget.steps", file, 1)
    tokens = raw.get("tokens")
    if isinstance(tokens, float) and tokens.is_integer():  # token counts are naturally written 5.0e6
        tokens = int(tokens)
    tokens = None if tokens is None else _int(tokens, "budget.tokens", file, 1)
    reference = raw.get("reference")
    if match == "epochs":
        if tokens is not None:
            raise ConfigError("budget.tokens", "needs match: tokens", file=file)
        if reference is not None:
            raise ConfigError("budget.reference", "needs match: tokens (with match: epochs every variant trains "
                                                  "the same steps)", file=file)
    else:
        if reference is None:
            reference = variants[0]
        elif tokens is not None:
            raise ConfigError("budget.reference", "not used with budget.tokens (the budget is given in tokens)",
                              file=file)
        if reference not in variants:
            raise ConfigError("budget.reference", f"no variant named {reference!r}{did_you_mean(reference, variants)}; "
                                                  f"variants: {', '.join(variants)}", file=file)
    return BudgetSpec(match=match, epochs=epochs, steps=steps, tokens=tokens, reference=reference)


def _parse_eval(raw: Any, base: Recipe, file: str, registry=None) -> EvalSpec:
    raw = _mapping(raw, "eval", EVAL_KEYS, file)
    cfg = base.eval
    knn = _bool(raw.get("knn", True), "eval.knn", file)
    linear = _bool(raw.get("linear", False), "eval.linear", file)
    finetune = raw.get("finetune")
    if finetune is not None:  # checked now against the base recipe, before anything trains
        from maskkit.finetune.evaluation import finetune_recipe_for

        finetune = {} if finetune is True else finetune
        finetune_recipe_for(finetune, base.tree, seed=0, data_seed=0, file=file, registry=registry)
    if not (knn or linear or finetune is not None):
        raise ConfigError("eval", "measure something: knn: true, linear: true and/or finetune: {...}", file=file)
    temperature = raw.get("temperature", cfg.temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ConfigError("eval.temperature", expected("a number > 0", temperature), file=file)
    pool = raw.get("pool", cfg.pool)
    if pool not in ("mean", "cls"):
        raise ConfigError("eval.pool", expected("one of mean, cls", pool), file=file)
    spec = EvalSpec(
        knn=knn, linear=linear, baseline=_bool(raw.get("baseline", True), "eval.baseline", file),
        k=_int(raw.get("k", cfg.k), "eval.k", file, 1), temperature=float(temperature), pool=pool,
        batch_size=_int(raw.get("batch_size", cfg.batch_size), "eval.batch_size", file, 1),
        reconstructions=_int(raw.get("reconstructions", 6), "eval.reconstructions", file, 0),
        mask_samples=_int(raw.get("mask_samples", 8), "eval.mask_samples", file, 0),
        finetune=None if finetune is None else dict(finetune))
    return spec.as_quick() if _bool(raw.get("quick", False), "eval.quick", file) else spec


def _parse_plugins(raw: Any, spec_dir: Path | None, file: str) -> tuple[str, ...]:
    """The spec's ``plugins``, resolved as a recipe's are (:func:`maskkit.registry.resolve_plugin_spec`: files
    relative to the spec's folder); a plugin file that does not exist is refused here, naming the key."""
    from maskkit.registry import resolve_plugin_files

    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    # the same check as a recipe's plugins section (Recipe.plugins), worded for the spec
    if not isinstance(raw, list) or not all(isinstance(item, str) and item.strip() for item in raw):
        raise ConfigError("plugins", expected("a list of plugin files (x.py) or module names", raw), file=file)
    return resolve_plugin_files(raw, spec_dir, whose="spec's", file=file)


def _resolve_base(base: Any, spec_dir: Path | None, file: str, registry) -> Recipe:
    """The base recipe: a path relative to the spec's folder, a path relative to the working directory, a
    registered recipe name, or (from Python) a recipe mapping."""
    if isinstance(base, dict):
        source: Any = base
    elif isinstance(base, str) and base:
        local = spec_dir / base if spec_dir is not None else None
        source = str(local) if local is not None and local.is_file() else base
    else:
        raise ConfigError("base", expected("a recipe path or a registered recipe name", base), file=file)
    try:
        return load_recipe(source, registry=registry)
    except ConfigError as exc:
        if not exc.key and exc.message.startswith("no such recipe"):
            raise ConfigError("base", f"{base!r}: no such recipe file (relative to this spec or the working "
                                      "directory) nor a registered recipe name (see `maskkit recipes`)",
                              file=file) from None
        raise


def _variant_tree(name: str, base_tree: dict, changes: tuple[Change, ...], file: str) -> dict:
    where = f"variants.{name}"
    tree = copy.deepcopy(base_tree)
    for change in changes:
        try:
            _set(tree, change.key, change.value)
        except ValueError as exc:
            raise ConfigError(f"{where}.{change.key}", str(exc), file=file) from None
    for path in SHARED_KEYS:
        old, new = _get(base_tree, path), _get(tree, path)
        if old != new:
            dotted = ".".join(path)
            raise ConfigError(f"{where}.{dotted}", "a variant may not change this: every run of a comparison "
                              "shares seeds, data and its order, evaluation, batch and budget (set it in the "
                              "spec's base, overrides, seeds, eval or budget)", file=file)
    try:
        Recipe(tree, file).validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.key}" if exc.key else where, exc.message, file=file) from None
    return tree


def component_error(exc: BaseException, variant: Variant, file: str) -> ConfigError:
    """The one-line error for ``exc``, raised while ``variant``'s model was built outside a component's
    constructor (:func:`maskkit.builder.build_component` words those itself): it names the spec file and the
    variant, and the exception's type unless it is a ValueError or TypeError."""
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (ValueError, TypeError)):
        text = f"{type(exc).__name__}: {text}"
    return ConfigError(f"variants.{variant.name}", text.splitlines()[0], file=file)


def check_components(spec: CompareSpec, registry) -> None:
    """Every variant's components are registered and its masker builds (one-line errors naming the spec file
    and the variant): run before anything trains."""
    import json

    import torch

    from maskkit.builder import build_component, build_masker

    encoders: dict[str, Any] = {}  # one build per distinct encoder: the maskers' wiring needs its width
    for variant in spec.variants:
        recipe = Recipe(variant.tree, spec.file)
        for section in ("masker", "encoder", "decoder", "target", "loss", "data"):
            kind = "dataset" if section == "data" else section
            name = recipe.component(section).get("name")
            if not isinstance(name, str):
                raise ConfigError(f"variants.{variant.name}.{section}.name", expected("a registry name", name),
                                  file=spec.file)
            try:
                registry.get(kind, name)
            except ConfigError as exc:
                raise ConfigError(f"variants.{variant.name}.{section}.name", exc.message, file=spec.file) from None
        try:
            key = json.dumps(recipe.component("encoder"), sort_keys=True, default=str)
            if key not in encoders:
                with torch.random.fork_rng(devices=[]):
                    encoders[key] = build_component(registry, "encoder", recipe.component("encoder"), file=spec.file)
            build_masker(recipe, registry, encoders[key])
        except ConfigError as exc:
            raise ConfigError(f"variants.{variant.name}.{exc.key}", exc.message, file=spec.file) from None
        except BUILD_ERRORS as exc:  # a constructor refused an argument (encoder.depth: -1): name its section
            raise component_error(exc, variant, spec.file) from None


def parse_spec(tree: dict, file: str = "<spec>", *, spec_dir: Path | None = None, registry=None,
               check: bool = True) -> CompareSpec:
    """A :class:`CompareSpec` from a parsed YAML mapping. ``check`` also checks the components against
    ``registry`` (the default one when ``None``)."""
    if not isinstance(tree, dict):
        raise ConfigError("", expected("a mapping at the top level", type(tree).__name__), file=file)
    for key in tree:
        if key not in SPEC_KEYS:
            raise ConfigError(str(key), f"unknown key{did_you_mean(key, SPEC_KEYS)}; expected one of "
                                        f"{', '.join(SPEC_KEYS)}", file=file)
    if "base" not in tree:
        raise ConfigError("base", "missing: name the base recipe (a path or a registered name)", file=file)
    description = tree.get("description") or ""
    if not isinstance(description, str):
        raise ConfigError("description", expected("text", description), file=file)
    overrides = tree.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    if not isinstance(overrides, list):
        raise ConfigError("overrides", expected("a list of key.path=value strings", overrides), file=file)
    common = [_parse_override(item, f"overrides[{i}]", file) for i, item in enumerate(overrides)]
    if any(c.key.split(".")[0] in ("seed", "data_seed") for c in common):
        raise ConfigError("overrides", "set seeds with the spec's seeds and data_seed keys", file=file)
    if registry is None:
        from maskkit.registry import default_registry

        registry = default_registry()
    plugins = _parse_plugins(tree.get("plugins"), spec_dir, file)
    registry = registry.with_plugins(plugins).require_loaded(plugins, key="plugins", file=file)
    base = _resolve_base(tree["base"], spec_dir, file, registry)
    registry = registry.with_plugins(base.plugins).require_loaded(base.plugins, key="plugins",
                                                                  file=base.path or file)
    base_tree = copy.deepcopy(base.tree)
    for change in common:
        try:
            _set(base_tree, change.key, change.value)
        except ValueError as exc:
            raise ConfigError(f"overrides: {change.key}", str(exc), file=file) from None
    try:
        base = Recipe(base_tree, base.path)
        base.validate()
    except ConfigError as exc:
        raise ConfigError(f"overrides: {exc.key}" if exc.key else "overrides", exc.message, file=file) from None

    raw_variants = tree.get("variants")
    if not isinstance(raw_variants, dict) or not raw_variants:
        raise ConfigError("variants", expected("a mapping of variant name -> changes (at least one)",
                                               raw_variants), file=file)
    variants = []
    for name, raw in raw_variants.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError("variants", f"bad variant name {name!r}: use letters, digits and _ . + - "
                                          "(it names a folder)", file=file)
        changes = _parse_changes(raw, f"variants.{name}", file)
        variants.append(Variant(name, changes, _variant_tree(name, base_tree, changes, file)))
    names = [v.name for v in variants]
    seeds = _parse_seeds(tree.get("seeds"), file)
    data_seed = tree.get("data_seed", base.data_seed)
    data_seed = _int(data_seed, "data_seed", file, 0) if data_seed is not None else base.data_seed
    device = tree.get("device")
    if device is not None:  # every run's train.device: a typo would fail each run, not the spec
        check_device(device, "device", file)
    spec = CompareSpec(file=file, description=description.strip(), base=base.path or "<mapping>", base_tree=base_tree,
                       variants=tuple(variants), seeds=seeds, data_seed=data_seed,
                       budget=_parse_budget(tree.get("budget"), names, file),
                       eval=_parse_eval(tree.get("eval"), base, file, registry), device=device, plugins=plugins)
    if check:
        check_components(spec, registry)
    return spec


def load_spec(path: str | Path, *, registry=None, check: bool = True) -> CompareSpec:
    """Load a comparison spec from a YAML file (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", "no such comparison spec file", file=str(path))
    tree = parse_yaml(read_text_file(path), str(path))
    return parse_spec(tree, str(path), spec_dir=path.parent, registry=registry, check=check)
