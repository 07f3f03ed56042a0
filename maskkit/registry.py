"""The plugin manager and the component registry built from it.

The whole host lifecycle::

    pm = pluggy.PluginManager("maskkit")         # make the manager
    pm.add_hookspecs(hookspecs)                   # the contract
    pm.register(builtin.plugin, "maskkit")        # built-ins are plugins too
    load entry points of group "maskkit"           # third-party plugins (failures are recorded, not fatal)
    load one-file plugins and modules               # --plugin PATH.py|MODULE, MASKKIT_PLUGINS, recipes' plugins:

A :class:`Registry` then asks every plugin what it adds and remembers who added what, so a name clash names
both plugins and ``maskkit plugins`` can show provenance. A registry is immutable once built; make a new one
to see newly installed plugins.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import traceback
import types
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import attrs
import pluggy

from maskkit import hookspecs
from maskkit.errors import ConfigError, PluginError, UnknownComponentError, did_you_mean, plugin_place

ENTRY_POINT_GROUP = "maskkit"
DISABLE_AUTOLOAD_ENV = "MASKKIT_DISABLE_PLUGIN_AUTOLOAD"
PLUGINS_ENV = "MASKKIT_PLUGINS"  # one-file plugins or modules, separated by os.pathsep (like PYTEST_PLUGINS)
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
    """An entry point that could not be loaded; the rest keep working. ``module``: the plugin's module when
    known, so a plugin asked for by module name is found under its entry point's name too."""

    name: str
    error: str
    module: str | None = None


