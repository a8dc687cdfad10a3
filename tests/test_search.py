"""The search's parts: seed trials, the trial's order of events, constraints, resuming, storage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from asc_search.architecture import ArchSpec, build_model
from asc_search.complexity import count_complexity
from asc_search.errors import AscSearchError
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import wide_and_chain
from asc_search.study.lifecycle import (
    SEED_TRIALS,
    WorkerJob,
    create_or_resume,
    ranked_trials,
    run_worker,
    seed_params,
)
from asc_search.study.objective import SearchSettings
from asc_search.study.space import read_space, space_from_dict
from asc_search.study.storage import StorageError, check_study_name, mask_url, resolve_storage

QUICK = {"proxy_epochs": 1, "teacher_epochs": 1}


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager()


def _settings(corpus: Path, *, pm, space: str = "sscp_mobile", **changes) -> SearchSettings:
    raw, source = read_space(space)
    return SearchSettings(space=raw, space_source=source, data=str(corpus), split=25,
                          **{**QUICK, **changes})


def _study(name: str, settings: SearchSettings, *, pm, seed_trials: bool = False):
    space = space_from_dict(settings.space, source=settings.space_source, pm=pm)
    url = resolve_storage(None)
    return create_or_resume(name=name, storage_url=url, settings=settings, sampler="random",
                            seed=0, seed_trials=seed_trials, space=space), url


def test_seed_trials_are_the_hand_made_systems(pm) -> None:
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=pm)
    params = seed_params(space)
    assert set(params) == set(SEED_TRIALS)
    candidates = {name: space.candidate(space.values_of(p)) for name, p in params.items()}
    # The baseline, expressed in the SSCP space, is the DCASE baseline network, layer for layer.
    baseline = count_complexity(build_model(candidates["dcase-baseline"].spec, pm=pm))
    reference = count_complexity(build_model(ArchSpec(), pm=pm))
    assert (baseline.macs, baseline.params) == (reference.macs, reference.params) == \
        (29_419_156, 61_148)
    assert wide_and_chain(candidates["seed-S1"])[0].base_channels == 64
    assert wide_and_chain(candidates["seed-S1"])[1] == (32,)
    assert wide_and_chain(candidates["seed-S2"])[1] == (32,)
    assert wide_and_chain(candidates["seed-S3"])[0].base_channels == 96
    assert wide_and_chain(candidates["seed-S3"])[1] == (64, 32)
    assert wide_and_chain(candidates["dcase-baseline"])[1] == ()


def test_a_seed_outside_the_space_is_skipped(pm) -> None:
    raw, source = read_space("sscp_mobile")
    raw = {**raw, "dimensions": {**raw["dimensions"],
                                 "base_channels": {"type": "int", "low": 16, "high": 24,
                                                   "step": 8}}}
    space = space_from_dict(raw, source=source, pm=pm)
    assert seed_params(space) == {}


def test_seed_trials_keep_the_published_recipe_where_the_space_searches_it(pm) -> None:
    raw, source = read_space("sscp_fill_recipe")
    space = space_from_dict(raw, source=source, pm=pm)
    seeds = seed_params(space)
    assert set(seeds) == {"dcase-baseline", "seed-S1", "seed-S2", "seed-S3"}
    # Without the published value the sampler would draw one, and S1 would not be the seed's S1.
    assert {p["device_response_p"] for p in seeds.values()} == {0.0}
    sampled = space.candidate({**space.values_of(seeds["seed-S1"]), "device_response_p": 0.6})
    assert sampled.training == {"device_response_p": 0.6}
    # A value the space cannot express skips the seed, as for any other dimension.
    raw = {**raw, "dimensions": {**raw["dimensions"], "device_response_p": {
        "type": "categorical", "choices": [0.3, 0.6]}}}
    assert seed_params(space_from_dict(raw, source=source, pm=pm)) == {}


def test_a_pruned_candidate_lands_on_the_network_that_was_counted(pm) -> None:
    # Found by the search-efficiency benchmark: this final spec counts 29.6 M MACs, but the
    # 72-wide network pruned by a uniform ratio kept its own stage proportions and came out at
    # 39.7 M, over the budget. Pruning to the final spec's widths lands on the counted network.
    from asc_search.pruning.prune import PruningPlan, prune

    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=pm)
    candidate = space.candidate({
        "base_channels": 24, "channels_multiplier": 1.7643553195600217,
        "expansion_rate": 2.102570303069398, "n_blocks": [2, 2, 2],
        "stem_factorization": "parallel", "stage1_factorization": "parallel",
        "stage2_factorization": "plain", "stage3_factorization": "sequential",
        "prune_width_ratio": 3.0, "prune_stages": 1, "prune_steps": 2})
    counted = count_complexity(build_model(candidate.spec, pm=pm))
    assert counted.fits()
    wide, chain = wide_and_chain(candidate)
    result = prune(build_model(wide, pm=pm, seed=0), wide,
                   PruningPlan(importance="l1", schedule="agp", steps=2, chain=chain,
                               final_finetune_epochs=0), pm=pm, progress=False)
    assert (result.card.macs, result.card.params) == (counted.macs, counted.params)
    assert len(result.steps) == 2  # no extra step was needed to fit
    assert count_complexity(build_model(result.spec, pm=pm)).macs == counted.macs


def test_infeasible_candidates_are_never_trained(pm, tiny_corpus: Path, monkeypatch) -> None:
    import asc_search.study.objective as objective

    def no_training(*args, **kwargs):
        raise AssertionError("an infeasible candidate reached training")

    monkeypatch.setattr(objective, "fit", no_training)
    monkeypatch.setattr(objective, "prune", no_training)
    settings = _settings(tiny_corpus, pm=pm, max_macs=1_000_000)  # nothing in the space fits
    study, url = _study("infeasible", settings, pm=pm)
    run_worker(WorkerJob(study="infeasible", storage_url=url, sampler="random", seed=0,
                         n_trials=4, timeout=None), pm=pm)
    trials = optuna.load_study(study_name="infeasible", storage=url).trials
    assert len(trials) == 4
    for trial in trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.user_attrs["status"] == "infeasible"
        assert trial.user_attrs["train_seconds"] == 0.0
        assert trial.constraints["macs"] == trial.user_attrs["macs"] - 1_000_000 > 0
    assert study.best_trials == []  # the Pareto front holds feasible trials only


def test_trials_train_count_and_store_a_checkpoint(pm, tiny_corpus: Path, tmp_path: Path) -> None:
    from optuna.artifacts import download_artifact

    from asc_search.study.storage import artifact_store
    from asc_search.training.checkpoint import load_checkpoint

    settings = _settings(tiny_corpus, pm=pm)
    _, url = _study("trained", settings, pm=pm, seed_trials=True)
    # Only the queued baseline and S1 (the two cheapest seeds) run: 2 trials.
    run_worker(WorkerJob(study="trained", storage_url=url, sampler="random", seed=0,
                         n_trials=2, timeout=None), pm=pm)
    trials = optuna.load_study(study_name="trained", storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.user_attrs["seed_trial"] for t in trials] == ["dcase-baseline", "seed-S1"]
    baseline, s1 = trials
    assert baseline.user_attrs["macs"] == 29_419_156
    assert s1.user_attrs["pruned_spec"]["channel_overrides"]  # pruned from 64 wide
    for trial in trials:
        assert trial.user_attrs["status"] == "trained"
        assert all(v <= 0 for v in trial.constraints.values())
        assert trial.values[0] == trial.user_attrs["validation"]["macro"] or \
            abs(trial.values[0] - trial.user_attrs["validation"]["macro"]) < 1e-4
        target = tmp_path / f"t{trial.number}.pt"
        download_artifact(artifact_store=artifact_store(), artifact_id=trial.user_attrs[
            "checkpoint_artifact"], file_path=str(target))
        loaded = load_checkpoint(target)
        model = build_model(loaded.spec, pm=pm)
        model.load_state_dict(loaded.state_dict)
        assert count_complexity(model).macs == trial.user_attrs["macs"] == trial.values[1]


def test_a_failing_trial_keeps_its_traceback_and_the_study_goes_on(pm, tiny_corpus: Path,
                                                                   monkeypatch) -> None:
    import asc_search.study.objective as objective

    real, calls = objective.train_candidate, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("plugin exploded inside a trial")
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "train_candidate", flaky)
    settings = _settings(tiny_corpus, pm=pm, max_macs=30_000_000)
    _, url = _study("flaky", settings, pm=pm, seed_trials=True)
    run_worker(WorkerJob(study="flaky", storage_url=url, sampler="random", seed=0, n_trials=2,
                         timeout=None), pm=pm)
    trials = optuna.load_study(study_name="flaky", storage=url).trials
    # The failed trial does not use up one of the 2 trials asked for.
    assert [t.state for t in trials[:3]] == [optuna.trial.TrialState.FAIL,
                                             optuna.trial.TrialState.COMPLETE,
                                             optuna.trial.TrialState.COMPLETE]
    assert "plugin exploded inside a trial" in trials[0].user_attrs["traceback"]


def test_a_broken_search_stops_after_three_failures(pm, tiny_corpus: Path, monkeypatch) -> None:
    import asc_search.study.objective as objective

    def broken(*args, **kwargs):
        raise RuntimeError("always broken")

    monkeypatch.setattr(objective, "train_candidate", broken)
    settings = _settings(tiny_corpus, pm=pm)
    _, url = _study("broken", settings, pm=pm, seed_trials=True)
    with pytest.raises(AscSearchError, match=r"3 trials failed in a row.*always broken"):
        run_worker(WorkerJob(study="broken", storage_url=url, sampler="random", seed=0,
                             n_trials=10, timeout=None), pm=pm)
    assert len(optuna.load_study(study_name="broken", storage=url).trials) == 4  # 3 + 1 queued


def test_single_objective_reports_at_its_rungs(pm, tiny_corpus: Path) -> None:
    settings = _settings(tiny_corpus, pm=pm, space="sscp_fill", objective="accuracy",
                         proxy_epochs=4)
    study, url = _study("single", settings, pm=pm)
    assert len(study.directions) == 1
    run_worker(WorkerJob(study="single", storage_url=url, sampler="random", seed=0, n_trials=1,
                         timeout=None, pruner="median"), pm=pm)
    trial = optuna.load_study(study_name="single", storage=url).trials[0]
    # The first epoch every plan reports at (⌊4 × 2/3⌋ + 1 = 3), not the last: a stop there
    # would save nothing.
    assert sorted(trial.intermediate_values) == [3]


def test_resuming_with_other_settings_is_refused(pm, tiny_corpus: Path) -> None:
    settings = _settings(tiny_corpus, pm=pm)
    first, _ = _study("resume", settings, pm=pm, seed_trials=True)
    again, _ = _study("resume", settings, pm=pm, seed_trials=True)
    assert len(again.trials) == len(first.trials) == 4  # seeds are queued once
    # Nothing has run yet: new settings (a corrected first run) replace the old ones.
    changed = SearchSettings(**{**settings.__dict__, "max_macs": 20_000_000})
    replaced, url = _study("resume", changed, pm=pm)
    assert len(replaced.trials) == 4
    run_worker(WorkerJob(study="resume", storage_url=url, sampler="random", seed=0, n_trials=1,
                         timeout=None), pm=pm)
    # Once a trial has run, other settings are refused, naming what differs.
    with pytest.raises(AscSearchError, match="max_macs 20000000, not 30000000"):
        _study("resume", settings, pm=pm)
    # A setting the stored text leaves out at its default is named with that default.
    with pytest.raises(AscSearchError, match=r"\(training_seed 0, not 3\)"):
        _study("resume", SearchSettings(**{**changed.__dict__, "training_seed": 3}), pm=pm)
    with pytest.raises(AscSearchError, match="optimises maximize, minimize"):
        _study("resume", SearchSettings(**{**changed.__dict__, "objective": "accuracy"}), pm=pm)


def test_a_study_of_an_older_version_is_read_but_not_trained_on(pm, tiny_corpus: Path,
                                                                 cli) -> None:
    import json

    from asc_search.study.lifecycle import SETTINGS_ATTR, settings_of

    study, url = _study("older", _settings(tiny_corpus, pm=pm), pm=pm)
    stored = json.loads(study.user_attrs[SETTINGS_ATTR])
    study.set_user_attr(SETTINGS_ATTR, json.dumps({**stored, "finetune_epochs": 2}))
    # A worker or promotion would train under a budget rule the study was not made with.
    with pytest.raises(AscSearchError, match=r"older asc-search .*\(finetune_epochs\)"):
        settings_of(study)
    assert settings_of(study, to_train=False).proxy_epochs == QUICK["proxy_epochs"]
    result = cli("worker", "--study", "older", "--storage", url, "--trials", "1")
    assert result.code != 0 and "finetune_epochs" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert len(study.trials) == 0


def test_batch_size_follows_the_split_unless_set(tiny_corpus: Path, pm) -> None:
    from asc_search.study.objective import auto_batch_size

    assert [auto_batch_size(n) for n in (40, 400, 1_000, 8_000, 139_000)] == [16, 16, 40, 256, 256]
    settings = _settings(tiny_corpus, pm=pm)
    assert settings.base_recipe(400).batch_size == 16
    assert settings.teacher_recipe(400).batch_size == 16
    fixed = SearchSettings(**{**settings.__dict__, "recipe": {"batch_size": 256}})
    assert fixed.base_recipe(400).batch_size == 256


WRITER = """
import sys, optuna
from asc_search.study.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="writers", storage=open_storage(sys.argv[1], heartbeat=1))
def objective(trial):
    for k in range(5):  # many small writes per trial, as a search trial makes
        trial.set_user_attr(f"a{k}", k)
    print(trial.number, flush=True)
    return trial.suggest_float("x", 0, 1)
