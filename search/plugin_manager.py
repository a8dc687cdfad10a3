"""Builds the pluggy plugin manager: built-ins, installed entry points, then ad-hoc ``--plugin``.

Built-in plugins are ordinary modules (the ``plugins/`` folder) that register the way a third
party's do: through entry points, in a group of their own (``asc_search.builtin`` in
pyproject.toml) so that ``ASC_SEARCH_LOAD_PLUGINS`` and ``load_entry_points=False`` leave them in
place. Nothing in the engine names them: it asks the manager.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from asc_search import hookspecs
from asc_search.errors import PluginError
from asc_search.plugin_types import collect_named  # noqa: F401  (its old home)

ENTRY_POINT_GROUP = "asc_search"
#: Comma-separated list of entry-point plugin names to load; empty string loads none.
LOAD_PLUGINS_ENV = "ASC_SEARCH_LOAD_PLUGINS"

#: The entry-point group of the built-in plugins (pyproject.toml).
BUILTIN_GROUP = "asc_search.builtin"
#: The built-in plugins' module paths, as the installed package registers them.
DEFAULT_PLUGINS: tuple[str, ...] = tuple(
    entry.value for entry in importlib.metadata.entry_points(group=BUILTIN_GROUP))


@dataclass(frozen=True)
class PluginInfo:
    """What ``asc-search plugins list`` shows about one registered plugin."""

    name: str
    origin: str  # "builtin", "entry point <dist> <version>" or "--plugin"
    hooks: tuple[str, ...]


def build_plugin_manager(
    *, extra_modules: Sequence[str] = (), load_entry_points: bool = True
) -> pluggy.PluginManager:
    """Return a plugin manager with built-ins, installed entry points and ``extra_modules``.

    ``extra_modules`` are dotted module paths given with ``--plugin``; an unknown path or one that
    fails to import is a one-line ``PluginError`` naming it.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if not DEFAULT_PLUGINS:
        raise PluginError("asc-search's built-in plugins are not registered: its package "
                          "metadata is missing (install it: pip install -e .)")
    for dotted in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(dotted), name=dotted)
    if load_entry_points:
        _load_entry_points(pm)
    for dotted in extra_modules:
        register_module(pm, dotted)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # e.g. a plugin written for a newer asc-search
        raise PluginError(f"a plugin cannot be used: {exc}") from exc
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is None:
        _guarded(lambda: pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP), "entry points")
        return
    for name in filter(None, (part.strip() for part in wanted.split(","))):
        _guarded(
            lambda name=name: pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name),
            f"entry point {name!r}",
        )


def _guarded(load: Any, what: str) -> None:
    try:
        load()
    except Exception as exc:  # a broken third-party plugin must not show a traceback
        raise PluginError(f"plugin {what} failed to load: {type(exc).__name__}: {exc}") from exc


def register_module(pm: pluggy.PluginManager, dotted: str) -> None:
    """Import ``dotted`` and register it as a plugin (what ``--plugin dotted`` does)."""
    if pm.has_plugin(dotted):
        return
    try:
        module = importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        installed = sorted(name for name, _ in pm.list_name_plugin() if name not in DEFAULT_PLUGINS)
        raise PluginError(f"unknown plugin module {dotted!r}: {exc} (installed plugins: "
                          f"{', '.join(installed) or 'none'}; --plugin takes an importable "
                          "module path)") from exc
    except Exception as exc:
        raise PluginError(
            f"plugin module {dotted!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if pm.is_registered(module):  # installed: its entry point registered it already
        return
    pm.register(module, name=dotted)


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """List every registered plugin with where it came from and the hooks it implements."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if name in DEFAULT_PLUGINS:
            origin = "builtin"
        elif dist is not None:
            origin = f"entry point ({dist.project_name} {dist.version})"
        else:
            origin = "--plugin"
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        infos.append(PluginInfo(name=name, origin=origin, hooks=hooks))
    return infos


def providers(pm: pluggy.PluginManager, hook: str) -> dict[str, str]:
    """Which registered plugin gives each named item of a list-returning hook, with the
    plugin's origin: ``{item name: "plugin (origin)"}``, for ``plugins list``."""
    origins = {info.name: info.origin for info in describe_plugins(pm)}
    found: dict[str, str] = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        for item in impl.function() or ():
            found[item.name] = f"{impl.plugin_name}: {origins.get(impl.plugin_name, '?')}"
    return found


