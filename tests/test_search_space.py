"""Space files: loaded, validated with clear errors, sampled by Optuna into buildable candidates."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from asc_search.architecture import build_model
from asc_search.complexity import count_complexity
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.space import DimensionInfo, SpaceError, load_space

PM = build_plugin_manager(load_entry_points=False)
optuna.logging.set_verbosity(optuna.logging.WARNING)

MINIMAL = """
name = "t"
[fixed]
arch = "sscp_mobile"
[dimensions.base_channels]
type = "int"
low = 16
high = 32
step = 8
"""


def _write(tmp_path: Path, text: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["sscp_mobile", "cp_mobile"])
def test_shipped_spaces_sample_buildable_candidates(name: str) -> None:
    space = load_space(name, pm=PM)
    targets = {space.infos[d.name].target for d in space.dimensions}
    assert targets == {"spec", "plan"}
    assert {"prune_width_ratio", "importance", "schedule", "prune_steps", "prune_stages"} <= {
        d.name for d in space.dimensions}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    feasible = 0
    for _ in range(20):
        trial = study.ask()
        candidate = space.suggest(trial)
        assert candidate.spec.arch == name
        assert candidate.plan.get("importance", "l2") in ("l1", "l2", "bn_scale", "taylor",
                                                          "fpgm")
        feasible += count_complexity(build_model(candidate.spec, pm=PM)).fits()
        study.tell(trial, 0.0)
    assert 3 <= feasible <= 17  # the space straddles the budget instead of missing it


def test_list_choices_survive_optuna_storage() -> None:
    space = load_space("sscp_mobile", pm=PM)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    candidate = space.suggest(study.ask())
    assert isinstance(candidate.spec.n_blocks, tuple) and len(candidate.spec.n_blocks) >= 3
    assert len(candidate.spec.factorization) == 3


@pytest.mark.parametrize("edit, message", [
    ('[dimensions.widht]\ntype = "int"\nlow = 1\nhigh = 2\n', "unknown dimension 'widht'"),
    ('[dimensions.expansion_rate]\ntype = "float"\nlow = 3\nhigh = 2\n', "empty range"),
    ('[dimensions.n_blocks]\ntype = "categorical"\nchoices = []\n', "empty choices"),
    ('[dimensions.importance]\ntype = "categorical"\nchoices = ["l1", "l3"]\n',
     "importance 'l3' is not known"),
    ('[dimensions.schedule]\ntype = "categorical"\nchoices = ["cosine"]\n', "schedule 'cosine'"),
    ('[dimensions.stem_factorization]\ntype = "categorical"\nchoices = ["diagonal"]\n',
     "stem_factorization 'diagonal'"),
    ('[dimensions.prune_steps]\ntype = "int"\nlow = 1\nhigh = 3\nstep = 5\n', "leaves no value"),
    ('[dimensions.prune_steps]\ntype = "normal"\n', "type 'normal' unknown"),
])
def test_bad_dimensions_are_named(tmp_path: Path, edit: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message) as caught:
        load_space(_write(tmp_path, MINIMAL + edit), pm=PM)
    assert "space.toml" in str(caught.value)


def test_unknown_architecture_and_fixed_fields(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"arch 'resnet' is not known \(known: cp_mobile, .*sscp_mobile"):
        load_space(_write(tmp_path, MINIMAL.replace('"sscp_mobile"', '"resnet"')), pm=PM)
    with pytest.raises(SpaceError, match="unknown field 'colour'"):
        load_space(_write(tmp_path, MINIMAL.replace("[fixed]", "[fixed]\ncolour = 1")), pm=PM)
    with pytest.raises(SpaceError, match="not valid TOML"):
        load_space(_write(tmp_path, "[dimensions"), pm=PM)
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        load_space("nope", pm=PM)


def test_a_space_extends_another_by_writing_only_what_differs(tmp_path: Path) -> None:
    from asc_search.study.space import read_space

    base, _ = read_space("sscp_fill")
    # Shipped: the recipe space is sscp_fill with one dimension more, in sscp_fill's order.
    recipe, _ = read_space("sscp_fill_recipe")
    assert list(recipe["dimensions"]) == [*base["dimensions"], "device_response_p"]
    assert recipe["fixed"] == base["fixed"] and recipe["name"] == "sscp_fill_recipe"
    # A user's file: fixes a base dimension (no longer searched), replaces one in place, adds one,
    # and extends a file beside it by a relative path, whatever the working folder.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.toml").write_text(
        'extends = "sscp_fill"\n[fixed]\nimportance = "l2"\n'
        '[dimensions.prune_stages]\ntype = "int"\nlow = 1\nhigh = 1\n')
    child = _write(tmp_path, 'extends = "sub/mine.toml"\n'
                   '[dimensions.kd_weight]\ntype = "categorical"\nchoices = [0.9, 0.98]\n',
                   "child.toml")
    data, source = read_space(child)
    assert source == str(child) and "extends" not in data
    assert "name" not in data  # named after its own file, not the base
    expected = [d for d in base["dimensions"] if d != "importance"] + ["kd_weight"]
    assert list(data["dimensions"]) == expected
    assert data["dimensions"]["prune_stages"]["high"] == 1
    assert data["fixed"] == {**base["fixed"], "importance": "l2"}
    space = load_space(child, pm=PM)
    assert space.name == "child"
    candidate = space.suggest(optuna.create_study().ask())
    assert candidate.plan["importance"] == "l2" and "kd_weight" in candidate.training
    # A child that searches what its base fixed takes it out of [fixed].
    searched = _write(tmp_path, 'extends = "sscp_fill"\n[dimensions.in_channels]\n'
                      'type = "categorical"\nchoices = [1]\n', "searched.toml")
    assert "in_channels" not in read_space(searched)[0]["fixed"]


def test_extends_names_the_file_that_is_missing_or_circular(tmp_path: Path) -> None:
    from asc_search.study.space import read_space

    _write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    _write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    with pytest.raises(SpaceError, match=r"a\.toml → b\.toml → a\.toml"):
        read_space(tmp_path / "a.toml")
    _write(tmp_path, 'extends = "gone.toml"\n', "c.toml")
    with pytest.raises(SpaceError, match=r"c\.toml: extends 'gone\.toml': .*gone\.toml: space "
                       "file not found"):
        read_space(tmp_path / "c.toml")
    _write(tmp_path, "extends = 3\n", "d.toml")
    with pytest.raises(SpaceError, match="'extends' names a space"):
        read_space(tmp_path / "d.toml")


def test_yaml_spaces_work(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: y\nfixed: {arch: cp_mobile}\ndimensions:\n"
                  "  expansion_rate: {type: float, low: 1.5, high: 2.5}\n", "space.yaml")
    space = load_space(path, pm=PM)
    study = optuna.create_study()
    assert 1.5 <= space.suggest(study.ask()).spec.expansion_rate <= 2.5


def test_a_plugin_adds_a_dimension(tmp_path: Path) -> None:
    from asc_search.training.recipe import TrainingRecipe

    class AugmentDimension:
        @hookimpl
        def asc_space_dimensions(self):
            def apply(training, value):  # one knob, two recipe fields
                training["mixstyle_p"] = value
                training["freq_mask_bins"] = round(64 * value)

            return [DimensionInfo("augment_strength", "training", "augmentation strength",
                                  apply=apply)]

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(AugmentDimension())
    text = MINIMAL + "[dimensions.augment_strength]\ntype = \"float\"\nlow = 0.2\nhigh = 0.6\n"
    space = load_space(_write(tmp_path, text), pm=pm)
    candidate = space.suggest(optuna.create_study().ask())
    # The sampled value reaches the recipe a trial trains with (it used to fail there).
    recipe = TrainingRecipe().with_(**candidate.training)
    assert 0.2 <= recipe.mixstyle_p <= 0.6
    assert recipe.freq_mask_bins == round(64 * recipe.mixstyle_p)
    with pytest.raises(SpaceError, match="unknown dimension 'augment_strength'"):
        load_space(_write(tmp_path, text), pm=PM)


def test_a_training_dimension_that_could_never_train_is_refused(tmp_path: Path) -> None:
    class CutmixDimension:
        @hookimpl
        def asc_space_dimensions(self):
            return [DimensionInfo("cutmix_p", "training", "cutmix probability")]

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(CutmixDimension())
    text = MINIMAL + "[dimensions.cutmix_p]\ntype = \"float\"\nlow = 0.2\nhigh = 0.6\n"
    with pytest.raises(SpaceError, match="training dimension 'cutmix_p' is not a training-recipe"):
        load_space(_write(tmp_path, text), pm=pm)


def test_epochs_is_not_a_dimension(tmp_path: Path) -> None:
    """The study's budget sets every candidate's length: a searched epochs would be overwritten."""
    text = MINIMAL + "[dimensions.epochs]\ntype = \"int\"\nlow = 4\nhigh = 8\n"
    with pytest.raises(SpaceError, match="unknown dimension 'epochs'"):
        load_space(_write(tmp_path, text), pm=PM)


def test_recipe_fields_are_training_dimensions(tmp_path: Path) -> None:
    text = MINIMAL + ('[dimensions.mixstyle_p]\ntype = "float"\nlow = 0.2\nhigh = 0.3\n'
                      '[dimensions.kd_weight]\ntype = "categorical"\nchoices = [0.5, 0.7]\n')
    space = load_space(_write(tmp_path, text), pm=PM)
    candidate = space.suggest(optuna.create_study().ask())
    assert set(candidate.training) == {"mixstyle_p", "kd_weight"}
    from asc_search.training.recipe import TrainingRecipe

    # Neither range holds the published value, so a dropped sample cannot pass for a kept one.
    recipe = TrainingRecipe().with_(**candidate.training)
    assert recipe.kd_weight == candidate.training["kd_weight"] in (0.5, 0.7)
    assert 0.2 <= recipe.mixstyle_p <= 0.3


def test_smallest_candidate_is_no_larger_than_random_ones() -> None:
    from asc_search.study.space import smallest_candidate

    pm = build_plugin_manager()
    space = load_space("sscp_mobile", pm=pm)
    _, smallest = smallest_candidate(space, pm=pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(15):
        candidate = space.suggest(study.ask())
        card = count_complexity(build_model(candidate.spec, pm=pm))
        assert smallest.macs <= card.macs and smallest.param_bytes <= card.param_bytes


def test_pruning_dimensions_are_sampled_only_where_they_act() -> None:
    space = load_space("sscp_mobile", pm=PM)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"unpruned": 0, "one_shot": 0, "stepped": 0}
    for _ in range(60):
        trial = study.ask()
        candidate = space.suggest(trial)
        if trial.params["prune_width_ratio"] == 1.0:
            seen["unpruned"] += 1
            assert not {"importance", "schedule", "prune_steps", "prune_stages"} & set(trial.params)
            assert not candidate.plan.keys() - {"prune_width_ratio"}
        elif trial.params["schedule"] == "one_shot":
            seen["one_shot"] += 1
            assert "prune_steps" not in trial.params
            assert {"importance", "prune_stages"} <= set(trial.params)
        else:
            seen["stepped"] += 1
            assert {"importance", "schedule", "prune_steps", "prune_stages"} <= set(trial.params)
        study.tell(trial, 0.0)
    assert all(seen.values()), seen
