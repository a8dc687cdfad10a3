"""A user's own hand-made network as a reference: read, checked, and trained as a seed trial."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from asc_search.architecture import ArchSpec
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.references import ReferenceError, read_reference
from asc_search.study.storage import resolve_storage

PM = build_plugin_manager(load_entry_points=False)
BUDGET = {"max_macs": 30_000_000, "max_param_bytes": 128_000}


def _read(given: str, url: str | None = None) -> dict:
    return read_reference(given, pm=PM, storage_url=url, **BUDGET)


def test_a_bare_spec_file_is_a_reference(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(ArchSpec(base_channels=24).to_json())
    reference = _read(str(path))
    assert reference["label"] == "reference:mine" and reference["training"] == {}
    assert ArchSpec.from_dict(reference["spec"]).base_channels == 24


def test_a_structured_file_carries_its_label_and_recipe(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"label": "my CP-Mobile", "spec": {"base_channels": 24},
                                "training": {"device_response_p": 0.6, "mixstyle_p": 0.2}}))
    reference = _read(str(path))
    assert reference["label"] == "my CP-Mobile"
    assert reference["training"] == {"device_response_p": 0.6, "mixstyle_p": 0.2}


@pytest.mark.parametrize(("text", "needle"), [
    ('{"spec": {"base_channels": 24}, "notes": "x"}', "unknown key(s) notes"),
    ('{"spec": {"base_channels": 24}, "training": {"batch_size": 0}}', "epochs and batch size"),
    ('{"spec": [1, 2]}', "spec and training must be JSON objects"),
    ('[1, 2]', "expected a JSON object"),
    ('{"arch": "resnet9"}', "resnet9"),
])
def test_a_reference_that_cannot_train_is_refused_naming_it(tmp_path: Path, text: str,
                                                             needle: str) -> None:
    path = tmp_path / "mine.json"
    path.write_text(text)
    with pytest.raises(ReferenceError, match=r"reference .*mine\.json") as caught:
        _read(str(path))
    assert needle in str(caught.value)


def test_a_reference_takes_the_study_classes_and_may_not_set_its_length(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"spec": {"base_channels": 24}}))
    reference = read_reference(str(path), pm=PM, storage_url=None, fixed={"n_classes": 3},
                               **BUDGET)
    assert reference["spec"]["n_classes"] == 3  # the head the study's data needs
    path.write_text(json.dumps({"spec": {"base_channels": 24, "n_classes": 10}}))
    with pytest.raises(ReferenceError, match="its n_classes is 10, the study's data has 3"):
        read_reference(str(path), pm=PM, storage_url=None, fixed={"n_classes": 3}, **BUDGET)
    for field in ("seed", "epochs"):
        path.write_text(json.dumps({"spec": {"base_channels": 24}, "training": {field: 3}}))
        with pytest.raises(ReferenceError, match=f"training sets {field}, which the study sets"):
            _read(str(path))


def test_a_trial_of_another_study_is_its_trained_network(tmp_path: Path) -> None:
    url = resolve_storage(None)
    from asc_search.study.storage import open_storage

    study = optuna.create_study(study_name="earlier", storage=open_storage(url))
    pruned = ArchSpec(arch="sscp_mobile", base_channels=24,
                      channel_overrides={"s1": 40, "stem2": 40}).to_dict()
    study.add_trial(optuna.trial.create_trial(
        value=0.5, user_attrs={"status": "trained", "pruned_spec": pruned,
                               "training": {"mixstyle_p": 0.2}}))
    study.add_trial(optuna.trial.create_trial(value=0.0, user_attrs={"status": "infeasible"}))
    reference = _read("earlier:0", url)
    assert reference["label"] == "reference:earlier#0"
    assert reference["spec"] == pruned and reference["training"] == {"mixstyle_p": 0.2}
    with pytest.raises(ReferenceError, match="trial 1 trained no network"):
        _read("earlier:1", url)
    with pytest.raises(ReferenceError, match="has no trial 7"):
        _read("earlier:7", url)


@pytest.mark.slow
def test_a_reference_trains_as_a_seed_trial_and_can_be_the_reference(tiny_corpus: Path,
                                                                      tmp_path: Path) -> None:
    from dataclasses import replace

    from asc_search.study.lifecycle import WorkerJob, create_or_resume, run_worker
    from asc_search.study.objective import REFERENCE_ATTR, SearchSettings
    from asc_search.study.promote import choose_finalists
    from asc_search.study.space import read_space, space_from_dict

    pm = build_plugin_manager()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"label": "mine", "spec": {"arch": "cp_mobile",
                                                          "base_channels": 16}}))
    raw, source = read_space("sscp_fill")
    settings = SearchSettings(space=raw, space_source=source, data=str(tiny_corpus), split=25,
                              proxy_epochs=1, teacher_epochs=1, objective="accuracy")
    settings = replace(settings, references=(read_reference(str(path), pm=pm, storage_url=None,
                                                            **BUDGET),))
    assert SearchSettings.from_json(settings.to_json()) == settings  # stored with the study
    url = resolve_storage(None)
    create_or_resume(name="mine", storage_url=url, settings=settings, sampler="random", seed=0,
                     seed_trials=False,
                     space=space_from_dict(raw, source=source, pm=pm))
    run_worker(WorkerJob(study="mine", storage_url=url, sampler="random", seed=0, n_trials=2,
                         timeout=None), pm=pm)
    study = optuna.load_study(study_name="mine", storage=url)
    ours = study.trials[0]
    assert ours.user_attrs["seed_trial"] == "mine" and REFERENCE_ATTR in ours.user_attrs
    assert ours.user_attrs["status"] == "trained" and ours.params == {}
    assert ours.user_attrs["spec"]["base_channels"] == 16  # its own network, not the space's
    # The only seed trial: the hand-made reference every finalist is compared with.
    assert choose_finalists(study, top=1)[-1].number == ours.number
