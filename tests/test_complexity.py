"""The DCASE counter: the official torchinfo count, cross-checked by an independent fvcore trace."""

from __future__ import annotations

import optuna
import pytest
import torch
import torchinfo
from fvcore.nn import FlopCountAnalysis
from torch import nn

from asc_search.architecture import ArchSpec, build_model, resolve_preset
from asc_search.complexity import BudgetError, count_complexity, parse_budget
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.space import load_space
from dcase_fvcore import dcase_conv_macs, dcase_macs

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
    assert card.uncounted_parameters == {}
    assert dcase_macs(model) == 29_419_156  # the independent cross-check agrees


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
def test_equals_the_independent_cross_check_on_random_specs(space: str) -> None:
    specs = _random_specs(space, 30, seed=11)
    assert len({s.to_json() for s in specs}) == 30
    for spec in specs:
        model = build_model(spec, pm=PM)
        card = count_complexity(model)
        params = sum(p.numel() for p in model.parameters())
        assert (card.macs, card.params) == (dcase_macs(model), params), spec.to_json()


@pytest.mark.parametrize("stem", ["plain", "sequential", "parallel"])
@pytest.mark.parametrize("stage", ["plain", "sequential", "parallel"])
def test_each_factorization_form(stem: str, stage: str) -> None:
    spec = ArchSpec(arch="sscp_mobile", stem_factorization=stem, factorization=(stage, "plain", stage))
    model = build_model(spec, pm=PM)
    card = count_complexity(model, per_layer=True)
    assert (card.macs, card.params) == _official(model)
    conv = sum(layer.macs for layer in card.layers if layer.kind == "Conv2d")
    assert conv == dcase_conv_macs(model)  # an independent trace agrees on the convolutions
    assert sum(layer.macs for layer in card.layers) == card.macs


def test_pruned_irregular_widths_are_counted_exactly() -> None:
    spec = ArchSpec(channel_overrides={"b1.expand": 40, "b5.expand": 72, "s3": 88, "stem1": 6})
    model = build_model(spec, pm=PM)
    params = sum(p.numel() for p in model.parameters())
    assert (count_complexity(model).macs, params) == _official(model)


class AttentionAndUpsampling(nn.Module):
    """Attention-like parameter-free matmuls and a bilinear upsampling between two convolutions:
    what a plugin architecture with attention looks like to the counter."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)  # 1×256×65 → 8×64×16
        self.query = nn.Linear(8, 8)
        self.key = nn.Linear(8, 8)
        self.out = nn.Conv2d(8, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        tokens = x.flatten(2).transpose(1, 2)  # (1, 1024, 8)
        scores = torch.matmul(self.query(tokens), self.key(tokens).transpose(1, 2))
        mixed = torch.matmul(scores.softmax(-1), tokens)
        x = mixed.transpose(1, 2).reshape(x.shape)
        x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(x).mean((2, 3))


def test_parameter_free_matmul_and_upsampling_cost_nothing() -> None:
    model = AttentionAndUpsampling()
    card = count_complexity(model)
    embed = (8 * 16 + 8) * 64 * 16  # (weight + bias) × output positions
    linear = 2 * (8 * 8 + 8)  # parameters once
    out = (10 * 8 + 10) * 128 * 32  # on the upsampled map
    assert card.macs == embed + linear + out == 508_048
    assert card.macs == _official(model)[0] == dcase_macs(model)
    # fvcore's own rules count the matmuls and the upsampling: the first counter's defect.
    raw = FlopCountAnalysis(model.eval(), torch.zeros(SHAPE)).unsupported_ops_warnings(False)
    assert raw.total() > 10 * card.macs


class WithToken(nn.Module):
    """A positional embedding: parameters outside any leaf layer, used by a functional add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.position = nn.Parameter(torch.zeros(1, 4, 256, 65))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) + self.position).mean((2, 3))


def test_parameters_outside_leaf_layers_are_named() -> None:
    card = count_complexity(WithToken())
    assert card.uncounted_parameters == {"position": 4 * 256 * 65}
    assert card.params == 40 + 4 * 256 * 65  # still parameters, and bytes
    assert card.macs == (4 * 9 + 4) * 256 * 65 == _official(WithToken())[0]


def test_counting_leaves_the_random_stream_and_no_model_behind() -> None:
    model = build_model(ArchSpec(), pm=PM)
    torch.manual_seed(0)
    count_complexity(model)
    after_counting = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_counting, torch.rand(3))  # training draws what it would have drawn
    assert not torchinfo.torchinfo._cached_forward_pass  # the counted model is not kept alive


def test_linear_and_bias_follow_torchinfo() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    card = count_complexity(model)
    assert (card.macs, card.params) == _official(model)


@pytest.mark.parametrize("dtype, per_param", [("float16", 2), ("float32", 4), ("bfloat16", 2)])
def test_bytes_follow_the_storage_dtype(dtype: str, per_param: int) -> None:
    card = count_complexity(build_model(ArchSpec(), pm=PM), storage_dtype=dtype)
    assert card.param_bytes == 61_148 * per_param


def test_int8_bytes_count_weights_once_and_what_each_channel_keeps() -> None:
    """int8 is not parameters × 1: per output channel the converted program keeps a scale, a
    zero point and a bias; BatchNorm folds away; other parameters stay float32."""
    from asc_search.complexity import (
        INT8_BYTES_PER_ACTIVATION,
        INT8_BYTES_PER_CHANNEL,
        int8_param_bytes,
    )

    model = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), nn.LayerNorm(4), nn.BatchNorm2d(3))
    weights = 8 * 9 + 4 * 8
    channels = (8 + 4) * INT8_BYTES_PER_CHANNEL
    unfolded = 4 * (2 * 4) + 4 * (2 * 3 + 2 * 3)  # LayerNorm; a BatchNorm of another width
    assert int8_param_bytes(model) == (weights + channels + unfolded
                                       + 2 * 2 * INT8_BYTES_PER_ACTIVATION)
    baseline = count_complexity(build_model(ArchSpec(), pm=PM), storage_dtype="int8")
    assert 61_148 < baseline.param_bytes < 2 * 61_148


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
