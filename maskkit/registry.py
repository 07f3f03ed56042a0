"""The plugin manager and the component registry built from it.

The whole host lifecycle::

    pm = pluggy.PluginManager("maskkit")         # make the manager
    pm.add_hookspecs(hookspecs)                   # the contract
    pm.register(builtin.plugin, "maskkit")        # built-ins are plugins too
    load entry points of group "maskkit"           # third-party plugins (failures are recorded, not fatal)

A :class:`Registry` then asks every plugin what it adds and remembers who added what, so a name clash names
both plugins and ``maskkit plugins`` can show provenance. A registry is immutable once built; make a new one
to see newly installed plugins.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import os
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs
import pluggy

from maskkit import hookspecs
from maskkit.errors import PluginError, UnknownComponentError

ENTRY_POINT_GROUP = "maskkit"
DISABLE_AUTOLOAD_ENV = "MASKKIT_DISABLE_PLUGIN_AUTOLOAD"
KINDS = ("masker", "encoder", "decoder", "target", "loss", "dataset")
_HOOK_OF_KIND = {kind: f"maskkit_add_{'losses' if kind == 'loss' else kind + 's'}" for kind in KINDS}

hookimpl = pluggy.HookimplMarker("maskkit")


@attrs.frozen
class Entry:
    """One registered component: its factory and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    version: str


@attrs.frozen
class PluginFailure:
    """An entry point that could not be loaded; the rest keep working."""

    name: str
    error: str


@attrs.frozen
class LoadedPlugins:
    """A plugin manager with what loading it found: failed entry points and plugin versions."""

    manager: pluggy.PluginManager
    failures: tuple[PluginFailure, ...]
    versions: Mapping[str, str]


def make_plugin_manager(autoload: bool | None = None, plugins: Mapping[str, object] | None = None) -> LoadedPlugins:
    """Build a plugin manager with the built-ins and (unless disabled) every ``maskkit`` entry point.

    ``autoload=None`` reads ``MASKKIT_DISABLE_PLUGIN_AUTOLOAD``. Entry points that fail to import are
    recorded by name in ``failures``; they do not stop the others. ``plugins`` registers further plugin
    objects by name (a notebook's or a test's own hooks), after the entry points.
    """
    from maskkit import __version__
    from maskkit.builtin import plugin as builtin_plugin

    pm = pluggy.PluginManager("maskkit")
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_plugin, name="maskkit")
    failures: list[PluginFailure] = []
    versions = {"maskkit": __version__}
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    if autoload:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                failures.append(PluginFailure(ep.name, last))
                continue
            versions[ep.name] = ep.dist.version if ep.dist is not None else "-"
    for name, plugin in (plugins or {}).items():
        pm.register(plugin, name=name)
        versions.setdefault(name, "-")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements a hook that does not exist: {exc}") from None
    return LoadedPlugins(pm, tuple(failures), versions)


class Registry:
    """Every component and recipe the loaded plugins add, with provenance.

    >>> reg = Registry.from_plugins(autoload=False)
    >>> masker = reg.create("masker", "random", ratio=0.75)
    >>> reg.list("encoder", "vit_tiny*")[:1]
    ['vit_tiny_patch16_224']
    """

    def __init__(self, loaded: LoadedPlugins):
        self.plugin_manager = loaded.manager
        self.failures = loaded.failures
        self._versions = dict(loaded.versions)
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._recipes: dict[str, Entry] = {}
        for kind in KINDS:
            self._collect(_HOOK_OF_KIND[kind], kind, self._entries[kind])
        self._collect("maskkit_add_recipes", "recipe", self._recipes)

    @classmethod
    def from_plugins(cls, autoload: bool | None = None, plugins: Mapping[str, object] | None = None) -> "Registry":
        """A registry of the built-ins, every installed plugin, and ``plugins`` (see :func:`make_plugin_manager`)."""
        return cls(make_plugin_manager(autoload, plugins))

    def _collect(self, hook_name: str, kind: str, into: dict[str, Entry]) -> None:
        hook = getattr(self.plugin_manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = self.plugin_manager.get_name(impl.plugin) or repr(impl.plugin)
            result = impl.function()
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginError(f"plugin {plugin_name!r}: {hook_name}() must return a dict of name -> factory, "
                                  f"got {type(result).__name__}")
            for name, factory in result.items():
                if name in into:
                    raise PluginError(f"{kind} {name!r} is registered twice: by plugin {into[name].plugin!r} "
                                      f"and by plugin {plugin_name!r}")
                into[name] = Entry(kind, name, factory, plugin_name, self._versions.get(plugin_name, "-"))

    # -- queries ------------------------------------------------------------------------------------------

    def entries(self, kind: str) -> Mapping[str, Entry]:
        """All entries of ``kind`` (a component kind, or ``"recipe"``)."""
        if kind == "recipe":
            return dict(self._recipes)
        self._check_kind(kind)
        return dict(self._entries[kind])

    def list(self, kind: str, pattern: str = "*") -> list[str]:
        """Sorted names of ``kind`` matching the shell-style wildcard ``pattern``."""
        return sorted(name for name in self.entries(kind) if fnmatch.fnmatchcase(name, pattern))

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; an unknown name raises with close matches and the loaded plugins."""
        entries = self.entries(kind)
        if name in entries:
            return entries[name]
        close = difflib.get_close_matches(str(name), list(entries), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        plugins = ", ".join(sorted({e.plugin for k in KINDS for e in self._entries[k].values()}))
        raise UnknownComponentError("name", f"unknown {kind} {name!r}; {hint}loaded plugins: {plugins}"
                                    + (f"; failed to load: {', '.join(f.name for f in self.failures)}"
                                       if self.failures else ""))

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build the component ``kind``/``name`` with ``kwargs`` (its constructor arguments)."""
        return self.get(kind, name).factory(**kwargs)

    def recipe_path(self, name: str) -> Path:
        return Path(self.get("recipe", name).factory)

    def versions(self) -> dict[str, str]:
        """``{plugin name: version}`` for every registered plugin (for run provenance)."""
        names = [self.plugin_manager.get_name(p) for p in self.plugin_manager.get_plugins()]
        return {name: self._versions.get(name, "-") for name in sorted(names)}

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of installed plugins, built on first use (entry points are read once per process).

    Pass an explicit :class:`Registry` wherever you need a different set of plugins (tests do).
    """
    return Registry.from_plugins()


def create(kind: str, name: str, *, registry: Registry | None = None, **kwargs: Any) -> Any:
    """Build any registered component, timm-style: ``maskkit.create("masker", "random", ratio=0.75)``."""
    return (registry or default_registry()).create(kind, name, **kwargs)


def list_components(kind: str, pattern: str = "*", *, registry: Registry | None = None) -> list[str]:
    """Registered names of ``kind`` matching ``pattern``: ``maskkit.list_components("encoder", "vit_base*")``."""
    return (registry or default_registry()).list(kind, pattern)
