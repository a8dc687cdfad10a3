"""What plugins hand the engine: the offers the hooks return, and how a hook's offers are collected.

These types live at the bottom of the house, beside ``hookspecs``, because both sides of a hook
need them: the hook's declaration names them, the stage that asks the hook reads them, and a
plugin builds them. Kept in the stage modules, they made the declarations import the stages and
the stages import the plugin manager back, one circle of imports through the whole engine. Here
they import nothing of the engine but its errors, so a plugin can be written against this module
and ``hookspecs`` alone. The stage modules still offer each type under its old name
(``asc_search.pruning.prune.ImportanceMetric`` and so on), so plugins written before keep working.

The architecture family (``asc_search.architecture.Architecture``) stays beside its spec, which
it builds from; that module is at the bottom too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asc_search.errors import PluginError


def collect_named(results: Iterable[Iterable[Any]], *, what: str) -> dict[str, Any]:
    """Flatten a list-returning hook's results into ``{name: item}``, refusing duplicate names.

    Items need a ``name`` attribute. Duplicates are an error rather than "last one wins" because a
    silently shadowed architecture or dataset would make a study's numbers mean something else.
    """
    named: dict[str, Any] = {}
    for batch in results:
        for item in batch or ():
            if item.name in named:
                raise PluginError(f"two plugins register a {what} called {item.name!r}")
            named[item.name] = item
    return dict(sorted(named.items()))


@dataclass(frozen=True)
class DatasetSource:
    """A named data source that ``--data NAME`` resolves to a TAU22-layout folder (see hookspecs)."""

    name: str
    description: str
    prepare: Callable[[Path], Path]


@dataclass(frozen=True)
class Teacher:
    """A teacher plugin's offer (see ``asc_teachers`` in hookspecs).

    ``fit`` takes an ``asc_search.teachers.ensemble.TeacherContext`` and returns a
    ``TeacherFit`` from the same module: those carry the stage's own data types (features,
    labels, the training recipe), so they stay with the stage.
    """

    name: str
    description: str
    fit: Callable[[Any], Any]
    #: Settings that change the teacher's output; part of the cache key.
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Fingerprint of what an option points at (a logits file's size and mtime), for the cache key.
    fingerprint: Callable[[str | None], str] | None = None


@dataclass(frozen=True)
class ImportanceMetric:
    """An importance plugin's offer (see ``asc_importance_metrics`` in hookspecs)."""

    name: str
    description: str
    make: Callable[[], Any]  # a Torch-Pruning importance: callable(group) -> scores per channel
    needs_gradients: bool = False


@dataclass(frozen=True)
class PruningSchedule:
    """A schedule plugin's offer (see ``asc_pruning_schedules`` in hookspecs).

    ``ratios(final_ratio, steps)`` returns the cumulative pruning ratio after each step, starting
    with 0 before the first: ``[0, r1, …, final_ratio]``, non-decreasing.
    """

    name: str
    description: str
    ratios: Callable[[float, int], list[float]]


@dataclass(frozen=True)
class DimensionInfo:
    """A dimension name a space may search (see ``asc_space_dimensions`` in hookspecs)."""

    name: str
    target: str  # spec | plan | training
    description: str
    #: Values a categorical choice may take, given the plugin manager (None: any).
    allowed: Callable[[Any], Collection[Any]] | None = None
    #: Applies a sampled value to the spec fields (spec dimensions whose name is not a field),
    #: or to the training recipe's fields (training dimensions whose name is not a field: a
    #: plugin's ``augment_strength`` may set ``mixstyle_p`` and ``freq_mask_bins`` together).
    apply: Callable[[dict[str, Any], Any], None] | None = None
    #: Whether the dimension has any effect, given the other values of the candidate (fixed and
    #: sampled so far); an inactive dimension is not sampled (None: always active). Sampling a
    #: dimension that changes nothing only adds noise for the sampler to model.
    active_when: Callable[[Mapping[str, Any]], bool] | None = None
