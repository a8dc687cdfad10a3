"""The pruning engine: physically smaller networks that fit the budget, and its plugins."""

from __future__ import annotations

import importlib.metadata
import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from asc_search.architecture import ArchSpec, build_model, resolve_preset
from asc_search.complexity import count_complexity
from asc_search.errors import PluginError
from asc_search.features.experiment import load_split_data
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.prune import (
    ImportanceMetric,
    PruningError,
    PruningPlan,
    PruningSchedule,
    prune,
    pruning_schedules,
    stage_widths,
)
from asc_search.training.checkpoint import load_checkpoint, save_checkpoint
from asc_search.training.recipe import TrainingRecipe
from conftest import one_line_error

PM = build_plugin_manager(load_entry_points=False)


def _marked(spec: ArchSpec, dead: list[int]) -> nn.Module:
    """A network whose b1 expansion channels ``dead`` carry no weight, and whose BatchNorm biases
    in that group name each channel, so we can see which channels survive pruning."""
    model = build_model(spec, pm=PM, seed=0)
    block = model.stages.s1.b1
    with torch.no_grad():
        for index in dead:
            block.expand[0].weight[index] = 0
            block.expand[1].weight[index] = 0
            block.depthwise[0].weight[index] = 0
            block.depthwise[1].weight[index] = 0
            block.project[0].weight[:, index] = 0
        block.expand[1].bias.copy_(torch.arange(block.expand[1].num_features, dtype=torch.float32))
    return model


@pytest.mark.parametrize("metric", ["l1", "l2", "bn_scale"])
def test_dead_channels_go_first(metric: str) -> None:
    spec = ArchSpec(base_channels=32)  # b1 expands 32 → 64 channels
    dead = [3, 17, 20, 41, 42, 50, 58, 63]
    model = _marked(spec, dead)
    plan = PruningPlan(importance=metric, schedule="one_shot", steps=1, chain=(24,),
                       final_finetune_epochs=0)
    result = prune(model, spec, plan, pm=PM, progress=False)
    survivors = result.model.stages.s1.b1.expand[1].bias.round().int().tolist()
    assert len(survivors) == 48  # 64 × 24/32, a multiple of 8
    assert not set(dead) & set(survivors), f"{metric} kept dead channels"


@pytest.mark.parametrize("schedule", ["one_shot", "linear", "agp", "progressive"])
def test_every_schedule_reaches_its_target(schedule: str) -> None:
    ratios = pruning_schedules(PM)[schedule].ratios(0.5, 4)
    assert ratios[0] == 0 and ratios[-1] == pytest.approx(0.5) and len(ratios) == 5
    assert all(b >= a for a, b in itertools.pairwise(ratios))
    spec = resolve_preset("seed-s1-start", pm=PM)  # base 64
    steps_seen = []
    result = prune(build_model(spec, pm=PM, seed=0), spec,
                   PruningPlan(schedule=schedule, steps=4, chain=(48, 32) if schedule == "progressive"
                               else (32,), final_finetune_epochs=0),
                   pm=PM, progress=False, on_step=steps_seen.append)
    widths = result.spec.channel_overrides
    assert (widths["stem2"], widths["s1"]) == (32, 32)
    assert result.card.fits()
    macs = [s.macs for s in steps_seen]
    assert macs == sorted(macs, reverse=True)  # every step removes, none adds back
    if schedule == "agp":  # cubic: the first step removes the most
        drops = [a - b for a, b in zip([count_complexity(build_model(spec, pm=PM)).macs, *macs],
                                       macs, strict=False)]
        assert drops[0] == max(drops)


@pytest.mark.parametrize(("schedule", "chain"), [("linear", (32,)), ("agp", (64, 32))])
def test_a_third_of_96_channels_is_32_not_24(schedule: str, chain: tuple[int, ...]) -> None:
    # Regression: 1 − 2/3 in floating point kept int(31.99…) = 31 channels, rounded down to 24.
    spec = resolve_preset("seed-s2-start", pm=PM)  # base 96
    result = prune(build_model(spec, pm=PM, seed=0), spec,
                   PruningPlan(schedule=schedule, steps=5, chain=chain, final_finetune_epochs=0),
                   pm=PM, progress=False)
    final = count_complexity(build_model(resolve_preset("seed-final", pm=PM), pm=PM))
    assert (result.card.macs, result.card.params) == (final.macs, final.params) == \
        (28_684_404, 60_652)


