"""Search spaces: declarative files under ``spaces/`` that Optuna samples candidates from.

A space file (TOML or YAML) has ``name``, ``description``, a ``[fixed]`` table of spec fields held
constant, and a ``[dimensions]`` table, one entry per searched dimension::

    [dimensions.base_channels]          # the final, post-pruning width
    type = "int"
    low = 24
    high = 48
    step = 8

    [dimensions.importance]
    type = "categorical"
    choices = ["l1", "l2", "taylor"]

Dimension names are registered by plugins (``asc_space_dimensions``); each says whether it shapes
the architecture spec, the pruning plan or the training recipe, and which values it accepts.
Loading a space checks every name and range, so a typo fails before a study starts.

A space that varies another names it with ``extends`` (a shipped name, or a file path relative to
the extending file) and writes only what differs: its ``[fixed]`` fields are added to the base's
(fixing a base dimension stops it being searched), its dimensions replace the base's of the same
name or are added after them, and ``name`` and ``description`` are its own. A study stores the
merged table, so a worker needs neither file, and the sampler sees the base's dimensions in the
base's order, as if the whole space had been written out.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import pluggy
import yaml

from asc_search.architecture import ArchSpec, SpecError, architectures, build_model, presets
from asc_search.complexity import ComplexityCard, count_complexity
from asc_search.errors import AscSearchError
from asc_search.plugin_types import DimensionInfo, collect_named
from asc_search.training.recipe import TrainingRecipe

TARGETS = ("spec", "plan", "training")
#: Context key (not a dimension) under which a space placed under a study's budgets
#: (``SearchSpace.under_budgets``) tells conditions which ``parent`` presets fit as they are: a
#: plan from such a parent trains that network unpruned, so its keep ratios and pruning
#: dimensions change nothing and are not sampled.
PARENTS_AS_IS = "parents_as_is"


class SpaceError(AscSearchError):
    """A space file that cannot be used: unknown dimension, empty range, unknown plugin name."""


@dataclass(frozen=True)
class Dimension:
    """One searched dimension as a space file declares it."""

    name: str
    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high),
                                       step=self.step, log=self.log)
        # Optuna stores categorical choices as primitives; lists travel as JSON text.
        encoded = [json.dumps(c) if isinstance(c, list | dict) else c for c in self.choices]
        return self.decode(trial.suggest_categorical(self.name, encoded))

    def decode(self, stored: Any) -> Any:
        """The value a trial's stored parameter stands for (lists travel as JSON text)."""
        if self.kind == "categorical" and isinstance(stored, str) and stored[:1] in "[{":
            return json.loads(stored)
        return stored