@attrs.frozen
class PluginSource:
    """Where a plugin that is not installed comes from: a Python file or an importable module.

    ``name`` is the plugin's name in the registry (the file's absolute path, or the module's dotted name), so
    ``maskkit plugins`` and clash messages show the file; ``sha256`` is the file's content hash (files only).
    """

    name: str
    file: str | None = None
    module: str | None = None
    sha256: str | None = None

    @property
    def version(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else "-"


def is_plugin_file(spec: str) -> bool:
    """Whether ``spec`` names a file (``my_masker.py``, ``./x/y``) rather than a module (``pkg.masker``)."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def resolve_plugin_spec(spec: str, base_dir: str | Path | None = None) -> str:
    """An absolute path for a plugin file (relative paths from ``base_dir``, else the working directory); a
    module name unchanged."""
    spec = str(spec).strip()
    if not is_plugin_file(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        local = Path(base_dir) / path if base_dir is not None else None
        path = local if local is not None and local.exists() else path
    return str(path.absolute())


def resolve_plugin_files(items: Iterable[str], base_dir: str | Path | None, *, whose: str, file: str | None,
                         key: str = "plugins") -> tuple[str, ...]:
    """``items`` resolved (:func:`resolve_plugin_spec`); a plugin file that exists nowhere is a one-line
    :class:`ConfigError` on ``key`` of ``file`` naming where it was looked for: a relative path in ``whose``
    folder (``base_dir``, ``whose`` is "recipe's" or "spec's") and the working directory."""
    resolved = tuple(resolve_plugin_spec(item, base_dir) for item in items)
    for item, spec in zip(items, resolved):
        if is_plugin_file(spec) and not Path(spec).is_file():
            raise ConfigError(key, f"{item.strip()}: no such plugin file{_looked_in(item, base_dir, whose)}",
                              file=file)
    return resolved


def _looked_in(item: str, base_dir: str | Path | None, whose: str) -> str:
    """`` (looked in the recipe's folder, A, and the working directory, B)`` for a relative plugin file;
    nothing for an absolute one (looked for there only)."""
    if Path(item.strip()).expanduser().is_absolute():
        return ""
    cwd = Path.cwd()
    if base_dir is None or Path(base_dir).absolute() == cwd:
        return f" (looked in the working directory, {cwd})"
    return f" (looked in the {whose} folder, {Path(base_dir).absolute()}, and the working directory, {cwd})"


def plugin_specs_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The plugins named by ``MASKKIT_PLUGINS`` (``os.pathsep``-separated files or modules), resolved."""
    raw = (os.environ if environ is None else environ).get(PLUGINS_ENV, "")
    return tuple(resolve_plugin_spec(item) for item in raw.split(os.pathsep) if item.strip())


def _import_plugin(spec: str) -> tuple[object, PluginSource]:
    """Import one plugin file or module. A file becomes the module ``maskkit_plugin_<stem>_<hash>`` in
    ``sys.modules`` (so its classes pickle); importing the same unchanged file again reuses it."""
    if not is_plugin_file(spec):
        module = importlib.import_module(spec)
        return module, PluginSource(spec, module=spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no such plugin file: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    mod_name = f"maskkit_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}_{digest[:8]}"
    module = sys.modules.get(mod_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
    return module, PluginSource(str(path), file=str(path), sha256=digest)


@attrs.frozen
class LoadedPlugins:
    """A plugin manager with what loading it found: failed plugins, plugin versions, and where the plugins
    that are not installed came from (``sources``, by plugin name)."""

    manager: pluggy.PluginManager
    failures: tuple[PluginFailure, ...]
    versions: Mapping[str, str]
    sources: Mapping[str, PluginSource] = attrs.field(factory=dict)
    autoload: bool = True
    objects: Mapping[str, object] = attrs.field(factory=dict)
    specs: tuple[str, ...] = ()


def _hook_arguments_text(pluggy_text: str) -> str | None:
    """One line for a hook implementation taking an argument its hook does not give (a misspelling, mostly):
    the hook, the argument, the closest argument the hook gives and all of them; None for another text."""
    hook = re.search(r"for hook '([^']+)'", pluggy_text)
    args = re.search(r"Argument\(s\) \{([^}]*)\} are declared in the hookimpl", pluggy_text)
    spec = getattr(hookspecs, hook.group(1), None) if hook else None
    if spec is None or args is None:
        return None
    given = list(inspect.signature(spec).parameters)
    wrong = [name.strip().strip("'\"") for name in args.group(1).split(",")]
    return (f"{hook.group(1)} takes {', '.join(map(repr, wrong))}, which the hook does not give"
            f"{did_you_mean(wrong[0], given)}; it gives: "
            f"{', '.join(given) or 'nothing'} (take any of them)")


def _unknown_hook_text(plugin: str, pluggy_text: str) -> str:
    """One line for a plugin that fails pluggy's validation: a hook maskkit does not have (a misspelling,
    mostly: the plugin's name, its file for a one-file plugin, the hook, and the closest hook name of
    :mod:`maskkit.hookspecs`), or an argument its hook does not give (:func:`_hook_arguments_text`)."""
    found = re.search(r"unknown hook '([^']+)'", pluggy_text)
    if found is None:  # another validation failure: a wrong argument, else pluggy's own words on one line
        return f"plugin {plugin!r}: {_hook_arguments_text(pluggy_text) or '; '.join(pluggy_text.splitlines())}"
    hook = found.group(1)
    hooks = [n for n in dir(hookspecs) if n.startswith("maskkit_")]
    hint = did_you_mean(hook, hooks) or " (see maskkit/hookspecs.py for the hooks)"
    return f"plugin {plugin!r} implements a hook maskkit does not have: {hook}{hint}"


def _failure_text(exc: BaseException, plugin: str, roots: Iterable[str] = ()) -> str:
    """One line for why ``plugin`` failed to load: pluggy's validation errors in maskkit's words, else the
    exception's type and first line, and where in the plugin's own code (``roots``: its file or package folder)
    it was raised, ``(file:line)``."""
    if isinstance(exc, pluggy.PluginValidationError):  # named by the failure already: the reason alone
        return _hook_arguments_text(str(exc)) or _unknown_hook_text(plugin, str(exc))
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    where = place_in(exc, roots)
    return f"{text} ({plugin_place(plugin, where)})" if where else text


class PluginBlame(NamedTuple):
    """Which plugin's code raised an exception (its registered name) and where (``file:line``)."""

    name: str
    place: str


def _inside(filename: str, root: str) -> bool:
    return filename == root or filename.startswith(root + os.sep)


def _frames_innermost_first(exc: BaseException) -> list[tuple[str, int]]:
    """``(file, line)`` of each frame of ``exc``'s traceback, innermost first; a SyntaxError's own place first
    (the file that could not be compiled has no frame)."""
    frames = [(frame.f_code.co_filename, line) for frame, line in traceback.walk_tb(exc.__traceback__)][::-1]
    if isinstance(exc, SyntaxError) and exc.filename:
        frames.insert(0, (str(Path(exc.filename).absolute()), exc.lineno or 0))
    return frames


def place_in(exc: BaseException, roots: Iterable[str]) -> str | None:
    """``file:line`` of the innermost place in ``exc``'s traceback inside one of ``roots`` (files or package
    folders), e.g. the line of a plugin file that raised while it was imported; None if none is."""
    roots = [str(root) for root in roots]
    return next((f"{filename}:{line}" for filename, line in _frames_innermost_first(exc)
                 if any(_inside(filename, root) for root in roots)), None)


def _spec_root(spec: str) -> list[str]:
    """Where a ``--plugin`` / ``MASKKIT_PLUGINS`` plugin's code is: the file itself, or a module's package."""
    return [spec] if is_plugin_file(spec) else _entry_point_root(spec)


def _entry_point_root(module: str) -> list[str]:
    """The package folder (or module file) of an entry point's top-level module, found without importing it."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])


def make_plugin_manager(autoload: bool | None = None, plugins: Mapping[str, object] | None = None,
                        files: Iterable[str] = (), *, strict: bool = True) -> LoadedPlugins:
    """Build a plugin manager with the built-ins and (unless disabled) every ``maskkit`` entry point.

    ``autoload=None`` reads ``MASKKIT_DISABLE_PLUGIN_AUTOLOAD``. Entry points that fail to import are
    recorded by name in ``failures``; they do not stop the others. ``plugins`` registers further plugin
    objects by name (a notebook's or a test's own hooks), after the entry points. ``files`` are one-file
    plugins (``my_masker.py``) or module names (``pkg.masker``), loaded after the entry points together with
    those of ``MASKKIT_PLUGINS`` (which autoload=False does not turn off); they obey the same rules: a failure
    is recorded, a clash names both plugins.
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
                failures.append(PluginFailure(ep.name, _failure_text(exc, ep.name, _entry_point_root(ep.module)),
                                              ep.module))
                continue
            versions[ep.name] = ep.dist.version if ep.dist is not None else "-"
    sources: dict[str, PluginSource] = {}
    specs = tuple(dict.fromkeys([*(resolve_plugin_spec(f) for f in files), *plugin_specs_from_env()]))
    for spec in specs:
        if pm.get_plugin(spec) is not None:
            continue
        try:
            module, source = _import_plugin(spec)
            if pm.is_registered(module):  # a module also installed as an entry point: already in
                continue
            pm.register(module, name=source.name)
        except Exception as exc:  # the same rule as entry points: recorded, the others keep working
            failures.append(PluginFailure(spec, _failure_text(exc, spec, _spec_root(spec))))
            continue
        sources[source.name] = source
        versions[source.name] = source.version if source.file else str(getattr(module, "__version__", "-"))
    for name, plugin in (plugins or {}).items():
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # a notebook's or a test's own hooks: the same one line
            raise PluginError(_unknown_hook_text(name, str(exc))) from None
        versions.setdefault(name, "-")
    while True:
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            error = PluginError(_unknown_hook_text(name, str(exc)))
            if strict:
                raise error from None
            pm.unregister(exc.plugin)
            failures.append(PluginFailure(name, str(error)))
    return LoadedPlugins(pm, tuple(failures), versions, sources, autoload, dict(plugins or {}), specs)


class Registry:
    """Every component and recipe the loaded plugins add, with provenance.

    >>> reg = Registry.from_plugins(autoload=False)
    >>> masker = reg.create("masker", "random", ratio=0.75)
    >>> reg.list("encoder", "vit_tiny*")[:1]
    ['vit_tiny_patch16_224']
    """

    def __init__(self, loaded: LoadedPlugins, *, strict: bool = True):
        self.plugin_manager = loaded.manager
        self.sources: Mapping[str, PluginSource] = dict(loaded.sources)
        self._loaded = loaded
        self._strict = strict
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
                plugin = self.plugin_manager.get_plugin(plugin_name)
                failed[plugin_name] = PluginFailure(plugin_name, str(exc), getattr(plugin, "__name__", None))
                for entries in (*self._entries.values(), self._recipes):
                    for name in [n for n, e in entries.items() if e.plugin == plugin_name]:
                        del entries[name]
                self.plugin_manager.unregister(name=plugin_name)
        self.failures = loaded.failures + tuple(failed.values())

    @classmethod
    def from_plugins(cls, autoload: bool | None = None, plugins: Mapping[str, object] | None = None,
                     files: Iterable[str] = (), *, strict: bool = True) -> "Registry":
        """A registry of the built-ins, every installed plugin, ``plugins`` and the one-file plugins or modules
        ``files`` (see :func:`make_plugin_manager`).

        A plugin whose ``maskkit_add_*`` hook raises is always left out and listed in ``failures``; with
        ``strict=False`` (``maskkit plugins``, which must work to diagnose) so is one that clashes with another
        or returns the wrong type, which is otherwise a :class:`~maskkit.errors.PluginError`.
        """
        return cls(make_plugin_manager(autoload, plugins, files, strict=strict), strict=strict)

    @property
    def plugin_specs(self) -> tuple[str, ...]:
        """The one-file plugins and modules this registry was asked to load (resolved), for a worker process
        to load the same ones: ``Registry.from_plugins(files=registry.plugin_specs)``."""
        return self._loaded.specs

    def with_objects(self, plugins: Mapping[str, object]) -> "Registry":
        """This registry plus the plugin objects ``plugins`` (``{name: object with hook implementations}``):
        a run's own observers (compare's training clock) without touching a registry others share."""
        return Registry.from_plugins(self._loaded.autoload, {**self._loaded.objects, **plugins}, self._loaded.specs,
                                     strict=self._strict)

    def with_plugins(self, files: Iterable[str], base_dir: str | Path | None = None) -> "Registry":
        """This registry plus the one-file plugins or modules ``files`` (relative paths from ``base_dir``);
        ``self`` when they are all loaded already."""
        new = [resolve_plugin_spec(f, base_dir) for f in files]
        if all(spec in self._loaded.specs for spec in new):
            return self
        return Registry.from_plugins(self._loaded.autoload, self._loaded.objects, [*self._loaded.specs, *new],
                                     strict=self._strict)

    def require_loaded(self, specs: Iterable[str], *, key: str, file: str | None = None) -> "Registry":
        """``self``, or a one-line :class:`ConfigError` on ``key`` (of ``file``) for the first of ``specs`` that
        failed to load. A failing installed plugin is left out with a note (one broken package must not stop
        the others), but a plugin asked for by name (``--plugin``, ``MASKKIT_PLUGINS``, a recipe's or a spec's
        ``plugins``) is needed by what asked for it, even one that only implements engine hooks."""
        wanted = {resolve_plugin_spec(spec) for spec in specs}
        for failure in self.failures:
            if failure.name in wanted or failure.module in wanted:  # an installed plugin, asked for by module
                raise ConfigError(key, f"{failure.name}: failed to load: {failure.error}", file=file)
        return self

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
                    failed[plugin_name] = PluginFailure(plugin_name, f"{hook_name}() raised {last}",
                                                        getattr(impl.plugin, "__name__", None))
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

    def plugin_of(self, exc: BaseException) -> PluginBlame | None:
        """The plugin whose code raised ``exc``, and where: the innermost traceback frame inside a plugin's
        package (maskkit's built-ins excepted), as ``PluginBlame(name, "file:line")``; None when no plugin code
        is involved."""
        roots = {}
        for plugin in self.plugin_manager.get_plugins():
            name = self.plugin_manager.get_name(plugin)
            root = _source_root(plugin)
            if name != "maskkit" and root is not None:
                roots[root] = name
        for filename, line in _frames_innermost_first(exc):
            for root, name in roots.items():
                if _inside(filename, root):
                    return PluginBlame(name, f"{filename}:{line}")
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
                                    + (f"; failed to load: {'; '.join(f'{f.name} ({f.error})' for f in self.failures)}"
                                       if self.failures else ""))

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build the component ``kind``/``name`` with ``kwargs`` (its constructor arguments)."""
        return self.get(kind, name).factory(**kwargs)

    def recipe_path(self, name: str) -> Path:
        return Path(self.get("recipe", name).factory)

    def versions(self) -> dict[str, str]:
        """``{plugin name: version}`` for every registered plugin (for run provenance); a one-file plugin is
        named by its path and versioned by its content hash (``sha256:...``)."""
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


def registry_for(files: Iterable[str] = ()) -> Registry:
    """The default registry, plus the one-file plugins or modules ``files`` when there are any (a command
    line's ``--plugin``)."""
    files = tuple(files)
    return Registry.from_plugins(files=files) if files else default_registry()


def create(kind: str, name: str, *, registry: Registry | None = None, **kwargs: Any) -> Any:
    """Build any registered component, timm-style: ``maskkit.create("masker", "random", ratio=0.75)``."""
    return (registry or default_registry()).create(kind, name, **kwargs)


def list_components(kind: str, pattern: str = "*", *, registry: Registry | None = None) -> list[str]:
    """Registered names of ``kind`` matching ``pattern``: ``maskkit.list_components("encoder", "vit_base*")``."""
    return (registry or default_registry()).list(kind, pattern)
