"""The MAC counters and the pre-check: a network torchinfo under-counts is refused, by name.

torchinfo (the official DCASE count) sees layers, not functional calls. The pre-check
(``checked_complexity``) asks every registered counter, and the built-in fvcore trace counts a
convolution or a product with a weight wherever it is called; these tests hold that a network
calling ``F.conv2d`` or ``torch.matmul`` on its own weights is refused with the operator's name,
while every built-in network, parameter-free attention and a positional embedding pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asc_search.architecture import ArchSpec, build_model, resolve_preset
from asc_search.complexity import (
    CountDisagreement,
    MacCount,
    MacCounter,
    NoCountingRule,
    checked_complexity,
    count_complexity,
    mac_counters,
    official_count,
)
from asc_search.errors import PluginError
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.space import load_space
from conftest import one_line_error

SHAPE = (1, 1, 256, 65)


@pytest.fixture
def pm():
    return build_plugin_manager(load_entry_points=False)


class FunctionalConvolution(nn.Module):
    """A plugin network that convolves with its own weight through ``F.conv2d``."""

    def __init__(self, width: int = 8, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)  # a layer: torchinfo counts this one
        self.weight = nn.Parameter(0.1 * torch.randn(n_classes, width, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.relu(self.stem(x)), self.weight, padding=1).mean((2, 3))


class FunctionalMatmul(nn.Module):
    """A plugin network that projects tokens with ``torch.matmul`` on its own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 8, 4, stride=4)  # 1×256×65 → 8×64×16
        self.proj = nn.Parameter(0.1 * torch.randn(10, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (1, 1024, 8)
        return torch.matmul(tokens, self.proj.t()).mean(1)


STEM = (8 * 9 + 8) * 256 * 65  # (weight + bias) × output positions


def test_a_functional_convolution_is_refused_naming_the_operator(pm) -> None:
    model = FunctionalConvolution()
    assert count_complexity(model).macs == STEM  # torchinfo alone: the F.conv2d costs nothing
    hidden = 10 * 8 * 9 * 256 * 65
    with pytest.raises(CountDisagreement) as caught:
        checked_complexity(model, pm=pm)
    message = str(caught.value)
    assert "aten::_convolution" in message and "the network itself (FunctionalConvolution)" in message
    assert f"{STEM + hidden:,} against {STEM:,} MACs" in message  # the two counts
    assert "\n" not in message


def test_a_matmul_on_weights_is_refused_naming_the_operator(pm) -> None:
    model = FunctionalMatmul()
    embed = (8 * 16 + 8) * 64 * 16
    assert count_complexity(model).macs == embed
    with pytest.raises(CountDisagreement) as caught:
        checked_complexity(model, pm=pm)
    # Counted as an nn.Linear(8, 10, bias=False) on these tokens would be: its weight once.
    assert f"aten::matmul ({10 * 8:,} MACs)" in str(caught.value)
    assert f"{embed + 80:,} against {embed:,} MACs" in str(caught.value)


def test_the_refusal_names_the_innermost_module_that_runs_the_call(pm) -> None:
    model = nn.Sequential(nn.BatchNorm2d(1), FunctionalConvolution(width=4))
    with pytest.raises(CountDisagreement, match=r"in module '1' \(FunctionalConvolution\)"):
        checked_complexity(model, pm=pm)


def test_attention_between_activations_and_a_positional_embedding_pass(pm) -> None:
    """What the official count gives nothing, the trace gives nothing: no false refusal."""
    from test_complexity import AttentionAndUpsampling, WithToken

    assert checked_complexity(AttentionAndUpsampling(), pm=pm).macs == 508_048
    card = checked_complexity(WithToken(), pm=pm)
    assert card.uncounted_parameters == {"position": 4 * 256 * 65}  # named, as before


def test_an_operator_without_a_rule_is_refused_not_guessed(pm) -> None:
    class Cumulative(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(self.conv(x), dim=2).mean((2, 3))

    with pytest.raises(NoCountingRule, match=r"operator aten::cumsum \(in the network itself"):
        checked_complexity(Cumulative(), pm=pm)


def _random_specs(space: str, n: int, pm) -> list[ArchSpec]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = load_space(space, pm=pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    return [loaded.suggest(study.ask()).spec for _ in range(n)]


def test_built_in_networks_agree_module_by_module(pm) -> None:
    specs = [resolve_preset(name, pm=pm) for name in ("dcase-baseline", "seed-final")]
    specs += _random_specs("sscp_mobile", 4, pm) + _random_specs("cp_mobile", 4, pm)
    counters = mac_counters(pm)
    assert {"torchinfo", "fvcore"} <= set(counters)
    for spec in specs:
        model = build_model(spec, pm=pm)
        card = count_complexity(model)
        traced = counters["fvcore"].count(model, SHAPE)
        assert (traced.total, traced.by_module) == (card.macs, card.module_macs), spec.to_json()
        assert checked_complexity(model, pm=pm) == card


def test_the_official_counter_is_the_card(pm) -> None:
    model = build_model(resolve_preset("dcase-baseline", pm=pm), pm=pm)
    card = count_complexity(model)
    assert sum(card.module_macs.values()) == card.macs == 29_419_156
    assert mac_counters(pm)["torchinfo"].count(model, SHAPE) == official_count(card)


def test_counting_leaves_the_model_in_its_mode_and_the_random_stream_alone(pm) -> None:
    model = build_model(ArchSpec(), pm=pm).train()
    torch.manual_seed(0)
    checked_complexity(model, pm=pm)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3)) and model.training


def test_the_transformer_teacher_is_refused_for_its_attention_projections(pm) -> None:
    """nn.MultiheadAttention applies its projection weights with F.linear: torchinfo counts
    none of them, so the shipped transformer cannot be a candidate the official count trusts."""
    spec = ArchSpec(arch="patchout_transformer", base_channels=32, n_blocks=(1,),
                    expansion_rate=2.0, factorization=("plain",))
    with pytest.raises(CountDisagreement, match=r"'encoder\.layers\.0\.self_attn' "
                                                r"\(MultiheadAttention\), operators aten::linear"):
        checked_complexity(build_model(spec, pm=pm), pm=pm)


class AskedCounter:
    """A third-party counter: the official figures, plus ``extra`` MACs in the stem."""

    def __init__(self, extra: int, name: str = "mine") -> None:
        self.extra, self.name, self.asked = extra, name, []

    def count(self, model: nn.Module, input_shape: tuple[int, ...]) -> MacCount:
        self.asked.append(input_shape)
        card = count_complexity(model, input_shape=input_shape)
        by_module = dict(card.module_macs)
        by_module["stem"] = by_module.get("stem", 0) + self.extra
        return MacCount(total=card.macs + self.extra, by_module=by_module,
                        operators={"stem": {"mine::stem": by_module["stem"]}})

    @hookimpl
    def asc_mac_counters(self) -> list[MacCounter]:
        return [MacCounter(self.name, "a counter of this test", self.count)]


def test_a_plugin_counter_is_asked_and_can_refuse(pm) -> None:
    model = FunctionalConvolution()
    pm.unregister(name="asc_search.plugins.counters")  # only the plugin's counter is asked
    agreeing = AskedCounter(extra=0)
    pm.register(agreeing, name="agreeing")
    assert checked_complexity(model, pm=pm).macs == STEM and agreeing.asked == [SHAPE]
    pm.unregister(agreeing)
    pm.register(AskedCounter(extra=5), name="disagreeing")
    with pytest.raises(CountDisagreement, match=r"the mine counter .* module 'stem' "
                                                r"\(Conv2d\), operators mine::stem"):
        checked_complexity(model, pm=pm)


def test_a_topology_is_cross_checked_once_and_any_other_again(pm) -> None:
    """The cross-check's trace costs about 2.7 official counts; a search's candidates share a
    few topologies and differ in widths, which cannot change which operators run. A topology
    that agreed is not traced again; another one, or a refusal, is."""
    pm.unregister(name="asc_search.plugins.counters")
    asked = AskedCounter(extra=0)
    pm.register(asked, name="asked")
    for base in (24, 32, 40):  # one topology, three widths
        checked_complexity(build_model(ArchSpec(base_channels=base), pm=pm), pm=pm)
    assert len(asked.asked) == 1
    checked_complexity(build_model(ArchSpec(n_blocks=(2, 2, 1)), pm=pm), pm=pm)
    assert len(asked.asked) == 2  # another topology: traced
    pm.unregister(asked)
    refusing = AskedCounter(extra=5)
    pm.register(refusing, name="refusing")
    for _ in range(2):  # another counter set is asked again, and a refusal is never remembered
        with pytest.raises(CountDisagreement):
            checked_complexity(build_model(ArchSpec(base_channels=24), pm=pm), pm=pm)
    assert len(refusing.asked) == 2


def test_two_counters_with_one_name_are_refused(pm) -> None:
    pm.register(AskedCounter(extra=0, name="fvcore"), name="impostor")
    with pytest.raises(PluginError, match="two plugins register a MAC counter called 'fvcore'"):
        checked_complexity(FunctionalConvolution(), pm=pm)


FUNCTIONAL_PLUGIN = '''
import torch
import torch.nn.functional as F
from torch import nn
from asc_search.architecture import Architecture
from asc_search.hookspecs import hookimpl


class Functional(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.stem = nn.Conv2d(1, spec.base_channels, 3, padding=1)
        self.weight = nn.Parameter(torch.zeros(spec.n_classes, spec.base_channels, 3, 3))

    def forward(self, x):
        return F.conv2d(torch.relu(self.stem(x)), self.weight, padding=1).mean((2, 3))


@hookimpl
def asc_architectures():
    return [Architecture("functional_conv", "convolves with F.conv2d", Functional)]
'''


@pytest.fixture
def functional_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "functional_conv_plugin.py").write_text(FUNCTIONAL_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "functional_conv_plugin"
    sys.modules.pop("functional_conv_plugin", None)


def test_asc_search_count_refuses_it_in_one_line(cli, functional_plugin: str) -> None:
    result = cli("--plugin", functional_plugin, "count", "--arch", "functional_conv",
                 "--base-channels", "8")
    one_line_error(result, "aten::_convolution", "torchinfo", "fvcore")


def test_a_reference_is_refused_before_training(functional_plugin: str, tmp_path: Path) -> None:
    from asc_search.study.references import ReferenceError, read_reference

    pm = build_plugin_manager(load_entry_points=False, extra_modules=[functional_plugin])
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"arch": "functional_conv", "base_channels": 8}))
    with pytest.raises(ReferenceError, match=r"reference .*mine\.json: .*aten::_convolution"):
        read_reference(str(path), pm=pm, storage_url=None, max_macs=30_000_000,
                       max_param_bytes=128_000)


