"""The example family package: CP-ResNet, a second student family added through an entry point.

``examples/asc-search-example-cpresnet`` is written against the plugin API only; ``.ci/run``
installs it (``pip install ./examples/asc-search-example-cpresnet``). These tests build and
count it, round-trip its spec, prune it to exact widths and to the budgets, and search, prune and
export it through the command line, with no line of asc-search naming it.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from asc_search.architecture import (
    ArchSpec,
    SpecError,
    architectures,
    build_model,
    largest_fitting_width,
    network_widths,
    resolve_preset,
    spec_widths,
)
from asc_search.complexity import count_complexity
from asc_search.plugin_manager import build_plugin_manager, describe_plugins
from asc_search.pruning.plans import candidate_of, count_widths, pruning_path
from asc_search.pruning.prune import PruningPlan, prune
from asc_search.study.space import Candidate, load_space
from asc_search.training.checkpoint import load_checkpoint
from conftest import REPO, one_line_error
from dcase_fvcore import dcase_macs

EXAMPLE = REPO / "examples" / "asc-search-example-cpresnet"
SPACE = EXAMPLE / "spaces" / "cp_resnet_fill.toml"
REFERENCE = EXAMPLE / "references" / "cp-resnet-dcase22-b20.json"
BUDGET = {"max_macs": 30_000_000, "max_param_bytes": 128_000}
X = torch.randn(2, 1, 256, 65, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pm():
    groups = {ep.value for ep in importlib.metadata.entry_points(group="asc_search")}
    assert "asc_search_example_cpresnet" in groups, \
        "install examples/asc-search-example-cpresnet (pip install ./examples/asc-search-example-cpresnet)"
    return build_plugin_manager()


def _kernels(model: nn.Module) -> list[list[tuple[int, int]]]:
    """Per stage, per block, the kernel sizes of the block's two convolutions."""
    return [[(block.conv1.kernel_size[0], block.conv2.kernel_size[0])
             for block in stage.children() if hasattr(block, "conv1")]
            for stage in model.stages.children()]


def _card(model: nn.Module) -> tuple[int, int, int]:
    card = count_complexity(model)
    return card.macs, card.params, card.param_bytes


def test_the_family_comes_from_its_entry_point_only(cli, pm) -> None:
    assert "cp_resnet" in architectures(pm)
    assert "cp_resnet" not in architectures(build_plugin_manager(load_entry_points=False))
    origins = {info.name: info.origin for info in describe_plugins(pm)}
    assert origins["example_cpresnet"] == "entry point (asc-search-example-cpresnet 0.1.0)"
    listed = cli("plugins", "list")
    assert listed.code == 0 and "cp_resnet" in listed.out and "example_cpresnet" in listed.out
    # No core change: nothing the engine ships names the family or its package.
    for folder in ("search", "plugins", "spaces"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".toml", ".yaml"):
                text = path.read_text()
                assert "cp_resnet" not in text and "cpresnet" not in text, path


