"""``asc-search run`` as a user types it, and every command that reads the study afterwards."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from asc_search.training.checkpoint import load_checkpoint
from conftest import one_line_error, start

QUICK = ("--split", "25", "--proxy-epochs", "1", "--teacher-epochs", "1", "--promote-epochs", "2")


def _storage(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'studies' / 'asc-search.db').resolve()}"


@pytest.mark.slow
def test_run_searches_promotes_reports_and_exports(cli, tiny_corpus: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    result = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--trials", "6", "--study", "e2e")
    assert result.code == 0, result.err
    assert "trial 0 [dcase-baseline]" in result.out
    # From the first trial on, each trial's line says how long the run has left.
    assert re.search(r"trial 0 \[dcase-baseline\] \(1/6\): .* · (about \d+ min|under a minute) "
                     r"left\n", result.out), result.out
    assert "finalist trial" in result.out and "report:" in result.out
    # What the teachers know of the training labels, before any student trains on them.
    assert re.search(r"teachers \(wide_cp_mobile\) agree with \d+\.\d % of the training labels",
                     result.out), result.out
    # Every finalist's accuracy carries its bootstrap interval, printed and in the report.
    assert re.search(r"finalist trial \d+ .*: validation \d+\.\d % \(\d+\.\d–\d+\.\d\), "
                     r"test \d+\.\d % \(\d+\.\d–\d+\.\d\)", result.out)
    study = optuna.load_study(study_name="e2e", storage=_storage(tmp_path))
    # Six trained; sampled copies of a trained network (the baseline as it is) take no slot.
    assert _slots(study.trials) == 6
    labels = [t.user_attrs.get("seed_trial") for t in study.trials[:4]]
    assert labels == ["dcase-baseline", "seed-S1", "seed-S2", "seed-S3"]
    finalists = {k: v for k, v in study.user_attrs.items() if k.startswith("finalist:")}
    # The hand-made reference is the best seed trial by validation, chosen before any test.
    seeds = [t for t in study.trials if "seed_trial" in t.user_attrs and t.values
             and t.user_attrs.get("status") == "trained"]
    best_seed = max(seeds, key=lambda t: t.values[0])
    reference = f"finalist:{best_seed.number}"
    assert reference in finalists
    assert [k for k, r in finalists.items() if r["label"] != "searched"] == [reference]
    for record in finalists.values():
        assert set(record["test"]["per_device"]) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5",
                                                     "s6"}
        assert record["macs"] <= 30_000_000 and record["param_bytes"] <= 128_000
        # Promoted by continuing from the trial's checkpoint: one rung, 1 → 2 epochs.
        assert record["promoted_by"] == "continue" and record["epochs"] == 2
        assert [(r["rung"], r["epochs"]) for r in record["rungs"]] == [(1, 2)]
    # Every searched finalist is compared with the reference on the same test recordings.
    assert len(finalists) > 1
    for key, record in finalists.items():
        paired = record.get("test_vs_reference")
        assert (paired is None) == (key == reference), key
        if paired:
            assert paired["reference"] == best_seed.user_attrs["seed_trial"]
            gap = record["test"]["macro"] - finalists[reference]["test"]["macro"]
            assert paired["difference"] == pytest.approx(gap, abs=1e-3)
            assert paired["low"] <= paired["difference"] <= paired["high"]
    assert re.search(r"− (dcase-baseline|seed-S\d) on test: [+-]\d+\.\d points "
                     r"\([+-]\d+\.\d to [+-]\d+\.\d, paired", result.out)
    # One recommended model, chosen on validation (stored before the test was read), and what
    # validation can resolve here.
    recommended = study.user_attrs["recommendation"]
    assert [n for n, r in finalists.items() if r["recommended"]] == \
        [f"finalist:{recommended['trial']}"]
    assert f"recommended: trial {recommended['trial']} (" in result.out
    assert "validation resolution: a model's score is known to ±" in result.out

    report = tmp_path / "studies" / "reports" / "e2e"
    for name in ("index.html", "pareto.png", "history.png", "finalists.png"):
        assert (report / name).is_file(), name
    assert "Finalists" in (report / "index.html").read_text()
    assert "test % (95 % CI)" in (report / "index.html").read_text()
    assert "test − hand-made reference, points (95 % CI)" in (report / "index.html").read_text()
    assert "validation % by rung (epochs)" in (report / "index.html").read_text()
    page = (report / "index.html").read_text()
    assert ("Teachers: wide_cp_mobile (1 epochs; ensemble of mean logits; device impulse-response "
            "augmentation, p 0.6") in page
    assert f"recommended: trial {recommended['trial']} (" in page
    assert "Finalists per class (test %)" in page

    shown = cli("studies", "show", "e2e")
    assert shown.code == 0 and "dcase-baseline" in shown.out and "finalists" in shown.out
    assert f"recommended: trial {recommended['trial']}" in shown.out
    # Export without --trial writes the recommended model.
    chosen = cli("-q", "export", "e2e", "--out", tmp_path / "recommended")
    assert chosen.code == 0, chosen.err
    assert f"recommended: trial {recommended['trial']}" in chosen.out
    assert f"exported trial {recommended['trial']} (finalist network" in chosen.out
    assert "e2e" in cli("studies", "list").out
    pareto = cli("studies", "pareto", "e2e")
    assert pareto.code == 0 and "Pareto" in pareto.out

    out = tmp_path / "export"
    exported = cli("-q", "export", "e2e", "--trial", "0", "--out", out)
    assert exported.code == 0, exported.err
    assert {p.name for p in out.iterdir()} == {"model.pt", "spec.json", "complexity.json",
                                               "output.csv", "inference"}
    # The DCASE 2025 package (tests/test_inference_package.py installs one and predicts).
    package = out / "inference" / "Asc_Search_task1"
    assert (package / "Asc_Search_task1_1.py").is_file()
    assert (package / "ckpts" / "Asc_Search_task1_1" / "general.pt2").is_file()
    loaded = load_checkpoint(out / "model.pt")
    assert all(t.dtype != torch.float32 for t in loaded.state_dict.values())
    rows = list(csv.reader((out / "output.csv").open(), delimiter="\t"))
    assert rows[0][:2] == ["filename", "scene_label"] and len(rows[0]) == 12
    test_list = (tiny_corpus / "test.csv").read_text().splitlines()
    assert len(rows) == len(test_list)  # header + one row per test clip, like the list

    # The stock Optuna command line reads the study.
    optuna_cli = Path(sys.executable).with_name("optuna")  # the console script beside python
    listed = subprocess.run([str(optuna_cli), "studies", "--storage",
                             _storage(tmp_path)], capture_output=True, text=True,
                            env={**os.environ}, check=False)
    assert listed.returncode == 0 and "e2e" in listed.stdout, listed.stderr

    # Rerunning the same command tops the study up instead of starting again.
    again = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--trials", "7", "--study", "e2e",
                "--promote", "0")
    assert again.code == 0, again.err
    assert _slots(optuna.load_study(study_name="e2e", storage=_storage(tmp_path)).trials) == 7
    # ... and refuses to mix in other settings.
    one_line_error(cli("run", "--data", tiny_corpus, *QUICK, "--study", "e2e",
                       "--budget-macs", "20M"), "e2e", "max_macs")
    # A worker joins it with the study's own settings.
    joined = cli("-q", "worker", "--study", "e2e", "--trials", "8")
    assert joined.code == 0, joined.err
    assert _slots(optuna.load_study(study_name="e2e", storage=_storage(tmp_path)).trials) == 8

    # Bad input on the reading side.
    one_line_error(cli("export", "e2e", "--trial", "0", "--out", out), "not an empty folder")
    (tmp_path / "a-file").write_text("x")
    one_line_error(cli("export", "e2e", "--trial", "0", "--out", tmp_path / "a-file"),
                   "not an empty folder")
    one_line_error(cli("export", "e2e", "--trial", "99", "--out", tmp_path / "x"), "no trial 99")
    assert not (tmp_path / "x").exists()
    one_line_error(cli("studies", "show", "nope"), "no study 'nope'", "e2e")

    # A stored checkpoint swapped for a pickle that would run code is refused, never unpickled.
    marker = tmp_path / "was-unpickled"
    monkeypatch.setenv("ASC_TEST_MARKER", str(marker))
    # (a trial that is not a finalist: export reads a finalist's own, promoted checkpoint)
    victim = next(t for t in study.trials if f"finalist:{t.number}" not in finalists
                  and "checkpoint_artifact" in t.user_attrs)
    artifact = victim.user_attrs["checkpoint_artifact"]
    torch.save({"format": "asc-search-checkpoint/1", "payload": _Payload()},
               tmp_path / "studies" / "artifacts" / artifact)
    one_line_error(cli("export", "e2e", "--trial", str(victim.number), "--out", tmp_path / "y"),
                   f"trial {victim.number}'s checkpoint (artifact {artifact})",
                   "not an asc-search checkpoint")
    assert not marker.exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".y.*"))  # no half-written export beside it


class _Payload:
    def __reduce__(self):
        return (os.makedirs, (os.environ["ASC_TEST_MARKER"],))


@pytest.mark.slow
def test_two_local_workers_share_one_study(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    result = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--trials", "6", "--n-jobs", "2",
                 "--no-seed-trials", "--promote", "0", "--study", "pair")
    assert result.code == 0, result.err
    trials = optuna.load_study(study_name="pair", storage=_storage(tmp_path)).trials
    # Each worker stops once the study holds 6 trials; one may be running as the other stops.
    assert 6 <= _slots(trials) <= 7
    assert all(_finished(t) for t in trials)
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.slow
def test_a_study_without_teachers_fits_none_and_says_so(cli, tiny_corpus: Path,
                                                          tmp_path: Path) -> None:
    """``--teacher none``: students learn from the labels alone (what KD adds is measurable)."""
    one_line_error(cli("run", "--data", tiny_corpus, *QUICK, "--teacher", "none", "--teacher",
                       "wide_cp_mobile", "--study", "mixed"), "--teacher none")
    assert not (tmp_path / "studies" / "asc-search.db").exists()  # refused before any study
    result = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--teacher", "none", "--trials", "1",
                 "--promote", "0", "--study", "plain")
    assert result.code == 0, result.err
    study = optuna.load_study(study_name="plain", storage=_storage(tmp_path))
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE  # the rest stay queued
    assert not list((tmp_path / "cache").glob("teachers/*"))  # no teacher was fitted
    assert "agree with" not in result.out
    page = (tmp_path / "studies" / "reports" / "plain" / "index.html").read_text()
    assert "Teachers: none" in page and "without distillation" in page


@pytest.mark.slow
def test_simulated_devices_enter_every_validation_score_of_a_study(cli, tiny_corpus: Path,
                                                                    tmp_path: Path) -> None:
    """``--simulated-devices 2``: trials are scored on the validation list plus two unseen
    devices made from it, and the study keeps the setting (resuming without it is refused)."""
    result = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--teacher", "none", "--trials", "1",
                 "--promote", "0", "--simulated-devices", "2", "--study", "unheard")
    assert result.code == 0, result.err
    assert re.search(r"validation: [\d,]+ clips, and [\d,]+ copies of its device-a clips on 2 "
                     r"simulated unseen devices \(sim1–sim2\)", result.out), result.out
    study = optuna.load_study(study_name="unheard", storage=_storage(tmp_path))
    scored = study.trials[0].user_attrs["validation"]
    assert {"sim1", "sim2"} <= set(scored["per_device"])
    assert scored["unseen"] is not None and not any(d.startswith("s4") for d in scored["per_device"])
    one_line_error(cli("run", "--data", tiny_corpus, *QUICK, "--teacher", "none", "--trials", "1",
                       "--promote", "0", "--study", "unheard"), "simulated_devices")


def _slots(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that took a slot of --trials: sampled copies of a trained network (the baseline as
    it is) train nothing and take none."""
    return len([t for t in trials if t.user_attrs.get("status") != "duplicate"])