def test_a_trial_is_refused_before_training(functional_plugin: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import asc_search.study.objective as objective
    from asc_search.study.space import space_from_dict

    def no_training(*args, **kwargs):
        raise AssertionError("a refused candidate reached training")

    monkeypatch.setattr(objective, "fit", no_training)
    monkeypatch.setattr(objective, "train_candidate", no_training)
    pm = build_plugin_manager(load_entry_points=False, extra_modules=[functional_plugin])
    raw = {"name": "functional", "fixed": {"arch": "functional_conv", "n_classes": 10,
                                           "in_channels": 1},
           "dimensions": {"base_channels": {"type": "int", "low": 8, "high": 16, "step": 8}}}
    settings = objective.SearchSettings(space=raw, space_source="test")
    resources = objective.TrialResources(
        settings=settings, space=space_from_dict(raw, source="test", pm=pm), pm=pm,
        train=None, validation=None, teacher_logits=None, precision="fp32", artifacts=None)
    trial = optuna.create_study().ask()
    # Refused, not failed: pruned with the counters' one line, no traceback, and not a failure
    # that would count towards stopping the search.
    with pytest.raises(optuna.TrialPruned, match=r"refused by the count: .*aten::_convolution"):
        objective._run_trial(trial, resources)
    assert "macs" not in trial.user_attrs  # refused before it was recorded, let alone trained
    assert trial.user_attrs["status"] == "refused"
    assert "aten::_convolution" in trial.user_attrs["refused"]