def _irregular_targets(spec: ArchSpec, seed: int) -> dict[str, int]:
    """Random per-layer widths below ``spec``'s, equal where a residual add couples layers."""
    from asc_search.plugins.mobile_nets import plan_network

    plan = plan_network(spec)
    rng = torch.Generator().manual_seed(seed)
    targets = {k: int(torch.randint(max(1, w // 3), w, (1,), generator=rng))
               for k, w in plan.widths.items()}
    for blocks in plan.blocks:
        for block in blocks:
            if block.residual:
                targets[block.output] = targets[block.input]
    return targets


@pytest.mark.parametrize(("stem", "stages", "schedule"), [
    ("plain", ("plain", "plain", "plain"), "agp"),
    ("sequential", ("sequential", "parallel", "plain"), "linear"),
    ("parallel", ("parallel", "sequential", "sequential"), "one_shot"),
])
def test_pruning_lands_exactly_on_irregular_per_layer_widths(stem: str, stages: tuple[str, ...],
                                                             schedule: str) -> None:
    spec = ArchSpec(arch="sscp_mobile", base_channels=48, stem_factorization=stem,
                    factorization=stages)
    targets = _irregular_targets(spec, seed=len(stem))
    seen = []
    result = prune(build_model(spec, pm=PM, seed=0), spec,
                   PruningPlan(schedule=schedule, steps=3, targets=(targets,),
                               final_finetune_epochs=0, max_macs=10**9, max_param_bytes=10**9),
                   pm=PM, progress=False, on_step=seen.append)
    from asc_search.plugins.mobile_nets import plan_network

    assert plan_network(result.spec).widths == targets  # every layer, exactly
    expected = count_complexity(build_model(spec.with_(channel_overrides=targets), pm=PM))
    assert (result.card.macs, result.card.params) == (expected.macs, expected.params)
    assert [s.macs for s in seen] == sorted((s.macs for s in seen), reverse=True)
    x = torch.randn(2, 1, 256, 65)
    rebuilt = build_model(result.spec, pm=PM)
    rebuilt.load_state_dict(result.model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), result.model.eval()(x))


def test_targets_that_split_a_residual_add_or_widen_are_refused() -> None:
    spec = ArchSpec(base_channels=32)
    targets = stage_widths(spec, 24, pm=PM)
    split = {**targets, "s1": targets["stem2"] - 8}  # b1 adds stem2 to s1: they must match
    with pytest.raises(PruningError, match="share their channels"):
        prune(build_model(spec, pm=PM), spec, PruningPlan(steps=1, targets=(split,)),
              pm=PM, progress=False)
    wider = {**targets, "b1.expand": 200}
    with pytest.raises(PruningError, match=r"cannot widen layers: b1\.expand \(200 > 64\)"):
        prune(build_model(spec, pm=PM), spec, PruningPlan(steps=1, targets=(wider,)),
              pm=PM, progress=False)
    with pytest.raises(PruningError, match="missing: stem1"):
        prune(build_model(spec, pm=PM), spec,
              PruningPlan(steps=1, targets=({k: v for k, v in targets.items() if k != "stem1"},)),
              pm=PM, progress=False)
    # A target equal to the network: named by its widths (before, by CP-Mobile's "stem2" alone,
    # which read "None" for any other family).
    same = stage_widths(spec, 32, pm=PM)
    with pytest.raises(PruningError, match=r"narrows no layer of the network \(stem1 8, stem2 32"):
        prune(build_model(spec, pm=PM), spec, PruningPlan(steps=1, targets=(same,)),
              pm=PM, progress=False)


def test_default_target_is_the_widest_fitting_width_and_fits() -> None:
    spec = resolve_preset("seed-s2-start", pm=PM)  # base 96, 255 M MACs
    result = prune(build_model(spec, pm=PM, seed=0), spec, PruningPlan(steps=2, final_finetune_epochs=0),
                   pm=PM, progress=False)
    assert result.card.macs <= 30_000_000 and result.card.param_bytes <= 128_000
    again = build_model(result.spec, pm=PM)
    assert count_complexity(again).macs == result.card.macs  # the spec describes the pruned net


def test_tighter_budgets_are_met_or_refused() -> None:
    spec = resolve_preset("seed-s1-start", pm=PM)
    result = prune(build_model(spec, pm=PM, seed=0), spec,
                   PruningPlan(steps=1, max_macs=15_000_000, final_finetune_epochs=0),
                   pm=PM, progress=False)
    assert result.card.macs <= 15_000_000
    with pytest.raises(PruningError, match="over the budget"):
        prune(build_model(spec, pm=PM, seed=0), spec,
              PruningPlan(steps=1, chain=(48,), final_finetune_epochs=0), pm=PM, progress=False)
    with pytest.raises(PruningError, match="narrows no layer"):
        prune(build_model(spec, pm=PM), spec, PruningPlan(chain=(64,)), pm=PM, progress=False)


def test_pruned_checkpoint_round_trips(tmp_path: Path, cli) -> None:
    spec = ArchSpec(arch="sscp_mobile", base_channels=48, stem_factorization="parallel",
                    factorization=("sequential", "parallel", "plain"))
    result = prune(build_model(spec, pm=PM, seed=1), spec,
                   PruningPlan(importance="fpgm", schedule="linear", steps=2, chain=(32,),
                               final_finetune_epochs=0, max_macs=10**9, max_param_bytes=10**9),
                   pm=PM, progress=False)
    path = save_checkpoint(tmp_path / "pruned.pt", spec=result.spec,
                           state_dict=result.model.state_dict())
    loaded = load_checkpoint(path)
    rebuilt = build_model(loaded.spec, pm=PM)
    rebuilt.load_state_dict(loaded.state_dict)
    x = torch.randn(3, 1, 256, 65)
    torch.testing.assert_close(rebuilt.eval()(x), result.model.eval()(x))
    import json

    counted = json.loads(cli("count", "--checkpoint", path, "--json").out)
    assert (counted["macs"], counted["params"]) == (result.card.macs, result.card.params)


def _pruned_weights(metric: str, spec: ArchSpec, train) -> dict[str, torch.Tensor]:
    """Prune one step with no fine-tune: the surviving weights say which channels were kept.

    Only parameters are compared: they change only by which channels survive, whereas a
    forward pass in training mode could move batch-norm statistics without choosing anything.
    """
    recipe = TrainingRecipe(batch_size=16, warmup_steps=0)
    result = prune(build_model(spec, pm=PM, seed=0), spec,
                   PruningPlan(importance=metric, schedule="linear", steps=1, chain=(16,),
                               finetune_epochs=0, final_finetune_epochs=0, taylor_batches=2),
                   pm=PM, train=train, recipe=recipe, progress=False)
    return {name: p.detach().clone() for name, p in result.model.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_taylor_uses_training_gradients(tiny_corpus: Path, tmp_path: Path) -> None:
    data = load_split_data(str(tiny_corpus), 100, pm=PM, cache_dir=tmp_path, progress=False)
    spec = ArchSpec(base_channels=24)
    with pytest.raises(PruningError, match="needs training data"):
        prune(build_model(spec, pm=PM), spec, PruningPlan(importance="taylor", chain=(16,)),
              pm=PM, progress=False)
    rows = torch.arange(len(data.train)).numpy()
    first, second = data.train.subset(rows[::2]), data.train.subset(rows[1::2])
    # A weight-only metric keeps the same channels whatever the data...
    assert _same(_pruned_weights("l2", spec, first), _pruned_weights("l2", spec, second))
    # ...Taylor scores |weight × gradient|: other clips, other gradients, other channels kept.
    # Without gradients (or with gradients of the wrong data) both would be the same.
    taylor_first = _pruned_weights("taylor", spec, first)
    assert not _same(taylor_first, _pruned_weights("taylor", spec, second))
    assert _same(taylor_first, _pruned_weights("taylor", spec, first))  # deterministic
    assert not _same(taylor_first, _pruned_weights("l2", spec, first))


def test_taylor_scoring_leaves_batch_norm_statistics_alone(tiny_corpus: Path,
                                                          tmp_path: Path) -> None:
    from asc_search.pruning.prune import _accumulate_gradients

    data = load_split_data(str(tiny_corpus), 100, pm=PM, cache_dir=tmp_path, progress=False)
    model = build_model(ArchSpec(base_channels=24), pm=PM, seed=0)
    before = {name: b.clone() for name, b in model.named_buffers()}
    _accumulate_gradients(model, data.train, None, TrainingRecipe(batch_size=16), batches=2)
    assert all(torch.equal(before[name], b) for name, b in model.named_buffers())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


class BrokenSchedule:
    @hookimpl
    def asc_pruning_schedules(self):
        return [PruningSchedule("backwards", "removes, then restores", lambda r, n: [0, r, 0])]

    @hookimpl
    def asc_importance_metrics(self):
        return [ImportanceMetric("constant", "every channel the same",
                                 lambda: (lambda group: None))]


def test_plugin_schedules_are_checked() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(BrokenSchedule())
    from asc_search.pruning.prune import importance_metrics

    assert importance_metrics(pm)["constant"].description == "every channel the same"
    assert "backwards" in pruning_schedules(pm)
    spec = ArchSpec(base_channels=48)
    with pytest.raises(PluginError, match="'backwards' returned"):
        prune(build_model(spec, pm=pm), spec, PruningPlan(schedule="backwards", steps=2,
                                                          chain=(32,)), pm=pm, progress=False)
    with pytest.raises(PluginError, match=r"unknown importance metric .l3.*bn_scale"):
        prune(build_model(spec, pm=pm), spec, PruningPlan(importance="l3"), pm=pm)


def test_example_plugin_is_installed_and_prunes_end_to_end(cli, tiny_corpus: Path,
                                                           tmp_path: Path) -> None:
    groups = {ep.value for ep in importlib.metadata.entry_points(group="asc_search")}
    assert "asc_search_example_pruner" in groups, "install examples/asc-search-example-pruner"
    spec = ArchSpec(base_channels=24)
    model = build_model(spec, pm=PM, seed=0)
    source = save_checkpoint(tmp_path / "wide.pt", spec=spec, state_dict=model.state_dict())
    result = cli("-q", "prune", source, "--data", tiny_corpus, "--split", "100", "--no-kd",
                 "--metric", "l1_bn", "--schedule", "geometric", "--steps", "3", "--chain", "16",
                 "--finetune-epochs", "1", "--final-finetune-epochs", "1", "--batch-size", "16",
                 "--warmup-steps", "0")
    assert result.code == 0, result.err
    assert "l1_bn, geometric, 3 steps" in result.out and "fine-tuned" in result.out
    pruned = load_checkpoint(tmp_path / "wide-pruned.pt")
    assert pruned.spec.channel_overrides["s1"] == 16
    assert pruned.metadata["pruning_plan"]["importance"] == "l1_bn"


def test_prune_bad_input(cli, tmp_path: Path, tiny_corpus: Path) -> None:
    spec = ArchSpec(base_channels=24)
    source = save_checkpoint(tmp_path / "m.pt", spec=spec,
                             state_dict=build_model(spec, pm=PM).state_dict())
    one_line_error(cli("prune", source, "--data", tiny_corpus, "--no-kd", "--metric", "l3"),
                   "unknown importance metric 'l3'")
    one_line_error(cli("prune", source, "--data", tiny_corpus, "--no-kd", "--schedule", "cosine"),
                   "unknown pruning schedule 'cosine'")
    one_line_error(cli("prune", tmp_path / "nope.pt", "--data", tiny_corpus), "nope.pt")