def _finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Trained, or a sampled copy of a trained network (ends pruned, trains nothing)."""
    return trial.state == optuna.trial.TrialState.COMPLETE or (
        trial.state == optuna.trial.TrialState.PRUNED
        and trial.user_attrs.get("status") == "duplicate")


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tiny_corpus: Path,
                                                          tmp_path: Path) -> None:
    command = ["-q", "run", "--data", str(tiny_corpus), *QUICK, "--proxy-epochs", "3", "--trials",
               "5", "--study", "int", "--promote", "0"]
    process = start(*command)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("trial 0 "):
            break
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # interrupt while the second trial trains
        running = optuna.load_study(study_name="int", storage=_storage(tmp_path)).get_trials(
            states=(optuna.trial.TrialState.RUNNING,))
        if running:
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.1)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert [line for line in err.splitlines() if line.strip()] == ["error: interrupted"]
    study = optuna.load_study(study_name="int", storage=_storage(tmp_path))
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states  # nothing left half-recorded
    interrupted = [t for t in study.trials if t.user_attrs.get("status") == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].state == optuna.trial.TrialState.FAIL
    queued = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert interrupted[0].params in [t.system_attrs.get("fixed_params") for t in queued]

    resumed = start(*command)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    study = optuna.load_study(study_name="int", storage=_storage(tmp_path))
    done = [t for t in study.trials if _finished(t)]
    assert _slots(done) == 5
    assert interrupted[0].user_attrs["seed_trial"] in {t.user_attrs.get("seed_trial")
                                                       for t in done}


@pytest.mark.slow
def test_two_machines_without_a_shared_disk_make_one_study(cli, tiny_corpus: Path,
                                                           postgres_url: str, tmp_path: Path,
                                                           monkeypatch) -> None:
    """Each "machine" has its own cache and studies folder; only the PostgreSQL study is
    shared. The study comes out whole, and promotion on a machine without the other's trial
    checkpoints says so at once, in one line, and retrains when asked to (issue 31)."""
    monkeypatch.setenv("ASC_SEARCH_STORAGE", postgres_url)

    def machine(name: str) -> None:
        monkeypatch.setenv("ASC_SEARCH_CACHE", str(tmp_path / name / "cache"))
        monkeypatch.setenv("ASC_SEARCH_STUDIES", str(tmp_path / name / "studies"))

    machine("one")
    first = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--trials", "2", "--no-seed-trials",
                "--promote", "0", "--study", "far", "--min-sampled", "0")
    assert first.code == 0, first.err
    machine("two")
    second = cli("-q", "worker", "--study", "far", "--trials", "4")
    assert second.code == 0, second.err
    trials = optuna.load_study(study_name="far", storage=postgres_url).trials
    assert _slots(trials) == 4 and all(_finished(t) for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    assert (tmp_path / "two" / "cache" / "features").is_dir()  # built there, not borrowed
    machine("three")  # holds no trial's checkpoint
    refused = cli("distill", "far", "--top", "1")
    one_line_error(refused, "needs the search checkpoints of trial(s)", "--promote-by retrain")
    assert str(tmp_path / "three" / "studies" / "artifacts") in refused.err
    assert not (tmp_path / "three" / "cache" / "teachers").exists()  # refused before any work
    retrained = cli("-q", "distill", "far", "--top", "1", "--promote-by", "retrain")
    assert retrained.code == 0, retrained.err


def test_dashboard_without_optuna_dashboard(cli, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if absent
    one_line_error(cli("dashboard"), "optuna-dashboard is not installed")


@pytest.mark.slow
def test_two_workers_on_postgresql(cli, tiny_corpus: Path, postgres_url: str,
                                   monkeypatch) -> None:
    monkeypatch.setenv("ASC_SEARCH_STORAGE", postgres_url)  # the password never on a command line
    result = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--trials", "6", "--n-jobs", "2",
                 "--no-seed-trials", "--promote", "0", "--study", "pg")
    assert result.code == 0, result.err
    assert "s3cret-pw" not in result.out + result.err
    assert "asc:***@127.0.0.1" in result.out
    trials = optuna.load_study(study_name="pg", storage=postgres_url).trials
    assert 6 <= _slots(trials) <= 7
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                optuna.trial.TrialState.FAIL)
    assert all(t.state in finished for t in trials)  # none lost (left RUNNING)
    assert len({t.number for t in trials}) == len(trials)  # none run twice
    assert all(_finished(t) for t in trials)
    listed = cli("studies", "list")
    assert "pg" in listed.out and "s3cret-pw" not in listed.out
