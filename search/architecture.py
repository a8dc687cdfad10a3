"""Architecture specs: the JSON-serialisable description every candidate network is built from.

A spec names an architecture plugin (a family) and the numbers that define the network. It is
what a study records per trial and what a checkpoint stores beside its weights, so it must
round-trip through JSON unchanged and build the same network every time.

Every family shares a few fields the engine itself acts on: ``n_classes`` and ``in_channels``;
``base_channels``, the width knob that budget filling turns; and ``channel_overrides``, the
irregular per-layer widths a pruned network is recorded with (names from the family's width
plan). A family's own hyperparameters live in ``family``, typed and validated by the family's
own dataclass (``family_params``). The CP-Mobile family's hyperparameters (multiplier,
expansion, blocks, strides, factorisations) are top-level fields for a historical reason: every
study and checkpoint on disk records them there, and a spec's JSON text is its identity in
cache keys, so they stay where they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import pluggy
import torch
from torch import nn

from asc_search.complexity import MAX_MACS, MAX_PARAM_BYTES, count_complexity
from asc_search.errors import AscSearchError, PluginError
from asc_search.plugin_types import collect_named

FACTORIZATIONS: tuple[str, ...] = ("plain", "sequential", "parallel")


class SpecError(AscSearchError):
    """A spec names an unknown field or holds a value its architecture cannot build."""


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to build a CP-Mobile-family network. Defaults are the DCASE 2024 baseline."""

    arch: str = "cp_mobile"
    n_classes: int = 10
    in_channels: int = 1
    base_channels: int = 32
    channels_multiplier: float = 1.8
    expansion_rate: float = 2.1
    n_blocks: tuple[int, ...] = (3, 2, 1)
    #: Block name (global count, "b1", "b2", …) → (frequency stride, time stride); others (1, 1).
    strides: Mapping[str, tuple[int, int]] = field(
        default_factory=lambda: {"b2": (1, 1), "b3": (1, 2), "b4": (2, 1)}
    )
    #: How each stem convolution's 3×3 is built: plain, sequential (1×3 → 3×1) or parallel sum.
    stem_factorization: str = "plain"
    #: Per stage, how the depthwise 3×3 of every block is built.
    factorization: tuple[str, ...] = ("plain", "plain", "plain")
    #: Per-layer channel counts that replace the computed ones (a pruned, irregular network).
    channel_overrides: Mapping[str, int] = field(default_factory=dict)
    #: The family's own hyperparameters, as JSON values (see ``family_params``); empty for the
    #: CP-Mobile family, whose own are the fields above.
    family: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["n_blocks"] = list(self.n_blocks)
        data["factorization"] = list(self.factorization)
        data["strides"] = {k: list(v) for k, v in sorted(self.strides.items())}
        data["channel_overrides"] = dict(sorted(self.channel_overrides.items()))
        # Written only when set, so the JSON (a spec's identity in studies and cache keys) of
        # every spec made before families had their own hyperparameters stays as it was.
        data.pop("family")
        if self.family:
            data["family"] = json.loads(json.dumps(dict(self.family), sort_keys=True))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchSpec:
        """Build a spec from parsed JSON, naming any unknown key instead of ignoring it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"unknown spec field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        values = dict(data)
        try:
            if "n_blocks" in values:
                values["n_blocks"] = tuple(int(n) for n in values["n_blocks"])
            if "factorization" in values:
                values["factorization"] = tuple(str(f) for f in values["factorization"])
            if "strides" in values:
                values["strides"] = {str(k): (int(v[0]), int(v[1])) for k, v in values["strides"].items()}
            if "channel_overrides" in values:
                values["channel_overrides"] = {str(k): int(v) for k, v in values["channel_overrides"].items()}
            if "family" in values:
                if not isinstance(values["family"], Mapping):
                    raise TypeError("family must be an object of the family's hyperparameters")
                values["family"] = {str(k): v for k, v in values["family"].items()}
            for name in ("n_classes", "in_channels", "base_channels"):
                if name in values:
                    values[name] = _whole(name, values[name])
            for name in ("channels_multiplier", "expansion_rate"):
                if name in values:
                    values[name] = float(values[name])
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise SpecError(f"spec has a malformed value: {exc}") from exc
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"spec is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SpecError("spec JSON must be an object")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: Path) -> ArchSpec:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec ({exc.strerror})") from exc
        try:
            return cls.from_json(text)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from exc

    def with_(self, **changes: Any) -> ArchSpec:
        """A copy with some fields changed (``dataclasses.replace`` with validation by the builder)."""
        return replace(self, **changes)

    def __hash__(self) -> int:  # mappings are not hashable; the JSON text is the identity
        return hash(self.to_json())


ParamsT = TypeVar("ParamsT")


def family_params(spec: ArchSpec, params_type: type[ParamsT]) -> ParamsT:
    """A family's own hyperparameters of ``spec``, as the family's dataclass ``params_type``:
    unknown keys named, missing ones at the dataclass's defaults, and a value the dataclass
    refuses (its ``__post_init__`` raising ``ValueError`` or ``TypeError``) as a ``SpecError``.
    A family calls this in its ``build`` and width plan, so a spec it cannot build is refused
    in one line before anything trains."""
    known = {f.name for f in fields(params_type)}  # type: ignore[arg-type]
    unknown = sorted(set(spec.family) - known)
    if unknown:
        raise SpecError(f"{spec.arch}: unknown family field(s): {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(known))})")
    try:
        return params_type(**spec.family)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{spec.arch}: {exc}") from None


def family_spec(arch: str, params: Any, **shared: Any) -> ArchSpec:
    """The spec of a family network: its own hyperparameters (a dataclass) and the shared fields
    (``base_channels``, ``n_classes``, …)."""
    values = asdict(params)
    return ArchSpec(arch=arch, family=json.loads(json.dumps(values)), **shared)


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(float(value))


@dataclass(frozen=True)
class Architecture:
    """An architecture plugin's offer (see ``asc_architectures`` in hookspecs).

    A family that gives its width plan (``widths`` and ``width_layers``) can be pruned to exact
    per-layer widths, filled to a budget and landed on it by the engine; one without can be
    built, counted, trained and searched as it is. The engine learns a network's widths only
    from these two, never from a family's own modules.
    """

    name: str
    description: str
    build: Callable[[ArchSpec], nn.Module]
    presets: Mapping[str, ArchSpec] = field(default_factory=dict)
    #: The family's layer-width plan: spec → every width a pruning step may change, by name
    #: (the names ``channel_overrides`` records a pruned network's widths under), overrides
    #: applied. Layers that must share a width (a residual add, a depthwise convolution and its
    #: expansion) share a name.
    widths: Callable[[ArchSpec], Mapping[str, int]] | None = None
    #: Built network → the name (as in ``widths``) of the width each prunable layer produces:
    #: the layers a pruning step takes channels from, grouped by the width they share.
    width_layers: Callable[[nn.Module], Mapping[nn.Module, str]] | None = None


def architectures(pm: pluggy.PluginManager) -> dict[str, Architecture]:
    """Every architecture registered through ``asc_architectures``."""
    return collect_named(pm.hook.asc_architectures(), what="architecture")


def presets(pm: pluggy.PluginManager) -> dict[str, ArchSpec]:
    """Every named preset of every architecture (names are unique across architectures)."""
    found: dict[str, ArchSpec] = {}
    for arch in architectures(pm).values():
        for name, spec in arch.presets.items():
            if name in found:
                raise PluginError(f"two architectures register a preset called {name!r}")
            found[name] = spec
    return dict(sorted(found.items()))


def family_of(spec: ArchSpec, *, pm: pluggy.PluginManager) -> Architecture:
    """The architecture plugin that builds ``spec``."""
    known = architectures(pm)
    if spec.arch not in known:
        raise PluginError(f"unknown architecture {spec.arch!r} (known: {', '.join(known) or 'none'})")
    return known[spec.arch]


def build_model(spec: ArchSpec, *, pm: pluggy.PluginManager, seed: int | None = None) -> nn.Module:
    """Build the network a spec describes, through its architecture plugin.

    With ``seed``, the initial weights depend on the seed alone (the global RNG is left as it was),
    which is what makes a training run reproducible.
    """
    family = family_of(spec, pm=pm)
    if seed is None:
        return family.build(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return family.build(spec)


def _width_planned(spec: ArchSpec, *, pm: pluggy.PluginManager) -> Architecture:
    family = family_of(spec, pm=pm)
    if family.widths is None or family.width_layers is None:
        raise SpecError(f"architecture {spec.arch!r} gives no width plan (widths and "
                        "width_layers), so it cannot be pruned or filled to a budget")
    return family


def spec_widths(spec: ArchSpec, *, pm: pluggy.PluginManager, base: int | None = None) -> dict[str, int]:
    """Every named width of ``spec``'s network, by its family's plan: as the spec stands, or,
    with ``base``, the family's own widths at that base width, no per-layer overrides (a
    uniform plan's target)."""
    family = _width_planned(spec, pm=pm)
    if base is not None:
        spec = spec.with_(base_channels=base, channel_overrides={})
    return dict(family.widths(spec))  # type: ignore[misc]