study.optimize(objective, n_trials=25)
"""


def test_teachers_get_device_responses_and_older_studies_keep_theirs() -> None:
    """New studies' teachers train with device impulse-response augmentation (students keep the
    published recipe); a study stored before the setting existed reads back without it, so it
    resumes with the teachers it was made with."""
    import json

    settings = SearchSettings(space={}, space_source="")
    assert settings.teacher_recipe(400).device_response_p == 0.6
    assert settings.base_recipe(400).device_response_p == 0.0
    assert SearchSettings.from_json(settings.to_json()) == settings
    older = json.loads(settings.to_json())
    del older["teacher_device_response_p"]
    before = SearchSettings.from_json(json.dumps(older))
    assert before.teacher_device_response_p == 0.0
    assert before.teacher_recipe(400).device_response_p == 0.0
    assert before.to_json() == json.dumps(older, sort_keys=True)
    # 0: the teachers follow the study's recipe, as students do.
    students_too = SearchSettings(space={}, space_source="", teacher_device_response_p=0.0,
                                  recipe={"device_response_p": 0.3})
    assert students_too.teacher_recipe(400).device_response_p == 0.3


def test_the_default_storage_takes_four_concurrent_writers() -> None:
    """Four processes asking, beating (every second) and telling at once: no lock errors, and a
    queued trial is taken by exactly one of them (pysqlite's own transactions let two take it)."""
    import subprocess
    import sys

    from asc_search.study.storage import open_storage

    url = resolve_storage(None)
    study = optuna.create_study(study_name="writers", storage=open_storage(url))
    for k in range(60):  # queued trials (seeds, retries of lost ones) are popped by whoever asks
        study.enqueue_trial({"x": k / 100})
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [w.communicate(timeout=300) for w in writers]
    errors = [err for _, err in outputs]
    ran = [[int(n) for n in out.split()] for out, _ in outputs]
    assert [w.returncode for w in writers] == [0, 0, 0, 0], errors
    assert not any("locked" in e for e in errors), errors
    trials = optuna.load_study(study_name="writers", storage=url).trials
    assert len(trials) == 100
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.user_attrs) == 5
               for t in trials)
    assert sorted(t.number for t in trials) == list(range(100))  # none lost, none twice
    # Each trial, queued or new, was run by exactly one writer.
    assert sorted(n for numbers in ran for n in numbers) == list(range(100))


