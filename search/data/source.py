"""Turns what the user typed after ``--data`` into a TAU22-layout folder.

A folder path is used as it is; a registered source name (``embedded``, ``embedded-small`` or one a
plugin adds) is prepared in the cache folder. No ``--data`` means the embedded corpus.
"""

from __future__ import annotations

from pathlib import Path

import pluggy

from asc_search.errors import DataError
from asc_search.plugin_types import DatasetSource, collect_named

DEFAULT_SOURCE = "embedded"


def dataset_sources(pm: pluggy.PluginManager) -> dict[str, DatasetSource]:
    """Every named data source registered through ``asc_dataset_sources``."""
    return collect_named(pm.hook.asc_dataset_sources(), what="data source")


def resolve_data(data: str | None, *, pm: pluggy.PluginManager, cache_dir: Path) -> Path:
    """Return the folder for ``data`` (a path or a source name), preparing a source if needed."""
    name = data or DEFAULT_SOURCE
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    sources = dataset_sources(pm)
    if name in sources:
        return sources[name].prepare(cache_dir)
    known = ", ".join(sources) or "none"
    raise DataError(f"{name}: data folder not found, and no data source has that name (known: {known})")


def corpus_classes(data: str | None, *, pm: pluggy.PluginManager, cache: Path) -> tuple[str, ...]:
    """The scene classes of ``data`` in output order (``TAU22Dataset.classes``): what a
    study's networks must predict, known before any network is counted or trained."""
    from asc_search.data.dataset import load_dataset

    return load_dataset(resolve_data(data, pm=pm, cache_dir=cache)).classes
