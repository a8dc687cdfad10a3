"""Budget-filling plans: every sampled candidate fills the budget and pruning lands on it."""

from __future__ import annotations

import optuna
import pytest
import torch

from asc_search.architecture import build_model, network_widths
from asc_search.complexity import count_complexity
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import (
    PlanError,
    count_widths,
    keep_dimension,
    pruning_path,
    scaled_widths,
    settle,
    smallest_settled,
)
from asc_search.pruning.prune import PruningPlan, prune, stage_widths
from asc_search.study.lifecycle import _wanted, counted_trials, seed_params
from asc_search.study.space import load_space

PM = build_plugin_manager()
MACS, BYTES = 30_000_000, 128_000


def sampled(n: int, seed: int = 0) -> list:
    """``n`` candidates of the default space drawn at random, settled to the DCASE budgets."""
    space = load_space("sscp_fill", pm=PM)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found = []
    for _ in range(n):
        trial = study.ask()
        found.append(settle(space.suggest(trial), pm=PM, max_macs=MACS, max_param_bytes=BYTES))
        study.tell(trial, 0.0)
    return found


def test_every_sampled_candidate_fills_the_budget() -> None:
    for candidate in sampled(6):
        card = count_complexity(build_model(candidate.spec, pm=PM))
        assert card.macs <= MACS and card.param_bytes <= BYTES
        parent = stage_widths(candidate.parent, candidate.parent.base_channels, pm=PM)
        if not candidate.targets:  # the parent fits as it is (the baseline): trained unpruned
            assert count_complexity(build_model(candidate.parent, pm=PM)).macs <= MACS
            continue
        # Full: the next scale up breaks a budget, and one of the two is nearly used up.
        keep = {name: float(candidate.plan.get(keep_dimension(name), 1.0)) for name in parent}
        wider = scaled_widths(parent, keep, candidate.plan["fill_scale"] * 1.03)
        over = count_widths(candidate.parent, wider, pm=PM)
        assert over.macs > MACS or over.param_bytes > BYTES
        assert max(card.macs / MACS, card.param_bytes / BYTES) > 0.95


def test_pruning_lands_on_the_sampled_widths() -> None:
    """The settled widths are irregular; the pruned network has exactly them and their count."""
    candidate = next(c for c in sampled(6, seed=3) if len(c.targets) == 2)
    wide, targets = pruning_path(candidate, pm=PM)
    model = build_model(wide, pm=PM, seed=0)
    plan = PruningPlan(importance="l1", schedule="linear", steps=2, targets=targets,
                       final_finetune_epochs=0)
    result = prune(model, wide, plan, pm=PM, progress=False)
    assert result.spec == candidate.spec
    assert network_widths(result.model, result.spec, pm=PM) == targets[-1]
    assert result.card.macs == count_complexity(build_model(candidate.spec, pm=PM)).macs
    with torch.no_grad():
        assert result.model(torch.zeros(1, 1, 256, 65)).shape == (1, 10)


def test_seed_trials_in_the_filling_space_are_the_seed_plans() -> None:
    space = load_space("sscp_fill", pm=PM)
    params = seed_params(space)
    assert set(params) == {"dcase-baseline", "seed-S1", "seed-S2", "seed-S3"}
    settled = {name: settle(space.candidate(space.values_of(p)), pm=PM, max_macs=MACS,
                            max_param_bytes=BYTES, seed_trial=True)
               for name, p in params.items()}
    final = stage_widths(settled["seed-S1"].parent, 32, pm=PM)
    for name in ("seed-S1", "seed-S2", "seed-S3"):
        assert settled[name].targets[-1] == final  # uniform to base 32, not filled
        assert "fill_scale" not in settled[name].plan
    assert settled["seed-S1"].parent.base_channels == 64
    assert settled["seed-S3"].parent.base_channels == 96
    assert settled["seed-S3"].targets[0] == stage_widths(settled["seed-S3"].parent, 64, pm=PM)
    assert len(settled["seed-S2"].targets) == 1
    assert settled["dcase-baseline"].targets == ()
    assert settled["dcase-baseline"].spec.arch == "cp_mobile"


def test_an_unsettled_plan_is_not_trained() -> None:
    space = load_space("sscp_fill", pm=PM)
    with pytest.raises(PlanError, match="settled"):
        pruning_path(space.candidate({"parent": "seed-s1-start"}), pm=PM)