def test_presets_are_the_published_student_counted_exactly(pm) -> None:
    from asc_search_example_cpresnet.cp_resnet import CPResNetParams

    published = resolve_preset("cp-resnet-dcase22", pm=pm)
    seed = resolve_preset("cp-resnet-dcase22-b20", pm=pm)
    assert published.family == seed.family == {"rho": 8, "blocks": [2, 1, 1],
                                               "width_ratios": [1.0, 2.0, 2.875]}
    assert CPResNetParams() == CPResNetParams(rho=8, blocks=(2, 1, 1),
                                              width_ratios=(1.0, 2.0, 2.875))
    model = build_model(published, pm=pm)
    # CP-JKU's DCASE 2022 student at rho 8: stage 1 (3, 1), (3, 3); stage 2 (3, 3); stage 3 (3, 1).
    assert _kernels(model) == [[(3, 1), (3, 3)], [(3, 3)], [(3, 1)]]
    assert spec_widths(published, pm=pm) == {"s1": 32, "s2": 64, "s3": 92, "b1.expand": 32,
                                             "b2.expand": 32, "b3.expand": 64, "b4.expand": 92}
    assert not any(m.groups > 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(X).shape == (2, 10)
    # The published width is over both budgets; base 20 is the widest that fits at float16.
    assert _card(model) == (52_862_588, 156_356, 312_712)
    seed_model = build_model(seed, pm=pm)
    assert _card(seed_model) == (21_526_568, 62_052, 124_104)
    assert count_complexity(seed_model).fits() and not count_complexity(model).fits()
    assert _card(build_model(published.with_(base_channels=21), pm=pm))[2] == 135_622
    assert largest_fitting_width(published, pm=pm, step=1) == 20
    # An independent count (an fvcore trace with the DCASE rules) agrees with torchinfo's.
    assert dcase_macs(model) == 52_862_588 and dcase_macs(seed_model) == 21_526_568
    # The seed trial's reference file is the seed preset, with the published recipe's choices.
    reference = json.loads(REFERENCE.read_text())
    assert ArchSpec.from_dict(reference["spec"]) == seed
    assert reference["training"] == {"learning_rate": 0.001, "weight_decay": 0.001,
                                     "mixstyle_p": 0.6, "mixstyle_alpha": 0.3,
                                     "kd_temperature": 1.0}


def test_rho_sets_which_convolutions_are_3x3(pm) -> None:
    published = resolve_preset("cp-resnet-dcase22", pm=pm)

    def kernels(rho: int) -> list[list[tuple[int, int]]]:
        spec = published.with_(family={**published.family, "rho": rho, "blocks": [2, 2, 2]})
        return _kernels(build_model(spec, pm=pm))

    # As CP-JKU's DCASE 2022 get_model gives them for rho 2, 4 (its default) and 11.
    assert kernels(2) == [[(3, 1), (3, 1)], [(1, 1), (1, 1)], [(1, 1), (1, 1)]]
    assert kernels(4) == [[(3, 1), (3, 3)], [(3, 1), (1, 1)], [(1, 1), (1, 1)]]
    assert kernels(11) == [[(3, 1), (3, 3)], [(3, 3), (3, 3)], [(3, 3), (3, 3)]]
    # A wider receptive field costs MACs at the same widths.
    cost = [count_complexity(build_model(published.with_(family={**published.family, "rho": r}),
                                         pm=pm)).macs for r in (4, 8, 9)]
    assert cost[0] < cost[1] < cost[2]


def test_spec_round_trips_and_names_unknown_family_keys(cli, pm, tmp_path: Path) -> None:
    published = resolve_preset("cp-resnet-dcase22", pm=pm)
    spec = published.with_(base_channels=24, channel_overrides={"s2": 40, "b1.expand": 12},
                           family={**published.family, "rho": 5})
    text = spec.to_json()
    again = ArchSpec.from_json(text)
    assert again == spec and again.to_json() == text
    assert json.loads(text)["family"] == {"blocks": [2, 1, 1], "rho": 5,
                                          "width_ratios": [1.0, 2.0, 2.875]}
    first, second = build_model(spec, pm=pm, seed=3).eval(), build_model(again, pm=pm, seed=3).eval()
    torch.testing.assert_close(first(X), second(X))
    assert network_widths(first, spec, pm=pm)["s2"] == 40

    with pytest.raises(SpecError, match=r"unknown family field\(s\): groups \(known: blocks, "
                                        r"rho, width_ratios\)"):
        build_model(spec.with_(family={**spec.family, "groups": 2}), pm=pm)
    for family, message in (({"rho": -1}, "rho must be ≥ 0"),
                            ({"rho": 2.5}, "rho must be a whole number"),
                            ({"blocks": [3, 1, 1]}, "1 or 2 blocks"),
                            ({"width_ratios": [1, 2]}, "one ratio per stage"),
                            ({"width_ratios": [1, 0, 2]}, "positive")):
        with pytest.raises(SpecError, match=message):
            build_model(published.with_(family={**published.family, **family}), pm=pm)
    with pytest.raises(SpecError, match="unknown width"):
        build_model(published.with_(channel_overrides={"b9.expand": 8}), pm=pm)
    # Stage 1's identity shortcuts tie the stem's width to stage 1's: one name, one width.
    with pytest.raises(SpecError, match="identity shortcut"):
        build_model(published.with_(family={**published.family, "width_ratios": [1, 1, 2]},
                                    channel_overrides={"s2": 16}), pm=pm)
    # Through the command line: one line naming the field.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(text), "family": {"rho": 8, "groups": 2}}))
    one_line_error(cli("count", "--spec", bad), "unknown family field(s): groups")


def test_pruning_lands_on_exact_per_layer_widths(pm) -> None:
    published = resolve_preset("cp-resnet-dcase22", pm=pm)
    model = build_model(published, pm=pm, seed=0)
    target = {"s1": 24, "s2": 40, "s3": 50, "b1.expand": 9, "b2.expand": 17, "b3.expand": 33,
              "b4.expand": 60}
    result = prune(model, published, PruningPlan(targets=(target,), steps=3, importance="l1",
                                                 schedule="linear"), pm=pm, progress=False)
    assert network_widths(result.model, result.spec, pm=pm) == target
    assert result.spec.channel_overrides == target
    assert len(result.steps) == 3 and result.steps[-1].macs == result.card.macs
    # The pruned network is the one its spec describes: same count, same shapes, same outputs.
    rebuilt = build_model(result.spec, pm=pm)
    assert _card(rebuilt) == _card(result.model)
    rebuilt.load_state_dict(result.model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(X), result.model.eval()(X))


def test_pruning_to_the_budget_lands_on_the_widest_fitting_width(pm) -> None:
    published = resolve_preset("cp-resnet-dcase22", pm=pm)
    result = prune(build_model(published, pm=pm, seed=0), published,
                   PruningPlan(steps=2, round_to=4), pm=pm, progress=False)
    # The widest base (in steps of 4) that fits is 20: the seed's widths, reached by pruning.
    assert network_widths(result.model, result.spec, pm=pm) == \
        spec_widths(published, pm=pm, base=20)
    assert result.card.fits(**BUDGET)
    assert _card(result.model) == _card(build_model(resolve_preset("cp-resnet-dcase22-b20",
                                                                   pm=pm), pm=pm))


def test_a_budget_filling_plan_prunes_the_parent_to_its_filled_widths(pm) -> None:
    space = load_space(SPACE, pm=pm).under_budgets(pm=pm, **BUDGET)
    values = {"parent": "cp-resnet-dcase22", "keep_s1": 0.9, "keep_s2": 0.5, "keep_s3": 0.3,
              "keep_expand": 0.7, "importance": "l2", "schedule": "agp", "prune_steps": 2,
              "prune_stages": 2}
    candidate = candidate_of(space, values, pm=pm, **BUDGET)
    parent = candidate.parent
    assert parent == resolve_preset("cp-resnet-dcase22", pm=pm)
    final = {**spec_widths(parent, pm=pm), **candidate.spec.channel_overrides}
    assert candidate.targets[-1] == final and len(candidate.targets) == 2
    card = count_widths(parent, final, pm=pm)
    # Filled: it fits, and one channel more in every layer would not.
    assert card.fits(**BUDGET)
    assert not count_widths(parent, {k: v + 1 for k, v in final.items()}, pm=pm).fits(**BUDGET)
    assert card.param_bytes > 0.95 * BUDGET["max_param_bytes"]
    # Pruning the parent lands on those widths: the network the plan counted.
    wide, targets = pruning_path(candidate, pm=pm)
    result = prune(build_model(wide, pm=pm, seed=0), wide,
                   PruningPlan(targets=targets, importance="l2", schedule="agp", steps=2, **BUDGET),
                   pm=pm, progress=False)
    assert network_widths(result.model, result.spec, pm=pm) == final
    assert result.spec == candidate.spec
    assert (result.card.macs, result.card.param_bytes) == (card.macs, card.param_bytes)


def test_a_reference_at_a_base_width_off_the_multiples_of_8_trains_as_it_is(pm) -> None:
    """The seed trial (base 20) is trained as it is: before, ``wide_and_chain`` rounded it up to
    a wide base of 24 and planned a chain through 16, which pruning refused ("cannot widen")."""
    seed = resolve_preset("cp-resnet-dcase22-b20", pm=pm)
    assert pruning_path(Candidate(spec=seed), pm=pm) == (seed, ())
    # Asked to train 1.5× wider, the last stage lands on the seed's own base width.
    wide, targets = pruning_path(Candidate(spec=seed, plan={"prune_width_ratio": 1.5,
                                                             "prune_stages": 2}), pm=pm)
    assert wide.base_channels == 32
    assert targets == (spec_widths(seed, pm=pm, base=24), spec_widths(seed, pm=pm))


@pytest.mark.slow
def test_search_prunes_to_the_budget_and_exports_the_family(cli, pm, tiny_corpus: Path,
                                                            tmp_path: Path) -> None:
    result = cli("-q", "run", "--data", tiny_corpus, "--split", "25", "--proxy-epochs", "1",
                 "--teacher-epochs", "1", "--promote-epochs", "2", "--trials", "3",
                 "--study", "cpr", "--space", SPACE, "--reference", REFERENCE)
    assert result.code == 0, result.err
    # The CP-Mobile seeds are named as outside this space; the family's own seed is trial 0.
    assert "the hand-made reference seed-S1 is not in space 'cp_resnet_fill'" in result.out
    assert re.search(r"trial 0 \[cp-resnet-dcase22-b20\] \(\d/3\): validation", result.out), \
        result.out
    storage = f"sqlite:///{(tmp_path / 'studies' / 'asc-search.db').resolve()}"
    study = optuna.load_study(study_name="cpr", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.user_attrs["status"] for t in trials] == ["trained"] * 3
    seed = resolve_preset("cp-resnet-dcase22-b20", pm=pm)
    assert ArchSpec.from_dict(trials[0].user_attrs["pruned_spec"]) == seed  # trained as it is
    assert trials[0].user_attrs["training"]["mixstyle_p"] == 0.6
    space = load_space(SPACE, pm=pm).under_budgets(pm=pm, **BUDGET)
    for trial in trials[1:]:
        pruned = ArchSpec.from_dict(trial.user_attrs["pruned_spec"])
        assert pruned.arch == "cp_resnet" and pruned.channel_overrides
        assert trial.user_attrs["plan"]["parent"] == "cp-resnet-dcase22"
        # The trained network is the plan's filled one, counted exactly and inside the budgets.
        planned = candidate_of(space, space.values_of(trial.params), pm=pm, **BUDGET)
        assert pruned == planned.spec
        card = count_complexity(build_model(pruned, pm=pm))
        assert (trial.user_attrs["macs"], trial.user_attrs["param_bytes"]) == \
            (card.macs, card.param_bytes)
        assert card.fits(**BUDGET) and card.param_bytes > 0.95 * BUDGET["max_param_bytes"]

    searched = trials[1]
    out = tmp_path / "export"
    exported = cli("-q", "export", "cpr", "--trial", str(searched.number), "--out", out)
    assert exported.code == 0, exported.err
    assert {p.name for p in out.iterdir()} == {"model.pt", "spec.json", "complexity.json",
                                               "output.csv", "inference"}
    spec = ArchSpec.from_dict(json.loads((out / "spec.json").read_text()))
    assert spec == ArchSpec.from_dict(searched.user_attrs["pruned_spec"])
    complexity = json.loads((out / "complexity.json").read_text())
    assert (complexity["macs"], complexity["param_bytes"]) == \
        (searched.user_attrs["macs"], searched.user_attrs["param_bytes"])
    loaded = load_checkpoint(out / "model.pt")
    model = build_model(loaded.spec, pm=pm)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in loaded.state_dict.items()})
    # The inference package's program (no asc-search, no plugin needed) is that network.
    program = out / "inference" / "Asc_Search_task1" / "ckpts" / "Asc_Search_task1_1" / "general.pt2"
    exported_program = torch.export.load(str(program)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported_program(X), model.eval()(X), rtol=1e-4, atol=1e-4)
    rows = list(csv.reader((out / "output.csv").open(), delimiter="\t"))
    assert rows[0][:2] == ["filename", "scene_label"]
    assert len(rows) == len((tiny_corpus / "test.csv").read_text().splitlines())
    # Export without --trial writes the recommended model, whichever it is.
    chosen = cli("-q", "export", "cpr", "--out", tmp_path / "recommended")
    assert chosen.code == 0, chosen.err
    assert "cp_resnet" in (tmp_path / "recommended" / "spec.json").read_text()


