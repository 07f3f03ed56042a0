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
import sys
import traceback
import types
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


def make_plugin_manager(autoload: bool | None = None, plugins: Mapping[str, object] | None = None, *,
                        strict: bool = True) -> LoadedPlugins:
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
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            error = PluginError(f"plugin {exc.plugin!r} implements a hook that does not exist: {exc}")
            if strict:
                raise error from None
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            pm.unregister(exc.plugin)
            failures.append(PluginFailure(name, str(error)))
    return LoadedPlugins(pm, tuple(failures), versions)


class Registry:
    """Every component and recipe the loaded plugins add, with provenance.

    >>> reg = Registry.from_plugins(autoload=False)
    >>> masker = reg.create("masker", "random", ratio=0.75)
    >>> reg.list("encoder", "vit_tiny*")[:1]
    ['vit_tiny_patch16_224']
    """

    def __init__(self, loaded: LoadedPlugins, *, strict: bool = True):
        self.plugin_manager = loaded.manager
        self._versions = dict(loaded.versions)
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._recipes: dict[str, Entry] = {}
        results, failed = self._ask_plugins()
        for kind, plugin_name, hook_name, result in results:
            if plugin_name in failed:
                continue
            try:
                self._collect(result, plugin_name, hook_name, kind,
                              self._recipes if kind == "recipe" else self._entries[kind])
            except PluginError as exc:  # a clash or a wrong return type: fatal unless diagnosing (not strict)
                if strict:
                    raise
                failed[plugin_name] = PluginFailure(plugin_name, str(exc))
                for entries in (*self._entries.values(), self._recipes):
                    for name in [n for n, e in entries.items() if e.plugin == plugin_name]:
                        del entries[name]
                self.plugin_manager.unregister(name=plugin_name)
        self.failures = loaded.failures + tuple(failed.values())

    @classmethod
    def from_plugins(cls, autoload: bool | None = None, plugins: Mapping[str, object] | None = None, *,
                     strict: bool = True) -> "Registry":
        """A registry of the built-ins, every installed plugin, and ``plugins`` (see :func:`make_plugin_manager`).

        A plugin whose ``maskkit_add_*`` hook raises is always left out and listed in ``failures``; with
        ``strict=False`` (``maskkit plugins``, which must work to diagnose) so is one that clashes with another
        or returns the wrong type, which is otherwise a :class:`~maskkit.errors.PluginError`.
        """
        return cls(make_plugin_manager(autoload, plugins, strict=strict), strict=strict)

    def _ask_plugins(self) -> tuple[list[tuple[str, str, str, Any]], dict[str, PluginFailure]]:
        """Call every ``maskkit_add_*`` implementation. A plugin whose hook raises is recorded as a failure and
        unregistered (its components and its engine hooks are left out, as if it had failed to import)."""
        results, failed = [], {}
        for kind, hook_name in [*_HOOK_OF_KIND.items(), ("recipe", "maskkit_add_recipes")]:
            for impl in getattr(self.plugin_manager.hook, hook_name).get_hookimpls():
                plugin_name = self.plugin_manager.get_name(impl.plugin) or repr(impl.plugin)
                if plugin_name in failed:
                    continue
                try:
                    result = impl.function()
                except Exception as exc:
                    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                    failed[plugin_name] = PluginFailure(plugin_name, f"{hook_name}() raised {last}")
                    continue
                results.append((kind, plugin_name, hook_name, result))
        for plugin_name in failed:
            self.plugin_manager.unregister(name=plugin_name)
        return results, failed

    def _collect(self, result: Any, plugin_name: str, hook_name: str, kind: str, into: dict[str, Entry]) -> None:
        if result is None:
            return
        if not isinstance(result, Mapping):
            raise PluginError(f"plugin {plugin_name!r}: {hook_name}() must return a dict of name -> factory, "
                              f"got {type(result).__name__}")
        for name, factory in result.items():
            if name in into:
                raise PluginError(f"{kind} {name!r} is registered twice: by plugin {into[name].plugin!r} "
                                  f"and by plugin {plugin_name!r}")
            into[name] = Entry(kind, name, factory, plugin_name, self._versions.get(plugin_name, "-"))

    def plugin_of(self, exc: BaseException) -> str | None:
        """The name of the plugin whose code raised ``exc`` (the innermost traceback frame inside a plugin's
        package, maskkit's built-ins excepted), or None when no plugin code is involved."""
        places = {}
        for plugin in self.plugin_manager.get_plugins():
            name = self.plugin_manager.get_name(plugin)
            place = _source_root(plugin)
            if name != "maskkit" and place is not None:
                places[place] = name
        if not places:
            return None
        frames = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__)]
        for filename in reversed(frames):
            for place, name in places.items():
                if filename == place or filename.startswith(place + os.sep):
                    return name
        return None

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


def _source_root(plugin: object) -> str | None:
    """The file or package folder holding a plugin's code (its top-level package: components usually live next
    to the module that registers them); None for maskkit's own modules."""
    module_name = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
    top = module_name.split(".")[0]
    if top == "maskkit":
        return None
    package_file = getattr(sys.modules.get(top), "__file__", None)  # None for a namespace package
    if package_file and Path(package_file).name == "__init__.py":
        return str(Path(package_file).parent)
    return getattr(sys.modules.get(module_name), "__file__", None) or package_file


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