def test_storage_urls_and_names() -> None:
    assert mask_url("postgresql://alice:s3cret@db:5432/asc") == "postgresql://alice:***@db:5432/asc"
    assert "s3cret" not in mask_url("postgresql+psycopg2://u:s3cret@h/db")
    assert resolve_storage(None).startswith("sqlite:///")
    assert resolve_storage(None).endswith("studies/asc-search.db")
    for bad in ("a/b", "..", "x..y", "", "-x", "a b"):
        with pytest.raises(StorageError):
            check_study_name(bad)
    assert check_study_name("split5-30M.v1") == "split5-30M.v1"


def test_environment_storage_wins_over_the_default(monkeypatch) -> None:
    monkeypatch.setenv("ASC_SEARCH_STORAGE", "sqlite:////tmp/elsewhere.db")
    assert resolve_storage(None) == "sqlite:////tmp/elsewhere.db"
    assert resolve_storage("sqlite:////tmp/given.db") == "sqlite:////tmp/given.db"


def test_a_worker_waits_for_a_trial_lost_elsewhere_and_runs_it(pm, tiny_corpus: Path) -> None:
    from asc_search.study.heartbeat import HEARTBEAT_ATTR, lost_trials
    from asc_search.study.storage import open_storage

    settings = _settings(tiny_corpus, pm=pm, max_macs=30_000_000)
    study, url = _study("waits", settings, pm=pm)
    study.set_user_attr(HEARTBEAT_ATTR, 1)
    space = space_from_dict(settings.space, source=settings.space_source, pm=pm)
    baseline = seed_params(space)["dcase-baseline"]
    study.enqueue_trial(baseline, user_attrs={"seed_trial": "dcase-baseline"})
    # Another worker takes the queued trial, beats once, and is killed.
    storage = open_storage(url, heartbeat=1)
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # optimize() would beat
        other = optuna.load_study(study_name="waits", storage=storage).ask()
    storage.record_heartbeat(other._trial_id)
    lines: list[str] = []
    # The study already holds its 1 trial (the running one): earlier, this worker would stop
    # at once and leave the dead trial running forever.
    done = run_worker(WorkerJob(study="waits", storage_url=url, sampler="random", seed=0,
                                n_trials=1, timeout=120), pm=pm, announce=lines.append)
    trials = optuna.load_study(study_name="waits", storage=url).trials
    assert done == 1 and trials[0].state == optuna.trial.TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert baseline.items() <= retry.params.items()  # the same candidate, trained here
    assert retry.user_attrs["seed_trial"] == "dcase-baseline"
    assert lines[0].startswith("waiting for the trials other workers are running")
    assert lines[1] == "trial 0 was lost: its worker (unknown) was silent for 3 s; queued again"
    reloaded = optuna.load_study(study_name="waits", storage=url)
    assert lost_trials(reloaded) == {0: {"worker": "unknown", "why": "was silent for 3 s"}}


