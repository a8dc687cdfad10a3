"""The DCASE counter: equal to the official torchinfo count, to the MAC and to the parameter."""

from __future__ import annotations

import optuna
import pytest
import torch
import torchinfo
from fvcore.nn import FlopCountAnalysis
from torch import nn

from asc_search.architecture import ArchSpec, build_model, resolve_preset
from asc_search.complexity import (
    BudgetError,
    count_complexity,
    parse_budget,
    thop_conv_macs,
)
from asc_search.plugin_manager import build_plugin_manager
from asc_search.search_space import load_space

PM = build_plugin_manager(load_entry_points=False)
SHAPE = (1, 1, 256, 65)


def _official(model: nn.Module) -> tuple[int, int]:
    """What DCASE's nessi reports: torchinfo total_mult_adds and total_params."""
    summary = torchinfo.summary(model, input_size=SHAPE, verbose=0)
    return int(summary.total_mult_adds), int(summary.total_params)


def test_dcase_baseline_exact() -> None:
    model = build_model(resolve_preset("dcase-baseline", pm=PM), pm=PM)
    card = count_complexity(model)
    assert (card.params, card.macs) == (61_148, 29_419_156)
    assert _official(model) == (29_419_156, 61_148)
    assert card.param_bytes == 122_296 and card.fits()
    assert card.uncounted_ops == {}


def test_raw_fvcore_differs_so_the_convention_is_applied() -> None:
    model = build_model(ArchSpec(), pm=PM).eval()
    raw = FlopCountAnalysis(model, torch.zeros(SHAPE)).unsupported_ops_warnings(False)
    assert raw.total() == 31_019_968


def _random_specs(space: str, n: int, seed: int) -> list[ArchSpec]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = load_space(space, pm=PM)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [loaded.suggest(study.ask()).spec for _ in range(n)]


@pytest.mark.parametrize("space", ["sscp_mobile", "cp_mobile"])
def test_equals_torchinfo_on_random_specs(space: str) -> None:
    specs = _random_specs(space, 30, seed=11)
    assert len({s.to_json() for s in specs}) == 30
    for spec in specs:
        model = build_model(spec, pm=PM)
        card = count_complexity(model)
        assert (card.macs, card.params) == _official(model), spec.to_json()


@pytest.mark.parametrize("stem", ["plain", "sequential", "parallel"])
@pytest.mark.parametrize("stage", ["plain", "sequential", "parallel"])
def test_each_factorization_form(stem: str, stage: str) -> None:
    spec = ArchSpec(arch="sscp_mobile", stem_factorization=stem, factorization=(stage, "plain", stage))
    model = build_model(spec, pm=PM)
    card = count_complexity(model, per_layer=True)
    assert (card.macs, card.params) == _official(model)
    conv = sum(layer.macs for layer in card.layers if layer.kind == "Conv2d")
    assert conv == thop_conv_macs(model)  # an independent counter agrees on the convolutions


def test_pruned_irregular_widths_are_counted_exactly() -> None:
    spec = ArchSpec(channel_overrides={"b1.expand": 40, "b5.expand": 72, "s3": 88, "stem1": 6})
    model = build_model(spec, pm=PM)
    params = sum(p.numel() for p in model.parameters())
    assert (count_complexity(model).macs, params) == _official(model)


def test_layers_with_parameters_but_no_rule_are_reported() -> None:
    class WithGru(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.gru = nn.GRU(4 * 256, 8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x).flatten(1, 2).transpose(1, 2)
            return self.gru(y)[0].mean(1)

    card = count_complexity(WithGru())
    assert "aten::gru" in card.uncounted_ops
    assert card.macs == (4 * 9 + 4) * 256 * 65  # the convolution is still counted


def test_linear_and_bias_follow_torchinfo() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    card = count_complexity(model)
    assert (card.macs, card.params) == _official(model)


@pytest.mark.parametrize("dtype, per_param", [("float16", 2), ("float32", 4), ("int8", 1)])
def test_bytes_follow_the_storage_dtype(dtype: str, per_param: int) -> None:
    card = count_complexity(build_model(ArchSpec(), pm=PM), storage_dtype=dtype)
    assert card.param_bytes == 61_148 * per_param


@pytest.mark.parametrize("text, value", [
    ("30M", 30_000_000), ("30e6", 30_000_000), ("29.5M", 29_500_000), ("128kB", 128_000),
    ("128000", 128_000), ("128 kB", 128_000), ("125KiB", 128_000), ("1.5k", 1_500), ("2G", 2 * 10**9),
])
def test_budgets_parse_as_users_write_them(text: str, value: int) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["30Q", "-5M", "0", "", "M", "1.5", "0.0M", "30 M B x", "nan"])
def test_nonsense_budgets_are_one_line_errors(text: str) -> None:
    with pytest.raises(BudgetError) as caught:
        parse_budget(text)
    assert "\n" not in str(caught.value) and repr(text) in str(caught.value)
