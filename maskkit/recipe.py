"""YAML recipes: load, apply dotted overrides, validate the engine's sections (this module never imports the
engine: every section is validated here, the engine reads the results).

A recipe is a mapping of sections. Component sections are a registry name plus the constructor's keyword
arguments (``masker: {name: random, ratio: 0.75}``); there are no import paths. The ``train`` section is
validated here (:class:`TrainConfig`); component arguments are validated against the factory signatures when
the model is built (:mod:`maskkit.builder`). Every error names the file and the key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Hashable, Iterable

import attrs
import yaml

from maskkit import _validators as v
from maskkit.errors import ConfigError, did_you_mean, expected

COMPONENT_SECTIONS = ("masker", "encoder", "decoder", "target", "loss", "data")
# Keys of the ``data`` section that the engine reads itself; the others are the dataset factory's arguments.
# ``on_bad_image``: what training does with an image file that cannot be decoded: ``stop`` (the default; the
# error names the file) or ``skip`` (leave it out of its batch, count it, list it in the run folder).
# ``decode``: where pretraining decodes JPEGs: ``host`` (the default; PIL in the loader workers) or ``device``
# (``torchvision.io.decode_jpeg`` on the training device, nvJPEG on a GPU; see :mod:`maskkit.data.encoded`).
DATA_ENGINE_KEYS = {"on_bad_image": ("stop", "skip"), "decode": ("host", "device")}
SECTIONS = ("description", "plugins", "seed", "data_seed", "data", "augment", "masker", "encoder", "decoder",
            "target", "loss", "train", "eval", "distributed")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """The ``train`` section. ``batch_size`` is per process and micro-step; the effective batch is
    ``batch_size * accum_steps * world_size``; ``lr`` defaults to ``base_lr * effective_batch / 256``.
    ``batch_size: auto`` (with ``accum_steps: auto`` and ``effective_batch``) lets the trainer pick both for the
    device and world size, keeping ``effective_batch`` (:mod:`maskkit.engine.batch_rule`); with numbers, a
    given ``effective_batch`` is checked against them when the world size is known."""

    epochs: int = attrs.field(default=1, validator=v.positive_int)
    max_steps: int | None = attrs.field(default=None, validator=v.optional(v.positive_int))
    batch_size: int | str = attrs.field(default=64, validator=v.positive_int_or_auto)
    accum_steps: int | str = attrs.field(default=1, validator=v.positive_int_or_auto)
    effective_batch: int | None = attrs.field(default=None, validator=v.optional(v.positive_int))
    base_lr: float = attrs.field(default=1.5e-4, validator=v.non_negative_float)
    lr: float | None = attrs.field(default=None, validator=v.optional(v.non_negative_float))
    min_lr: float = attrs.field(default=0.0, validator=v.non_negative_float)
    warmup_epochs: float = attrs.field(default=0.0, validator=v.non_negative_float)
    weight_decay: float = attrs.field(default=0.05, validator=v.non_negative_float)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.95), validator=v.betas, converter=tuple)
    clip_grad: float | None = attrs.field(default=None, validator=v.optional(v.non_negative_float))
    precision: str = attrs.field(default="auto", validator=v.one_of("auto", "fp32", "bf16"))
    compile: bool | str = attrs.field(default="auto", validator=v.boolean_or_auto)  # auto: on CUDA only
    compile_scope: str = attrs.field(default="components", validator=v.one_of("components", "blocks"))
    device: str = attrs.field(default="auto", validator=v.device)
    num_workers: int = attrs.field(default=0, validator=v.non_negative_int)
    log_every: int = attrs.field(default=10, validator=v.positive_int)
    ckpt_every: int = attrs.field(default=0, validator=v.non_negative_int)

    def __attrs_post_init__(self):
        auto = self.batch_size == "auto"
        if auto != (self.accum_steps == "auto"):
            raise ConfigError("batch_size" if not auto else "accum_steps",
                              "batch_size: auto and accum_steps: auto go together (the rule picks both)")
        if auto and self.effective_batch is None:
            raise ConfigError("effective_batch", "expected with batch_size: auto: the total batch that the picked "
                                                 "batch_size x accum_steps x world size must make")

    @property
    def auto_batch(self) -> bool:
        """Whether the trainer picks ``batch_size`` and ``accum_steps`` (``batch_size: auto``)."""
        return self.batch_size == "auto"


@attrs.frozen(kw_only=True)
class AugmentConfig:
    """The ``augment`` section: MAE's RandomResizedCrop (``scale``, ``ratio``; ``scale: null`` = resize only)
    and horizontal flip."""

    scale: tuple[float, float] | None = attrs.field(default=(0.2, 1.0), converter=v.sequence_to_tuple,
                                                    validator=v.optional(v.crop_scale))
    ratio: tuple[float, float] = attrs.field(default=(3 / 4, 4 / 3), converter=v.sequence_to_tuple,
                                             validator=v.aspect_ratio)
    hflip: bool = attrs.field(default=True, validator=v.boolean)


@attrs.frozen(kw_only=True)
class EvalConfig:
    """The ``eval`` section: what runs after training (kNN on frozen features, vs a random-init encoder)."""

    knn: bool = attrs.field(default=True, validator=v.boolean)
    k: int = attrs.field(default=20, validator=v.positive_int)
    temperature: float = attrs.field(default=0.07, validator=v.non_negative_float)
    pool: str = attrs.field(default="mean", validator=v.one_of("mean", "cls"))
    random_init_baseline: bool = attrs.field(default=True, validator=v.boolean)
    linear: bool = attrs.field(default=False, validator=v.boolean)
    reconstructions: int = attrs.field(default=8, validator=v.non_negative_int)
    batch_size: int = attrs.field(default=256, validator=v.positive_int)


def _optional_bool(inst, attribute, value):
    if value is not None and not isinstance(value, bool):
        raise ConfigError(attribute.name, expected("true, false or null", value))


@attrs.frozen(kw_only=True)
class DistributedConfig:
    """The recipe's ``distributed`` section; it matters only when launched with ``WORLD_SIZE > 1``.

    ``strategy``: ``ddp`` (a full replica per process) or ``fsdp`` (FSDP2: parameters, gradients and
    optimizer state sharded over the processes; each transformer block is one unit). ``find_unused_parameters``
    (DDP): whether DDP searches each step's autograd graph for parameters that got no gradient (a small cost per
    step); needed when some trainable parameter is unused, or DDP stops with "Expected to have finished
    reduction". ``null`` (default): true when the encoder is dense (the MAE decoder's mask token is then
    unused) or the masker has trainable parameters (they train through its auxiliary losses only), false
    otherwise. ``reshard_after_forward`` (FSDP): free each block's gathered parameters after its
    forward and gather them again in backward (least memory), or keep them until the backward (less traffic).
    """

    strategy: str = attrs.field(default="ddp", validator=v.one_of("ddp", "fsdp"))
    find_unused_parameters: bool | None = attrs.field(default=None, validator=_optional_bool)
    reshard_after_forward: bool = attrs.field(default=True, validator=v.boolean)


def _section_config(cls, tree: dict, section: str, file: str | None):
    raw = tree.get(section) or {}
    if not isinstance(raw, dict):
        raise ConfigError(section, expected("a mapping", raw), file=file)
    fields = {f.name for f in attrs.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{section}.{key}", f"unknown key{did_you_mean(key, fields)}; expected one of "
                              f"{', '.join(sorted(fields))}", file=file)
    try:
        return cls(**raw)
    except ConfigError as exc:
        raise exc.within(section, file) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(section, str(exc), file=file) from None


@attrs.frozen
class Recipe:
    """A loaded, overridden recipe: the resolved tree plus where it came from.

    ``tree`` is plain data (dicts, lists, scalars), exactly what is written to ``recipe.yaml`` in a run folder.
    """

    tree: dict
    path: str | None = None

    @property
    def file(self) -> str:
        return self.path or "<recipe>"

    @property
    def train(self) -> TrainConfig:
        return _section_config(TrainConfig, self.tree, "train", self.file)

    @property
    def augment(self) -> AugmentConfig:
        return _section_config(AugmentConfig, self.tree, "augment", self.file)

    @property
    def eval(self) -> EvalConfig:
        return _section_config(EvalConfig, self.tree, "eval", self.file)

    @property
    def distributed(self) -> DistributedConfig:
        return _section_config(DistributedConfig, self.tree, "distributed", self.file)

    @property
    def seed(self) -> int:
        seed = self.tree.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("seed", expected("an int", seed), file=self.file)
        return seed

    @property
    def data_seed(self) -> int:
        """Seed of the data order and augmentations (default: ``seed``). Comparisons keep it fixed across
        seeds so every run sees the same images in the same order while init and masks vary."""
        value = self.tree.get("data_seed", self.seed)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError("data_seed", expected("an int", value), file=self.file)
        return value

    @property
    def on_bad_image(self) -> str:
        """``data.on_bad_image``: ``"stop"`` (default) or ``"skip"`` (see :data:`DATA_ENGINE_KEYS`)."""
        return self._data_engine_key("on_bad_image")

    @property
    def decode(self) -> str:
        """``data.decode``: ``"host"`` (default) or ``"device"`` (see :data:`DATA_ENGINE_KEYS`)."""
        return self._data_engine_key("decode")

    def _data_engine_key(self, key: str) -> str:
        """The ``data`` section's engine key ``key``: one of ``DATA_ENGINE_KEYS[key]``, the first by default."""
        choices = DATA_ENGINE_KEYS[key]
        data = self.tree.get("data")
        value = data.get(key, choices[0]) if isinstance(data, dict) else choices[0]
        if value not in choices:
            raise ConfigError(f"data.{key}", expected(" or ".join(choices), value), file=self.file)
        return value

    def dataset_spec(self) -> dict:
        """The ``data`` section without the engine's own keys: what the dataset factory is called with."""
        return {k: v for k, v in self.component("data").items() if k not in DATA_ENGINE_KEYS}

    @property
    def plugins(self) -> tuple[str, ...]:
        """The ``plugins`` section: one-file plugins (``my_masker.py``) or modules (``pkg.masker``) the recipe
        needs; a recipe loaded from a file has its relative paths made absolute (from the recipe's folder)."""
        raw = self.tree.get("plugins") or []
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(item, str) and item.strip() for item in raw):
            raise ConfigError("plugins", expected("a list of plugin files (x.py) or module names", raw),
                              file=self.file)
        return tuple(raw)

    def component(self, section: str) -> dict:
        """The ``{name: ..., **kwargs}`` spec of a component section."""
        spec = self.tree.get(section)
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(section, expected("a mapping with a 'name' key", spec), file=self.file)
        return dict(spec)

    def with_overrides(self, overrides: Iterable[str]) -> "Recipe":
        return Recipe(apply_overrides(self.tree, overrides, self.file), self.path)

    def with_plugins(self, specs: Iterable[str]) -> "Recipe":
        """This recipe with ``specs`` (plugin files or modules: a command line's ``--plugin``) added to its
        ``plugins`` section after its own, each once, files made absolute (relative ones from the working
        directory, as ``--plugin`` reads them): a run's resolved recipe then names every plugin it was trained
        with, and ``--resume``, ``eval`` or ``visualize`` of its checkpoint load them without ``--plugin``."""
        from maskkit.registry import resolve_plugin_spec

        added = [resolve_plugin_spec(spec) for spec in specs]
        plugins = list(dict.fromkeys([*self.plugins, *added]))
        return Recipe({**self.tree, "plugins": plugins}, self.path) if plugins != list(self.plugins) else self

    def validate(self) -> None:
        """Check the engine's sections and the top-level keys (component arguments are checked at build)."""
        if "finetune" in self.tree:
            raise ConfigError("finetune", "a fine-tuning recipe: run it with `maskkit finetune CHECKPOINT --recipe "
                              "RECIPE`", file=self.file)
        for key in self.tree:
            if key not in SECTIONS:
                raise ConfigError(str(key), f"unknown section{did_you_mean(key, SECTIONS)}; expected one of "
                                  f"{', '.join(SECTIONS)}", file=self.file)
        for section in ("masker", "encoder", "decoder", "target", "loss"):
            self.component(section)
        _ = (self.plugins, self.seed, self.data_seed, self.train, self.augment, self.eval, self.on_bad_image,
             self.decode, self.distributed)

    def dump(self) -> str:
        return yaml.safe_dump(self.tree, sort_keys=False)


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float (YAML 1.2 does; PyYAML's 1.1 rules need ``1.0e-3``)
    and refuses a key given twice in one mapping (YAML requires unique keys; PyYAML keeps the last one silently,
    so ``layer_decay`` written twice would train with whichever came last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first_line[key]}; YAML would keep the "
                    "last one silently)", key_node.start_mark)
            if isinstance(key, Hashable):
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def safe_load(text: str):
    """Safe YAML loading (no Python objects) with YAML 1.2 floats."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)


def read_text_file(path: Path) -> str:
    """A recipe file's text; a binary file (not UTF-8) is a one-line error naming it."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"not a text file (byte {exc.start} is not UTF-8); expected a YAML recipe",
                          file=str(path)) from None
    if "\x00" in text:
        raise ConfigError("", "not a text file (it holds NUL bytes); expected a YAML recipe", file=str(path))
    return text


