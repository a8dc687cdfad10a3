"""Architecture specs: the JSON-serialisable description every candidate network is built from.

A spec names an architecture plugin and the numbers that define the network (widths, multiplier,
expansion, blocks, strides, factorisations). It is what a study records per trial and what a
checkpoint stores beside its weights, so it must round-trip through JSON unchanged and build the
same network every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pluggy
import torch
from torch import nn

from asc_search.errors import AscSearchError, PluginError
from asc_search.plugin_manager import collect_named

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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["n_blocks"] = list(self.n_blocks)
        data["factorization"] = list(self.factorization)
        data["strides"] = {k: list(v) for k, v in sorted(self.strides.items())}
        data["channel_overrides"] = dict(sorted(self.channel_overrides.items()))
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


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(float(value))


@dataclass(frozen=True)
class Architecture:
    """An architecture plugin's offer (see ``asc_architectures`` in hookspecs)."""

    name: str
    description: str
    build: Callable[[ArchSpec], nn.Module]
    presets: Mapping[str, ArchSpec] = field(default_factory=dict)


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


def build_model(spec: ArchSpec, *, pm: pluggy.PluginManager, seed: int | None = None) -> nn.Module:
    """Build the network a spec describes, through its architecture plugin.

    With ``seed``, the initial weights depend on the seed alone (the global RNG is left as it was),
    which is what makes a training run reproducible.
    """
    known = architectures(pm)
    if spec.arch not in known:
        raise PluginError(f"unknown architecture {spec.arch!r} (known: {', '.join(known) or 'none'})")
    if seed is None:
        return known[spec.arch].build(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return known[spec.arch].build(spec)


def resolve_preset(name: str, *, pm: pluggy.PluginManager) -> ArchSpec:
    known = presets(pm)
    if name not in known:
        raise SpecError(f"unknown preset {name!r} (known: {', '.join(known)})")
    return known[name]