def test_the_run_precheck_counts_the_narrowest_network() -> None:
    space = load_space("sscp_fill", pm=PM)
    found = smallest_settled(space, pm=PM)
    assert found is not None
    _, card = found
    assert card.macs < 1_000_000  # a few channels per layer: any real budget is reachable
    assert smallest_settled(load_space("sscp_mobile", pm=PM), pm=PM) is None


def test_a_sampled_copy_of_a_trained_unpruned_network_is_not_trained_again(tmp_path) -> None:
    """A plan whose parent fits as it is (the baseline) is the seed trial's network: the trial
    trains nothing and ends pruned, so TPE does not take the copy for a new good point."""
    from asc_search.study.objective import run_trial

    space = load_space("sscp_fill", pm=PM)
    study = optuna.create_study(direction="maximize")
    baseline = seed_params(space)["dcase-baseline"]
    study.enqueue_trial(baseline, user_attrs={"seed_trial": "dcase-baseline"})
    study.enqueue_trial({**baseline, "keep_s2": 0.3})  # sampled: another point, same network

    trained = []

    class Resources:  # only what the duplicate path reads; training would fail loudly
        settings = type("S", (), {"max_macs": MACS, "max_param_bytes": BYTES,
                                  "storage_dtype": "float16", "objective": "accuracy"})()

    def objective(trial: optuna.Trial) -> float:
        if "seed_trial" in trial.user_attrs:  # stands in for the trained seed trial
            candidate = settle(space.suggest(trial), pm=PM, max_macs=MACS,
                               max_param_bytes=BYTES, seed_trial=True)
            trial.set_user_attr("status", "trained")
            trial.set_user_attr("spec", candidate.spec.to_dict())
            trial.set_user_attr("training", candidate.training)
            trial.set_user_attr("budget", {"pruning_steps": 0})
            trained.append(trial.number)
            return 0.42
        resources = Resources()
        resources.space, resources.pm = space, PM
        return run_trial(trial, resources)  # type: ignore[arg-type]

    study.optimize(objective, n_trials=2)
    copy = study.trials[1]
    assert copy.user_attrs["status"] == "duplicate" and copy.user_attrs["duplicate_of"] == 0
    assert copy.state == optuna.trial.TrialState.PRUNED and copy.value is None
    assert trained == [0]
    assert "train_seconds" in copy.user_attrs and copy.user_attrs["train_seconds"] == 0.0


def test_a_sampled_copy_takes_no_slot_of_the_trial_budget() -> None:
    """``--trials N`` trains N networks: copies (nothing trained) do not count, failed and lost
    trials neither; copies alone still end a study that offers nothing else (3 per slot)."""
    States = optuna.trial.TrialState
    study = optuna.create_study(direction="maximize")
    for state, status in ((States.COMPLETE, "trained"), (States.PRUNED, "duplicate"),
                          (States.PRUNED, "duplicate"), (States.PRUNED, "pruned"),
                          (States.FAIL, None)):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.4 if state == States.COMPLETE else None,
            user_attrs={} if status is None else {"status": status}))
    assert counted_trials(study) == (2, 2)
    assert _wanted(study, 3) and not _wanted(study, 2)
    copies_only = optuna.create_study()
    for _ in range(3):
        copies_only.add_trial(optuna.trial.create_trial(state=States.PRUNED,
                                                        user_attrs={"status": "duplicate"}))
    assert counted_trials(copies_only) == (0, 3)
    assert _wanted(copies_only, 2) and not _wanted(copies_only, 1)  # 3 copies per slot at most


def test_a_space_that_fixes_its_parent_queues_only_the_seeds_of_that_parent() -> None:
    """Before, a fixed parent was not a value a seed trial could set, so the baseline's seed
    trial was queued as the space's own parent (here the 64-wide seed network) under the
    baseline's name."""
    from asc_search.study.lifecycle import seed_trials_left_out
    from asc_search.study.space import read_space, space_from_dict

    raw, source = read_space("sscp_fill")
    raw = {**raw, "fixed": {**raw["fixed"], "parent": "seed-s1-start"},
           "dimensions": {k: v for k, v in raw["dimensions"].items() if k != "parent"}}
    space = space_from_dict(raw, source=source, pm=PM)
    assert set(seed_params(space)) == {"seed-S1"}
    left_out = seed_trials_left_out(space)
    assert left_out["dcase-baseline"] == "the space's parent is fixed to seed-s1-start"
    assert set(left_out) == {"dcase-baseline", "seed-S2", "seed-S3"}
