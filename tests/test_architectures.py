"""Architecture plugins: specs round-trip through JSON and build the same network."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from asc_search.architecture import (
    Architecture,
    ArchSpec,
    SpecError,
    architectures,
    build_model,
    largest_fitting_width,
    presets,
    resolve_preset,
)
from asc_search.complexity import count_complexity
from asc_search.errors import PluginError
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager

PM = build_plugin_manager(load_entry_points=False)


def _kinds(module: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.kernel_size) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_builtin_architectures_and_presets() -> None:
    assert set(architectures(PM)) == {"cp_mobile", "sscp_mobile", "patchout_transformer"}
    assert {"dcase-baseline", "seed-s1-start", "seed-s2-start", "seed-s3-start", "seed-s3-middle",
            "seed-final"} <= set(presets(PM))
    assert resolve_preset("seed-s1-start", pm=PM).base_channels == 64
    assert resolve_preset("seed-s2-start", pm=PM).base_channels == 96
    assert resolve_preset("seed-s3-middle", pm=PM).base_channels == 64


def test_seed_final_width_fits_the_budgets() -> None:
    card = count_complexity(build_model(resolve_preset("seed-final", pm=PM), pm=PM))
    assert card.fits() and (card.macs, card.params) == (28_684_404, 60_652)


def test_json_round_trip_builds_the_same_network() -> None:
    spec = ArchSpec(arch="sscp_mobile", base_channels=40, channels_multiplier=1.7, n_blocks=(2, 2, 1),
                    stem_factorization="parallel", factorization=("sequential", "parallel", "plain"),
                    strides={"b2": (2, 1), "b4": (1, 2)}, channel_overrides={"b1.expand": 48})
    text = spec.to_json()
    again = ArchSpec.from_json(text)
    assert again == spec and again.to_json() == text
    assert json.loads(text)["factorization"] == ["sequential", "parallel", "plain"]
    torch.manual_seed(0)
    first = build_model(spec, pm=PM).eval()
    torch.manual_seed(0)
    second = build_model(again, pm=PM).eval()
    x = torch.randn(2, 1, 256, 65)
    torch.testing.assert_close(first(x), second(x))
    assert first(x).shape == (2, 10)


def test_factorization_is_per_stage() -> None:
    spec = ArchSpec(arch="sscp_mobile", factorization=("plain", "sequential", "parallel"))
    model = build_model(spec, pm=PM)
    assert (3, 3) in _kinds(model.stages.s1.b1.depthwise)
    assert _kinds(model.stages.s2.b4.depthwise) == [(1, 3), (3, 1)]
    assert sorted(_kinds(model.stages.s3.b6.depthwise)) == [(1, 3), (3, 1)]
    assert type(model.stages.s3.b6.depthwise).__name__ == "ParallelSum"
    stem = build_model(spec.with_(stem_factorization="parallel"), pm=PM).stem
    assert type(stem[0]).__name__ == "ParallelSum" and len(_kinds(stem[0])) == 4


def test_residuals_follow_the_baseline() -> None:
    model = build_model(ArchSpec(), pm=PM)
    blocks = {name: block for name, block in model.named_modules() if hasattr(block, "residual")}
    residual = {name.rsplit(".", 1)[1] for name, block in blocks.items() if block.residual}
    # b1-b3 keep 32 channels, b4 widens to 56, b5 keeps 56, b6 widens to 104.
    assert residual == {"b1", "b2", "b3", "b5"}
    assert isinstance(model.stages.s1.b3.shortcut, nn.AvgPool2d)  # strided (1, 2)


def test_channel_overrides_must_keep_residual_groups_equal() -> None:
    with pytest.raises(SpecError, match="residual add needs stem2 and s1 equally wide"):
        build_model(ArchSpec(channel_overrides={"s1": 24}), pm=PM)
    build_model(ArchSpec(channel_overrides={"s1": 24, "stem2": 24}), pm=PM)
    with pytest.raises(SpecError, match="unknown layer"):
        build_model(ArchSpec(channel_overrides={"nope": 8}), pm=PM)


@pytest.mark.parametrize("change, message", [
    ({"factorization": ("plain", "sequential", "plain")}, "cp_mobile uses plain"),
    ({"arch": "sscp_mobile", "factorization": ("plain", "diagonal", "plain")}, "diagonal"),
    ({"arch": "sscp_mobile", "factorization": ("plain",)}, "1 entries for 3 stages"),
    ({"strides": {"b9": (2, 2)}}, "b1…b6"),
    ({"n_blocks": (3, 0, 1)}, "at least one block"),
])
def test_invalid_specs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_model(ArchSpec().with_(**change), pm=PM)


def test_unknown_fields_and_architectures() -> None:
    with pytest.raises(SpecError, match="unknown spec field"):
        ArchSpec.from_dict({"base_channels": 32, "widht": 3})
    with pytest.raises(SpecError, match="whole number"):
        ArchSpec.from_dict({"base_channels": 32.5})
    with pytest.raises(PluginError, match="unknown architecture 'resnet'"):
        build_model(ArchSpec(arch="resnet"), pm=PM)


def test_largest_fitting_width() -> None:
    assert largest_fitting_width(ArchSpec(), pm=PM) == 32
    wide = build_model(ArchSpec(base_channels=40), pm=PM)
    assert not count_complexity(wide).fits()
    assert largest_fitting_width(ArchSpec(), pm=PM, max_macs=10_000_000) == 16
    assert largest_fitting_width(ArchSpec(), pm=PM, max_macs=1_000) is None


def test_an_architecture_plugin_is_buildable_and_counted() -> None:
    class TinyNet:
        @hookimpl
        def asc_architectures(self):
            def build(spec: ArchSpec) -> nn.Module:
                return nn.Sequential(nn.Conv2d(1, spec.base_channels, 3, padding=1),
                                     nn.BatchNorm2d(spec.base_channels), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(spec.base_channels, spec.n_classes))

            return [Architecture("tiny", "a test network", build,
                                 {"tiny-8": ArchSpec(arch="tiny", base_channels=8)})]

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(TinyNet())
    model = build_model(resolve_preset("tiny-8", pm=pm), pm=pm)
    card = count_complexity(model)
    assert card.params == 8 * 9 + 8 + 16 + 8 * 10 + 10
    assert card.macs == (8 * 9 + 8) * 256 * 65 + 16 + 90


#: A CP-Mobile spec as studies written before families had their own hyperparameters stored it.
STORED_SPEC = ('{"arch": "sscp_mobile", "base_channels": 64, "channel_overrides": {"b1.expand": 100}, '
               '"channels_multiplier": 1.8, "expansion_rate": 2.1, "factorization": '
               '["sequential", "sequential", "sequential"], "in_channels": 1, "n_blocks": [3, 2, 1], '
               '"n_classes": 10, "stem_factorization": "plain", "strides": {"b2": [1, 1], '
               '"b3": [1, 2], "b4": [2, 1]}}')


def test_a_spec_stored_before_family_fields_loads_and_keeps_its_identity() -> None:
    """A spec's JSON text is its identity in studies and cache keys: adding ``family`` must not
    change the text of a spec that has none."""
    spec = ArchSpec.from_json(STORED_SPEC)
    assert spec.family == {} and spec.to_json() == STORED_SPEC
    assert build_model(spec, pm=PM) is not None


@dataclass(frozen=True)
class _ToyParams:
    depth: int = 2
    kernels: tuple[int, ...] = (3, 1)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be ≥ 1, got {self.depth}")


def test_a_family_owns_typed_hyperparameters_that_round_trip_and_name_unknown_keys() -> None:
    from asc_search.architecture import SpecError, family_params, family_spec

    spec = family_spec("toy", _ToyParams(depth=3), base_channels=16)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and family_params(again, _ToyParams).depth == 3
    with pytest.raises(SpecError, match=r"unknown family field.*widht.*known: depth, kernels"):
        family_params(spec.with_(family={"depth": 3, "widht": 4}), _ToyParams)
    with pytest.raises(SpecError, match="depth must be ≥ 1"):
        family_params(spec.with_(family={"depth": 0}), _ToyParams)
    with pytest.raises(SpecError, match="family must be an object"):
        ArchSpec.from_dict({"arch": "toy", "family": [1, 2]})


def test_a_family_without_a_width_plan_is_refused_by_pruning_in_one_line() -> None:
    from asc_search.architecture import SpecError, spec_widths

    spec = resolve_preset("dcase-baseline", pm=PM)
    assert spec_widths(spec, pm=PM)["stem2"] == 32
    transformer = ArchSpec(arch="patchout_transformer", base_channels=64, n_blocks=(2,))
    with pytest.raises(SpecError, match=r"patchout_transformer.*no width plan"):
        spec_widths(transformer, pm=PM)