@dataclass(frozen=True)
class Candidate:
    """One sampled point: the final architecture, its pruning plan and training choices.

    In a space with a ``parent`` dimension (``asc_search.pruning.plans``), ``space.candidate``
    gives a plan still to be settled: its ``spec`` is the parent's and the plan holds relative
    keep ratios. Settling it (``plans.settle``) sets ``parent`` to the wide network, ``spec``
    to the final one and ``targets`` to each pruning stage's per-layer widths.
    """

    spec: ArchSpec
    plan: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    #: The wide network a settled parent-based plan prunes from (None: see ``wide_and_chain``).
    parent: ArchSpec | None = None
    #: Per-layer widths after each pruning stage of a settled parent-based plan, widest first.
    targets: tuple[Mapping[str, int], ...] = ()

    @property
    def unsettled(self) -> bool:
        """A parent-based plan whose final widths are not yet computed (it cannot be trained)."""
        return "parent" in self.plan and self.parent is None


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    source: str
    fixed: dict[str, Any]
    dimensions: tuple[Dimension, ...]
    infos: dict[str, DimensionInfo]
    #: Every architecture preset, by name: what a ``parent`` dimension's choices name.
    presets: Mapping[str, ArchSpec] = field(default_factory=dict)
    #: What conditions may read besides the candidate's values (``PARENTS_AS_IS``).
    context: Mapping[str, Any] = field(default_factory=dict)

    def under_budgets(self, *, pm: pluggy.PluginManager, max_macs: int, max_param_bytes: int,
                      storage_dtype: str = "float16") -> SearchSpace:
        """This space with the ``parent`` presets that fit the budgets as they are named in its
        context, so a plan from one of them samples no keep ratio or pruning dimension.

        In the default run 9 of 21 sampled trials were the DCASE baseline's parent with keep
        ratios that did nothing: copies of the baseline seed trial, drawn again and again. A
        space that searches ``macs_fraction`` (or fixes it below 1) narrows even a fitting
        parent, so none is named; a space that searches ``storage`` names a parent only if it
        fits at every dtype it offers.
        """
        names = next((d.choices for d in self.dimensions if d.name == "parent"),
                     (self.fixed["parent"],) if "parent" in self.fixed else ())
        # A candidate may store its parameters at a dtype of its own: fit at every one offered.
        dtypes = next((d.choices for d in self.dimensions if d.name == "storage"),
                      (self.fixed.get("storage", storage_dtype),))
        narrowed = any(d.name == "macs_fraction" for d in self.dimensions) or \
            float(self.fixed.get("macs_fraction", 1.0)) < 1.0
        as_is: list[str] = []
        for name in () if narrowed else names:
            model = build_model(self.candidate(
                {"parent": name} if "parent" not in self.fixed else {}).spec, pm=pm)
            cards = [count_complexity(model, storage_dtype=str(dtype)) for dtype in dtypes]
            if all(c.macs <= max_macs and c.param_bytes <= max_param_bytes for c in cards):
                as_is.append(name)
        return replace(self, context={**self.context, PARENTS_AS_IS: tuple(as_is)})

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """Sample every active dimension through ``trial`` and assemble the candidate.

        Unconditional dimensions first, then conditional ones in passes, each once the values it
        depends on are known (``DimensionInfo.active_when`` sees fixed and sampled values; a
        condition that reads a value not yet sampled sees it missing and waits a pass)."""
        values: dict[str, Any] = {}
        waiting = []
        for dimension in self.dimensions:
            if self.infos[dimension.name].active_when is None:
                values[dimension.name] = dimension.suggest(trial)
            else:
                waiting.append(dimension)
        while waiting:
            known = {**self.context, **self.fixed, **values}
            ready = [d for d in waiting if self._decidable(d, known)]
            if not ready:  # conditions on each other: decide them on what is known
                ready = waiting[:1]
            for dimension in ready:
                waiting.remove(dimension)
                if self.active(dimension.name, {**self.fixed, **values}):
                    values[dimension.name] = dimension.suggest(trial)
        return self.candidate(values)

    def active(self, name: str, values: Mapping[str, Any]) -> bool:
        """Whether dimension ``name`` has an effect given ``values`` (fixed and sampled)."""
        condition = self.infos[name].active_when
        return condition is None or bool(condition({**self.context, **values}))

    def _decidable(self, dimension: Dimension, known: Mapping[str, Any]) -> bool:
        """A conditional dimension is decided once no other waiting dimension could change its
        condition: the conditions name their inputs only through ``values``, so wait until every
        unconditional value is in (true here) and every other conditional one it might read."""
        others = {d.name for d in self.dimensions} - set(known) - {dimension.name}
        probe = _Recording(known)
        self.infos[dimension.name].active_when(probe)  # type: ignore[misc]
        return not (probe.read & others)

    def values_of(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Dimension values from a finished trial's ``params`` (the reverse of ``suggest``)."""
        return {d.name: d.decode(params[d.name]) for d in self.dimensions if d.name in params}

    def params_for(self, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Trial params that make ``suggest`` return ``values`` (a seed trial), or None when
        a value lies outside the space: a fixed field that differs, or a choice it lacks."""
        params, _ = self.params_or_why(values)
        return params

    def params_or_why(self, values: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """``params_for``, and when a value lies outside the space, which one and why."""
        params: dict[str, Any] = {}
        for name, value in values.items():
            dimension = next((d for d in self.dimensions if d.name == name), None)
            if dimension is None:
                if name in self.fixed and self.fixed[name] != value:
                    return None, f"{name} is fixed at {self.fixed[name]!r}, not {value!r}"
                continue
            if dimension.kind == "categorical":
                encoded = json.dumps(value) if isinstance(value, list | dict) else value
                choices = [json.dumps(c) if isinstance(c, list | dict) else c
                           for c in dimension.choices]
                if encoded not in choices:
                    return None, f"{name} offers no {value!r}"
                params[name] = encoded
            else:
                if not dimension.low <= value <= dimension.high:
                    return None, (f"{name}'s range {dimension.low:g}–{dimension.high:g} "
                                  f"excludes {value:g}")
                params[name] = value
        return params, ""

    def candidate(self, values: Mapping[str, Any]) -> Candidate:
        """Assemble a candidate from dimension values (sampled, or a seed trial's)."""
        spec_fields = {k: v for k, v in self.fixed.items() if k in _SPEC_FIELDS}
        plan = {k: v for k, v in self.fixed.items() if self._target(k) == "plan"}
        training = {k: v for k, v in self.fixed.items() if self._target(k) == "training"}
        for name, value in values.items():
            info = self.infos[name]
            if info.target == "spec":
                if info.apply is not None:
                    info.apply(spec_fields, value)
                else:
                    spec_fields[name] = value
            elif info.target == "plan":
                plan[name] = value
            elif info.apply is not None:  # a plugin's dimension that sets recipe fields
                info.apply(training, value)
            else:
                training[name] = value
        try:
            if "parent" in plan:  # the parent preset, with the space's fixed fields over it
                preset = self.presets[plan["parent"]]
                if "family" in spec_fields:  # a family's own dimensions set some of its fields
                    spec_fields["family"] = {**preset.family, **spec_fields["family"]}
                spec = preset.with_(**spec_fields)
            else:
                spec = ArchSpec.from_dict(spec_fields)
        except SpecError as exc:
            raise SpaceError(f"{self.source}: {exc}") from exc
        return Candidate(spec=spec, plan=plan, training=training)

    def _target(self, name: str) -> str | None:
        info = self.infos.get(name)
        return info.target if info else None


_SPEC_FIELDS = frozenset(ArchSpec.__dataclass_fields__)
_RECIPE_FIELDS = frozenset(TrainingRecipe.__dataclass_fields__)


class _Recording(dict):
    """A mapping that remembers which keys a condition read (to order conditional dimensions)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


def space_dimensions(pm: pluggy.PluginManager) -> dict[str, DimensionInfo]:
    """Every dimension name registered through ``asc_space_dimensions``."""
    return collect_named(pm.hook.asc_space_dimensions(), what="search-space dimension")


def builtin_space_path(name: str) -> Path:
    """Path of a space shipped in ``spaces/`` (``sscp_mobile``, ``cp_mobile``)."""
    folder = resources.files("asc_search.spaces")
    for suffix in (".toml", ".yaml", ".yml"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return Path(str(candidate))
    shipped = sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir()
                     if p.name.endswith((".toml", ".yaml", ".yml")))
    raise SpaceError(f"unknown space {name!r} (shipped: {', '.join(shipped)}; or give a file path)")


def load_space(name_or_path: str | Path, *, pm: pluggy.PluginManager) -> SearchSpace:
    """Load and validate a space by shipped name or file path."""
    data, source = read_space(name_or_path)
    return space_from_dict(data, source=source, pm=pm)


def space_from_dict(data: dict[str, Any], *, source: str,
                    pm: pluggy.PluginManager) -> SearchSpace:
    """Validate a parsed space (a study stores its space this way, so workers need no file)."""
    return _validated(data, source=source, pm=pm)


def read_space(name_or_path: str | Path, *,
               _extending: tuple[Path, ...] = ()) -> tuple[dict[str, Any], str]:
    """The parsed table of a space file, shipped name or path, with what it ``extends`` merged
    in, and where it came from."""
    path = Path(name_or_path)
    if not path.suffix:
        path = builtin_space_path(str(name_or_path))
    if not path.is_file():
        raise SpaceError(f"{path}: space file not found")
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpaceError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a table at the top level")
    if "extends" not in data:
        return data, str(path)
    base_name = data.pop("extends")
    if not isinstance(base_name, str) or not base_name:
        raise SpaceError(f"{path}: 'extends' names a space: a shipped name or a file path")
    here = path.resolve()
    if here in _extending:
        chain = " → ".join(p.name for p in (*_extending, here))
        raise SpaceError(f"{path}: spaces extend each other in a cycle ({chain})")
    base_path = Path(base_name)
    if base_path.suffix and not base_path.is_absolute():
        base_path = path.parent / base_path  # relative to the extending file, not the shell
    try:
        base, _ = read_space(base_path if base_path.suffix else base_name,
                             _extending=(*_extending, here))
    except SpaceError as exc:
        raise SpaceError(f"{path}: extends {base_name!r}: {exc}") from None
    return _merged(base, data, source=path), str(path)


def _merged(base: dict[str, Any], child: dict[str, Any], *, source: Path) -> dict[str, Any]:
    """``child`` written over ``base`` (see the module docstring)."""
    for key in ("fixed", "dimensions"):
        for table, label in ((base, "its base"), (child, "it")):
            if not isinstance(table.get(key, {}), dict):
                raise SpaceError(f"{source}: [{key}] of {label} is not a table")
    fixed, searched = dict(child.get("fixed", {})), dict(child.get("dimensions", {}))
    dimensions = {k: v for k, v in base.get("dimensions", {}).items() if k not in fixed}
    dimensions.update(searched)  # a replaced dimension keeps its place; new ones come last
    merged = {key: child[key] for key in ("name", "description") if key in child}
    merged["fixed"] = {**{k: v for k, v in base.get("fixed", {}).items() if k not in searched},
                       **fixed}
    merged["dimensions"] = dimensions
    # Anything else (a key the validation will refuse) is the child's, then the base's.
    for key, value in [*child.items(), *base.items()]:
        if key not in ("name", "description"):
            merged.setdefault(key, value)
    return merged


def _validated(data: dict[str, Any], *, source: str, pm: pluggy.PluginManager) -> SearchSpace:
    infos = space_dimensions(pm)
    unknown_top = sorted(set(data) - {"name", "description", "fixed", "dimensions"})
    if unknown_top:
        raise SpaceError(f"{source}: unknown top-level key(s) {', '.join(unknown_top)}")
    fixed = dict(data.get("fixed", {}))
    for key, value in fixed.items():
        if key not in _SPEC_FIELDS and key not in infos:
            raise SpaceError(f"{source}: [fixed] names unknown field {key!r}")
        if key in infos:
            _check_allowed(infos[key], [value], source=source, pm=pm)
    arch = fixed.get("arch", "cp_mobile")
    known_arch = architectures(pm)
    if arch not in known_arch:
        raise SpaceError(f"{source}: unknown architecture {arch!r} (known: {', '.join(known_arch)})")
    raw = data.get("dimensions", {})
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: no [dimensions] to search")
    dimensions = []
    for name, spec in raw.items():
        if name not in infos:
            raise SpaceError(
                f"{source}: unknown dimension {name!r} (known: {', '.join(sorted(infos))})"
            )
        if name in fixed:
            raise SpaceError(f"{source}: {name!r} is both fixed and searched")
        if (infos[name].target == "training" and infos[name].apply is None
                and name not in _RECIPE_FIELDS):
            # It would be sampled, then refused by the recipe when the trial trains.
            raise SpaceError(
                f"{source}: training dimension {name!r} is not a training-recipe field and its "
                "plugin gives no apply() that sets recipe fields, so it could never train")
        dimension = _dimension(name, spec, source=source)
        if dimension.kind == "categorical":
            _check_allowed(infos[name], dimension.choices, source=source, pm=pm)
        dimensions.append(dimension)
    space = SearchSpace(name=str(data.get("name", Path(source).stem)),
                        description=str(data.get("description", "")), source=source,
                        fixed=fixed, dimensions=tuple(dimensions), infos=infos,
                        presets=presets(pm))
    # Build the space's smallest corner once, so a spec field the architecture rejects fails here.
    corner = {d.name: d.choices[0] if d.kind == "categorical" else
              int(d.low) if d.kind == "int" else d.low for d in dimensions}
    try:
        build_model(space.candidate(corner).spec, pm=pm)
    except SpecError as exc:
        raise SpaceError(f"{source}: its candidates cannot be built: {exc}") from exc
    return space


def _dimension(name: str, spec: Any, *, source: str) -> Dimension:
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{source}: dimension {name!r} needs a table with a 'type'")
    kind = spec["type"]
    where = f"{source}: dimension {name!r}"
    if kind == "categorical":
        choices = tuple(spec.get("choices", ()))
        if not choices:
            raise SpaceError(f"{where}: empty choices")
        return Dimension(name=name, kind=kind, choices=choices)
    if kind not in ("int", "float"):
        raise SpaceError(f"{where}: type {kind!r} unknown (int, float or categorical)")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SpaceError(f"{where}: needs numeric 'low' and 'high'") from exc
    step = spec.get("step")
    log = bool(spec.get("log", False))
    if not math.isfinite(low) or not math.isfinite(high) or low > high:
        raise SpaceError(f"{where}: empty range [{low:g}, {high:g}]")
    if step is not None and (step <= 0 or (low + step > high and low != high)):
        raise SpaceError(f"{where}: step {step} leaves no value in [{low:g}, {high:g}]"
                         if step > 0 else f"{where}: step must be positive")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise SpaceError(f"{where}: int range needs whole bounds")
    return Dimension(name=name, kind=kind, low=low, high=high, step=step, log=log)


def _check_allowed(info: DimensionInfo, values: Collection[Any], *, source: str,
                   pm: pluggy.PluginManager) -> None:
    if info.allowed is None:
        return
    allowed = info.allowed(pm)
    for value in values:
        if value not in allowed:
            shown = ", ".join(map(str, allowed))
            raise SpaceError(f"{source}: {info.name} {value!r} is not known (known: {shown})")


def smallest_candidate(space: SearchSpace, *, pm: pluggy.PluginManager,
                       storage_dtype: str = "float16") -> tuple[Candidate, ComplexityCard]:
    """The space's cheapest final network, found one spec dimension at a time.

    Numeric dimensions shrink the network towards their low end; for each categorical one, every
    choice is counted with the others held at their cheapest. Complexity is close to additive over
    these dimensions, so this finds the minimum in about 20 counts (≈ 1 s) instead of searching
    the product. A run uses it to refuse, before any training, a budget no candidate can meet.
    """
    values: dict[str, Any] = {}
    for dimension in space.dimensions:
        if space.infos[dimension.name].target != "spec":
            continue
        values[dimension.name] = (dimension.choices[0] if dimension.kind == "categorical"
                                  else int(dimension.low) if dimension.kind == "int"
                                  else dimension.low)

    def count(trial_values: Mapping[str, Any]) -> ComplexityCard:
        model = build_model(space.candidate(trial_values).spec, pm=pm)
        return count_complexity(model, storage_dtype=storage_dtype)

    for dimension in space.dimensions:
        if dimension.name not in values or dimension.kind != "categorical":
            continue
        cards = {index: count({**values, dimension.name: choice})
                 for index, choice in enumerate(dimension.choices)}
        best = min(cards, key=lambda i: (cards[i].macs, cards[i].param_bytes))
        values[dimension.name] = dimension.choices[best]
    return space.candidate(values), count(values)