def network_width_layers(model: nn.Module, spec: ArchSpec, *,
                         pm: pluggy.PluginManager) -> dict[nn.Module, str]:
    """Each prunable layer of ``model`` (built from ``spec``) → the name of the width it produces."""
    family = _width_planned(spec, pm=pm)
    return dict(family.width_layers(model))  # type: ignore[misc]


def network_widths(model: nn.Module, spec: ArchSpec, *, pm: pluggy.PluginManager) -> dict[str, int]:
    """The widths a built (perhaps pruned) network has now: each named width's output channels."""
    return {name: _out_channels(layer)
            for layer, name in network_width_layers(model, spec, pm=pm).items()}


def _out_channels(layer: nn.Module) -> int:
    for attribute in ("out_channels", "out_features"):
        if hasattr(layer, attribute):
            return int(getattr(layer, attribute))
    raise SpecError(f"a {type(layer).__name__} names a width but has no output-channel count")


def largest_fitting_width(
    spec: ArchSpec,
    *,
    pm: pluggy.PluginManager,
    max_macs: int = MAX_MACS,
    max_param_bytes: int = MAX_PARAM_BYTES,
    storage_dtype: str = "float16",
    step: int = 8,
    upper: int = 1024,
) -> int | None:
    """The largest ``base_channels`` (a multiple of ``step``) at which ``spec`` fits the budgets.

    Any family whose complexity grows with its base width can be filled: a bisection needs
    about log2(upper / step) counts (≈ 0.05 s each). Returns None when even ``step`` channels
    do not fit.
    """

    def fits(base: int) -> bool:
        model = build_model(spec.with_(base_channels=base, channel_overrides={}), pm=pm)
        card = count_complexity(model, storage_dtype=storage_dtype)
        return card.macs <= max_macs and card.param_bytes <= max_param_bytes

    low, high = 1, upper // step  # in units of step
    if not fits(low * step):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle * step):
            low = middle
        else:
            high = middle - 1
    return low * step


def resolve_preset(name: str, *, pm: pluggy.PluginManager) -> ArchSpec:
    known = presets(pm)
    if name not in known:
        raise SpecError(f"unknown preset {name!r} (known: {', '.join(known)})")
    return known[name]