def test_a_trial_failed_as_lost_while_alive_does_not_stop_its_worker(pm, tiny_corpus: Path,
                                                                     monkeypatch) -> None:
    import asc_search.study.lifecycle as study_module

    real, calls = study_module.run_trial, []

    def late_heartbeats(trial, resources):
        calls.append(trial.number)
        if len(calls) == 1:  # another worker decides this one is dead while it still trains
            trial.study._storage.set_trial_state_values(
                trial._trial_id, state=optuna.trial.TrialState.FAIL)
        return real(trial, resources)

    monkeypatch.setattr(study_module, "run_trial", late_heartbeats)
    settings = _settings(tiny_corpus, pm=pm, max_macs=30_000_000)
    _, url = _study("late", settings, pm=pm, seed_trials=True)
    lines: list[str] = []
    run_worker(WorkerJob(study="late", storage_url=url, sampler="random", seed=0, n_trials=2,
                         timeout=None), pm=pm, announce=lines.append)
    states = [t.state for t in optuna.load_study(study_name="late", storage=url).trials[:3]]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE,
                      optuna.trial.TrialState.COMPLETE]
    assert any(line.startswith("another worker took this worker's trial as lost") for line in lines)


def test_no_test_clip_is_read_before_promotion(pm, tiny_corpus: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    """Trials select on validation; the test list's clips are read once, for the finalists."""
    import asc_search.features.experiment as experiment
    from asc_search.data.dataset import load_dataset
    from asc_search.paths import cache_dir
    from asc_search.study.promote import distill

    test_files = set(load_dataset(tiny_corpus).test)
    requested: list[tuple[str, bool]] = []  # (phase, whether any test clip was asked for)
    phase = "search"
    real_build = experiment.build_features

    def spying_build(files, **kwargs):
        requested.append((phase, bool(set(files) & test_files)))
        return real_build(files, **kwargs)

    monkeypatch.setattr(experiment, "build_features", spying_build)
    settings = _settings(tiny_corpus, pm=pm, promote_epochs=2)  # continued through one rung
    _, url = _study("no-test", settings, pm=pm, seed_trials=True)
    run_worker(WorkerJob(study="no-test", storage_url=url, sampler="random", seed=0,
                         n_trials=2, timeout=None), pm=pm)
    assert requested and not any(test for _, test in requested)
    phase = "promotion"
    distill(optuna.load_study(study_name="no-test", storage=url), top=1, pm=pm,
            cache=cache_dir(), studies=None, progress=False)
    assert ("promotion", True) in requested


def test_rungs_double_the_budget_up_to_the_promotion_one() -> None:
    from asc_search.study.promote import rung_epochs

    assert rung_epochs(8, 32) == [16, 32]
    assert rung_epochs(30, 150) == [60, 120, 150]
    assert rung_epochs(8, 8) == [] and rung_epochs(8, 4) == []


@pytest.mark.slow
def test_promotion_continues_each_trial_from_its_own_checkpoint(pm, tiny_corpus: Path,
                                                                tmp_path: Path,
                                                                monkeypatch) -> None:
    """Rung 1 starts from the weights the trial stored, rung 2 from rung 1's, each training only
    the steps its budget adds; the worse half stops at a rung; nothing trains from scratch."""
    import torch
    from optuna.artifacts import download_artifact

    import asc_search.study.promote as promote
    from asc_search.data.dataset import load_dataset
    from asc_search.paths import cache_dir, studies_dir
    from asc_search.study.lifecycle import load_resources, settings_of
    from asc_search.study.storage import artifact_store
    from asc_search.training.checkpoint import load_checkpoint

    settings = _settings(tiny_corpus, pm=pm, space="sscp_fill", objective="accuracy",
                         promote_epochs=4)  # proxy 1 epoch: rungs at 2 and 4 epochs
    _, url = _study("rungs", settings, pm=pm, seed_trials=True)
    run_worker(WorkerJob(study="rungs", storage_url=url, sampler="random", seed=0, n_trials=6,
                         timeout=None, pruner="none"), pm=pm)
    study = optuna.load_study(study_name="rungs", storage=url)
    searched = [t for t in study.trials if t.user_attrs.get("status") == "trained"
                and "seed_trial" not in t.user_attrs]
    assert len(searched) >= 2, [t.user_attrs.get("status") for t in study.trials]

    def stored(trial) -> dict[str, torch.Tensor]:
        path = tmp_path / f"stored-{trial.number}.pt"
        download_artifact(artifact_store=artifact_store(None),
                          artifact_id=trial.user_attrs["checkpoint_artifact"],
                          file_path=str(path))
        return load_checkpoint(path).state_dict

    starts: list[tuple[str, int, dict[str, torch.Tensor]]] = []  # (label, steps, weights)
    real_fit = promote.fit

    def spying_fit(model, train, recipe, *, steps, label, **kwargs):
        starts.append((label, steps, {k: v.detach().clone().cpu()
                                      for k, v in model.state_dict().items()}))
        return real_fit(model, train, recipe, steps=steps, label=label, **kwargs)

    def no_training_from_scratch(*args, **kwargs):
        raise AssertionError("promotion by continuation trained a candidate from scratch")

    monkeypatch.setattr(promote, "fit", spying_fit)
    monkeypatch.setattr(promote, "train_candidate", no_training_from_scratch)
    results = promote.distill(study, top=1, pm=pm, cache=cache_dir(), studies=None,
                              progress=False)
    entrants = ranked_trials(study, searched_only=True)[:2]
    reference = max((t for t in study.trials if "seed_trial" in t.user_attrs
                     and t.user_attrs.get("status") == "trained"), key=lambda t: t.values[0])
    n_train = len(load_dataset(tiny_corpus).split(25, seed=0).train)
    steps_per_epoch = -(-n_train // settings.base_recipe(n_train).batch_size)
    rung1 = {label: (steps, weights) for label, steps, weights in starts
             if label.startswith("rung 1")}
    assert set(rung1) == {f"rung 1: trial {t.number}" for t in [*entrants, reference]}
    for trial in [*entrants, reference]:
        steps, weights = rung1[f"rung 1: trial {trial.number}"]
        assert steps == (2 - 1) * steps_per_epoch
        own = stored(trial)
        assert weights.keys() == own.keys()
        assert all(torch.equal(weights[k].float(), own[k].float()) for k in own), trial.number
    rung2 = [(label, steps) for label, steps, _ in starts if label.startswith("rung 2")]
    survivor = results[next(n for n, r in results.items() if r["label"] == "searched")]
    assert sorted(rung2) == sorted([(f"rung 2: trial {survivor['trial']}", 2 * steps_per_epoch),
                                    (f"rung 2: trial {reference.number}", 2 * steps_per_epoch)])
    # The run's estimate of its time left counts the epochs promotion trains (run_length).
    from asc_search.study.run_length import PromotionPlan, promotion_epochs

    plan = PromotionPlan(top=1, promote_by="continue", proxy_epochs=settings.proxy_epochs,
                         promote_epochs=4)
    assert sum(steps for _, steps, _ in starts) == \
        promotion_epochs(plan, searched=len(searched)) * steps_per_epoch
    # The survivor is the better of the two entrants after rung 1, and climbed both rungs.
    assert [r["epochs"] for r in survivor["rungs"]] == [2, 4] and survivor["epochs"] == 4
    assert set(results) == {survivor["trial"], reference.number}
    assert results[reference.number]["label"] == reference.user_attrs["seed_trial"]
    assert "test_vs_reference" in survivor
    assert not (studies_dir() / "promotion" / "rungs").exists()  # removed with the finals saved

    # Cut off inside rung 2, promotion started again re-enters at rung 2 with rung 1's networks
    # (kept in the store) and ends where the uninterrupted promotion above ended.
    resources = load_resources(settings_of(study), pm=pm, cache=cache_dir(), studies=None,
                               device="cpu", progress=False, with_test=False)
    store = promote.RungStore(tmp_path / "store")

    def cut_in_rung_2(model, train, recipe, *, steps, label, **kwargs):
        if label.startswith("rung 2"):
            raise KeyboardInterrupt
        return real_fit(model, train, recipe, steps=steps, label=label, **kwargs)

    monkeypatch.setattr(promote, "fit", cut_in_rung_2)
    with pytest.raises(KeyboardInterrupt):
        promote.climb_rungs(entrants, top=1, resources=resources, rungs=[2, 4],
                            reference=reference, store=store)
    assert len(list(store.folder.glob("*rung1*.pt"))) == 3
    starts.clear()
    monkeypatch.setattr(promote, "fit", spying_fit)
    resumed = promote.climb_rungs(entrants, top=1, resources=resources, rungs=[2, 4],
                                  reference=reference, store=store)
    assert sorted(label for label, _, _ in starts) == sorted(label for label, _ in rung2)
    assert store.restored_cpu_seconds > 0
    finalist = tmp_path / "finalist.pt"
    download_artifact(artifact_store=artifact_store(None),
                      artifact_id=survivor["checkpoint_artifact"], file_path=str(finalist))
    expected = load_checkpoint(finalist).state_dict
    assert resumed[0].trial.number == survivor["trial"]
    assert resumed[0].rungs == survivor["rungs"]
    got = resumed[0].model.state_dict()
    assert all(torch.equal(got[k].cpu().float(), expected[k].float()) for k in expected)


def test_a_pareto_rung_keeps_the_non_dominated_first() -> None:
    from asc_search.study.promote import Promoted, _ranked
    from asc_search.training.evaluate import Evaluation

    def contender(name: str, accuracy: float, macs: int) -> Promoted:
        scores = Evaluation(n=1, macro_accuracy=accuracy, accuracy=accuracy, per_class={},
                            per_device={}, seen=None, unseen=None, confusion=None)
        return Promoted(trial=name, label="searched", model=None, spec=None, macs=macs,
                        epochs=1, validation=scores)

    pool = [contender("dominated", 0.45, 29_500_000), contender("accurate", 0.50, 29_000_000),
            contender("small", 0.42, 10_000_000), contender("worst", 0.30, 28_000_000)]
    # By accuracy alone "dominated" would go before "small"; on the front, "small" is kept.
    assert [c.trial for c in _ranked(pool, pareto=True)] == ["accurate", "small", "dominated",
                                                            "worst"]
    assert [c.trial for c in _ranked(pool, pareto=False)] == ["accurate", "dominated", "small",
                                                             "worst"]


def test_continuing_a_trial_whose_checkpoint_is_elsewhere_names_it(tmp_path: Path) -> None:
    """A worker on another machine keeps its artifacts there: one line, and the way out."""
    from types import SimpleNamespace

    from asc_search.study.promote import _from_checkpoint
    from asc_search.study.storage import artifact_store

    trial = optuna.trial.create_trial(value=0.5, user_attrs={"checkpoint_artifact": "gone",
                                                             "macs": 1})
    resources = SimpleNamespace(studies=tmp_path, artifacts=artifact_store(tmp_path))
    with pytest.raises(AscSearchError, match=r"trial -?\d+'s checkpoint is not in this studies "
                                             r"folder .*--promote-by retrain"):
        _from_checkpoint(trial, resources)
    with pytest.raises(AscSearchError, match="no search checkpoint"):
        _from_checkpoint(optuna.trial.create_trial(value=0.5), resources)


def test_promotion_by_continuing_names_missing_checkpoints_and_their_workers_first(
        tmp_path: Path) -> None:
    """Workers that share no disk: the promotion says at once which trials' checkpoints it
    lacks and where they ran, before it loads any data (issue 31)."""
    from optuna.artifacts import upload_artifact

    from asc_search.study.promote import require_checkpoints
    from asc_search.study.storage import artifact_store

    kept = tmp_path / "kept.pt"
    kept.write_bytes(b"a checkpoint")
    study = optuna.create_study()
    present = upload_artifact(artifact_store=artifact_store(tmp_path), file_path=str(kept),
                              study_or_trial=study)
    here = optuna.trial.create_trial(value=0.5, user_attrs={"checkpoint_artifact": present,
                                                            "worker": "host-a:11"})
    away = [optuna.trial.create_trial(value=0.4, user_attrs={"checkpoint_artifact": f"gone{k}",
                                                             "worker": f"host-b:{k}"})
            for k in range(2)]
    require_checkpoints([here], studies=tmp_path)  # all present: nothing to say
    with pytest.raises(AscSearchError) as refused:
        require_checkpoints([here, *away], studies=tmp_path)
    line = str(refused.value)
    assert "\n" not in line and "run on host-b)" in line and "host-a" not in line
    assert "--promote-by retrain" in line and str(tmp_path / "artifacts") in line


# --------------------------------------------------------------------------------------------
# The joint space, the references and the search phase (issue 30)
# --------------------------------------------------------------------------------------------


def _joint(pm):
    raw, source = read_space("sscp_joint")
    return space_from_dict(raw, source=source, pm=pm).under_budgets(
        pm=pm, max_macs=30_000_000, max_param_bytes=128_000)


def test_the_joint_space_holds_every_reference_with_its_published_recipe(pm) -> None:
    from asc_search.study.lifecycle import seed_trials_left_out
    from asc_search.training.recipe import TrainingRecipe

    space = _joint(pm)
    assert space.context["parents_as_is"] == ("dcase-baseline",)
    seeds = seed_params(space)
    assert set(seeds) == {"dcase-baseline", "seed-S1", "seed-S2", "seed-S3"}
    assert seed_trials_left_out(space) == {}
    published = TrainingRecipe()
    recipe_dims = [d.name for d in space.dimensions if space.infos[d.name].target == "training"]
    assert len(recipe_dims) >= 8
    for params in seeds.values():
        assert {name: params[name] for name in recipe_dims} == \
            {name: getattr(published, name) for name in recipe_dims}
    # The baseline trains as it is: nothing of a pruning plan is among its parameters.
    assert not {"keep_s1", "importance", "schedule", "final_share", "prune_stages"} & \
        set(seeds["dcase-baseline"])
    assert seeds["seed-S1"]["final_share"] == "1/3"  # the seed's division of the budget


def test_a_parent_that_fits_as_is_samples_no_pruning_dimension(pm) -> None:
    space = _joint(pm)
    pruning = {"keep_stem", "keep_s1", "keep_s2", "keep_s3", "keep_expand", "importance",
               "schedule", "prune_steps", "prune_stages", "final_share"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        candidate = space.suggest(trial)
        seen.add(trial.params["parent"])
        if trial.params["parent"] == "dcase-baseline":
            assert not pruning & set(trial.params), trial.params
            assert not pruning & set(candidate.plan)
        else:
            assert {"keep_s1", "importance", "final_share"} <= set(trial.params)
        assert "device_response_p" in candidate.training  # the recipe is searched for every one
        study.tell(trial, 0.0)
    assert seen == {"dcase-baseline", "seed-s1-start", "seed-s2-start"}


def test_a_reference_the_space_cannot_express_is_named_with_why(pm) -> None:
    from asc_search.study.lifecycle import seed_trials_left_out

    raw, source = read_space("sscp_joint")
    raw = {**raw, "dimensions": {**raw["dimensions"], "learning_rate": {
        "type": "float", "low": 0.006, "high": 0.01}}}
    space = space_from_dict(raw, source=source, pm=pm)
    assert seed_params(space) == {}
    left_out = seed_trials_left_out(space)
    assert set(left_out) == {"dcase-baseline", "seed-S1", "seed-S2", "seed-S3"}
    assert left_out["seed-S2"] == "learning_rate's range 0.006–0.01 excludes 0.005"


def test_a_plugin_knob_without_a_published_value_leaves_the_references_out(pm, tmp_path) -> None:
    from asc_search.hookspecs import hookimpl
    from asc_search.plugin_manager import build_plugin_manager
    from asc_search.plugin_types import DimensionInfo
    from asc_search.study.lifecycle import seed_trials_left_out

    class Knob:
        @hookimpl
        def asc_space_dimensions(self):
            return [DimensionInfo("augment_strength", "training", "one knob",
                                  apply=lambda training, value: training.update(mixstyle_p=value))]

    with_knob = build_plugin_manager(load_entry_points=False)
    with_knob.register(Knob())
    raw, source = read_space("sscp_fill")
    raw = {**raw, "dimensions": {**raw["dimensions"], "augment_strength": {
        "type": "float", "low": 0.1, "high": 0.5}}}
    space = space_from_dict(raw, source=source, pm=with_knob)
    assert seed_params(space) == {}
    assert all("augment_strength" in why for why in seed_trials_left_out(space).values())


def test_parents_as_is_fit_at_every_offered_dtype_and_only_at_full_macs(pm) -> None:
    raw, source = read_space("sscp_fill_storage")
    budgets = {"pm": pm, "max_macs": 30_000_000, "max_param_bytes": 128_000}
    assert space_from_dict(raw, source=source, pm=pm).under_budgets(**budgets).context[
        "parents_as_is"] == ("dcase-baseline",)
    # 122,296 bytes at float16: at float32 the baseline does not fit, so it is pruned there.
    raw32 = {**raw, "dimensions": {**raw["dimensions"], "storage": {
        "type": "categorical", "choices": ["float16", "float32"]}}}
    assert space_from_dict(raw32, source=source, pm=pm).under_budgets(**budgets).context[
        "parents_as_is"] == ()
    fixed = {**raw, "fixed": {**raw["fixed"], "macs_fraction": 0.5}}
    assert space_from_dict(fixed, source=source, pm=pm).under_budgets(**budgets).context[
        "parents_as_is"] == ()


@pytest.mark.slow
def test_seed_trials_are_never_stopped_by_the_pruner(pm, tiny_corpus: Path, monkeypatch) -> None:
    """A pruner that stops every trial it is asked about stops the sampled ones only: a seed
    trial is the hand-made reference (the median rule once stopped S3 in a default run)."""
    import asc_search.study.lifecycle as study_module

    class StopEverything(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    monkeypatch.setattr(study_module, "make_pruner", lambda name, epochs: StopEverything())
    # Unpruned CP-Mobile networks only, so the test trains no wide parent: the baseline is the
    # one seed trial this space holds.
    raw, source = read_space("cp_mobile")
    dimensions = {k: v for k, v in raw["dimensions"].items() if k != "prune_width_ratio"}
    raw = {**raw, "fixed": {**raw["fixed"], "prune_width_ratio": 1.0}, "dimensions": dimensions}
    settings = SearchSettings(space=raw, space_source=source, data=str(tiny_corpus), split=25,
                              objective="accuracy", proxy_epochs=4,  # reports at epoch 3
                              teacher_epochs=1)
    _, url = _study("never-stopped", settings, pm=pm, seed_trials=True)
    run_worker(WorkerJob(study="never-stopped", storage_url=url, sampler="random", seed=0,
                         n_trials=3, timeout=None, pruner="median"), pm=pm)
    study = optuna.load_study(study_name="never-stopped", storage=url)
    seeds = [t for t in study.trials if "seed_trial" in t.user_attrs]
    assert len(seeds) == 1 and all(t.user_attrs["status"] == "trained" for t in seeds)
    assert not any(t.intermediate_values for t in seeds)  # nothing asked of the pruner
    sampled = [t.user_attrs.get("status") for t in study.trials
               if "seed_trial" not in t.user_attrs and t.user_attrs.get("status") != "duplicate"]
    # Every sampled trial that trained was stopped at its report (an over-budget one never
    # trains, so it is never asked).
    assert "pruned" in sampled and set(sampled) <= {"pruned", "infeasible"}


def test_the_search_outlives_its_timeout_until_it_trained_sampled_networks(
        pm, tiny_corpus: Path) -> None:
    from asc_search.study.lifecycle import sampled_trained

    settings = _settings(tiny_corpus, pm=pm, space="sscp_fill", objective="accuracy")
    for name, promised in (("promised-none", 0), ("promised-two", 2)):
        _, url = _study(name, settings, pm=pm)
        run_worker(WorkerJob(study=name, storage_url=url, sampler="random", seed=0, n_trials=20,
                             timeout=1e-6, pruner="none", min_sampled=promised), pm=pm)
        study = optuna.load_study(study_name=name, storage=url)
        # Past the timeout the worker starts a trial at a time, and only while one is owed.
        assert sampled_trained(study) == promised, [t.user_attrs for t in study.trials]


def test_the_run_seed_seeds_the_trainings_and_older_studies_keep_theirs(pm, tiny_corpus: Path,
                                                                         monkeypatch) -> None:
    """``run --seed`` seeds every training, not only the sampler: with the sampler's seed alone,
    five seeds of the default run trained the hand-made reference identically five times. Seed 0
    is the seeding of every study made before the setting (its trials train as they did, its
    parents keep their cache keys, and its stored settings read back unchanged)."""
    import json

    import asc_search.study.objective as objective
    from asc_search.parents.store import PARENT_SEED
    from asc_search.training.train import derive_seed

    old = SearchSettings(space={}, space_source="")
    assert "training_seed" not in json.loads(old.to_json())
    assert [old.trial_seed(n) for n in range(3)] == [0, 1, 2] and old.parent_seed == PARENT_SEED
    seeded = SearchSettings(space={}, space_source="", training_seed=3)
    assert SearchSettings.from_json(seeded.to_json()) == seeded
    assert seeded.trial_seed(1) == derive_seed(3, 1) != 1
    assert seeded.parent_seed not in (PARENT_SEED, old.parent_seed)
    assert len({seeded.trial_seed(n) for n in range(10)}) == 10

    seeds: list[int] = []

    def recorded(*args, **kwargs):
        seeds.append(kwargs["seed"])
        raise optuna.TrialPruned("recorded, not trained")

    monkeypatch.setattr(objective, "train_candidate", recorded)
    for name, training_seed in (("seed-zero", 0), ("seed-three", 3)):
        settings = _settings(tiny_corpus, pm=pm, training_seed=training_seed)
        _, url = _study(name, settings, pm=pm, seed_trials=True)
        run_worker(WorkerJob(study=name, storage_url=url, sampler="random", seed=0, n_trials=1,
                             timeout=None), pm=pm)
    # Trial 0 (the DCASE baseline, a seed trial) of each study.
    assert seeds[0] == 0 and seeds[-1] == derive_seed(3, 0)