def test_the_joint_space_with_both_families_samples_either_and_fills_both(pm) -> None:
    """The family is a dimension of the joint space (through the parent): a sampled CP-ResNet
    and a sampled SSCP-Mobile plan both settle to filled networks, and the seed trials stay."""
    from asc_search.study.lifecycle import seed_params

    space = load_space(EXAMPLE / "spaces" / "families_joint.toml", pm=pm).under_budgets(
        pm=pm, **BUDGET)
    assert {"dcase-baseline", "seed-S1", "seed-S2", "seed-S3"} <= set(seed_params(space))
    keep = {"keep_stem": 0.8, "keep_s1": 0.8, "keep_s2": 0.6, "keep_s3": 0.5, "keep_expand": 0.7,
            "importance": "l2", "schedule": "agp", "prune_steps": 2, "prune_stages": 1}
    arches = set()
    for parent in ("cp-resnet-dcase22", "seed-s1-start"):
        candidate = candidate_of(space, {"parent": parent, **keep}, pm=pm, **BUDGET)
        card = count_complexity(build_model(candidate.spec, pm=pm))
        assert card.fits(**BUDGET)  # and filled: one of the two budgets is nearly spent
        assert max(card.macs / BUDGET["max_macs"],
                   card.param_bytes / BUDGET["max_param_bytes"]) > 0.9
        arches.add(candidate.spec.arch)
    assert arches == {"cp_resnet", "sscp_mobile"}