def parse_yaml(text: str, file: str) -> dict:
    """:func:`safe_load` with errors naming the file and line."""
    try:
        tree = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise ConfigError("", f"YAML syntax error: {problem}", file=f"{file}{line}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("", expected("a mapping of sections at the top level", type(tree).__name__), file=file)
    return tree


def apply_overrides(tree: dict, overrides: Iterable[str], file: str = "<recipe>") -> dict:
    """Return a copy of ``tree`` with ``a.b.c=value`` overrides applied (``value`` parsed as YAML)."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("", f"bad override {item!r}: expected key.path=value", file="command line")
        try:
            value = safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(key, f"bad override value {raw!r}: not valid YAML", file="command line") from None
        node = tree
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(key, f"cannot set inside {where}, which is {child!r} in {file}", file="command line")
            node = child
        node[parts[-1]] = value
    return tree


def resolve_plugins(tree: dict, base_dir: str | Path | None, file: str) -> dict:
    """``tree`` with the plugin files of its ``plugins`` section made absolute (relative to ``base_dir``, the
    folder of the file it was read from, else the working directory), so the resolved recipe of a run names
    them wherever it is read; a file found in neither is a one-line error on ``plugins`` naming both."""
    from maskkit.registry import resolve_plugin_files

    if not tree.get("plugins"):
        return tree
    plugins = Recipe(tree, file).plugins
    return {**tree, "plugins": list(resolve_plugin_files(plugins, base_dir, whose="recipe's", file=file))}


def find_recipe_file(source: str | Path, registry=None, what: str = "recipe") -> Path:
    """The YAML file of ``source``: a path, or the name of a recipe a plugin registers (``"quickstart"``)."""
    path = Path(source)
    if not path.exists() and path.suffix not in (".yaml", ".yml"):
        from maskkit.registry import default_registry

        reg = registry or default_registry()
        if str(source) in reg.entries("recipe"):
            path = reg.recipe_path(str(source))
    if not path.is_file():
        raise ConfigError("", f"no such {what} file (nor a registered recipe name; see `maskkit recipes`)",
                          file=str(source))
    return path


def load_recipe(source: str | Path | dict, overrides: Iterable[str] = (), *, registry=None) -> Recipe:
    """Load a recipe from a YAML path, a registered recipe name (``"quickstart"``), or a dict; apply overrides.

    Raises :class:`~maskkit.errors.ConfigError` naming the file and key on any problem. The recipe's
    ``plugins`` are not imported here: :meth:`maskkit.Registry.with_plugins` loads them where components are
    built; a plugin file found neither in the recipe's folder nor in the working directory is refused here.
    """
    if isinstance(source, dict):
        recipe = Recipe(copy.deepcopy(source), None)
    else:
        path = find_recipe_file(source, registry)
        recipe = Recipe(parse_yaml(read_text_file(path), str(path)), str(path))
    recipe = recipe.with_overrides(overrides)
    base_dir = Path(recipe.path).parent if recipe.path else None  # None: the working directory
    recipe = Recipe(resolve_plugins(recipe.tree, base_dir, recipe.file), recipe.path)
    recipe.validate()
    return recipe
