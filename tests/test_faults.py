"""Workers that die: a worker killed with SIGKILL mid-trial on a real PostgreSQL study.

Its trial stops beating; once three heartbeats are missed, the surviving worker marks it FAIL,
queues the same candidate again (Optuna's retry callback) and trains it. Nothing is lost, nothing
is run twice.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from asc_search.study.storage import open_storage
from conftest import start

QUICK = ("--split", "25", "--proxy-epochs", "3", "--teacher-epochs", "1")
States = optuna.trial.TrialState


def _worker(study: str, seed: str) -> subprocess.Popen[str]:
    return start("-q", "worker", "--study", study, "--trials", "7", "--seed", seed,
                 env={"OMP_NUM_THREADS": "1"})


def _training(url: str, study: str, *, enough: int = 1,
              owner: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Wait (up to 5 min) until ``enough`` trials (of worker ``owner``, if given) are training a
    candidate, and return them. The study may not exist yet: ``run`` creates it once the data
    and teacher are ready."""
    deadline, found = time.monotonic() + 300, []
    while len(found) < enough and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(
                states=(States.RUNNING,))
        except KeyError:
            continue
        found = [t for t in running if "spec" in t.user_attrs
                 and owner in (None, t.user_attrs.get("worker"))]
    assert len(found) >= enough, f"no {enough} trial(s) training in time"
    return found


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_nothing(cli, tiny_corpus: Path, postgres_url: str,
                                                 monkeypatch) -> None:
    monkeypatch.setenv("ASC_SEARCH_STORAGE", postgres_url)
    # The study, its data and its teacher, and the baseline trial: both workers find everything
    # cached, and the queued seed trials (S1-S3) give them candidates that train.
    created = cli("-q", "run", "--data", tiny_corpus, *QUICK, "--trials", "1", "--promote", "0",
                  "--study", "kill", "--heartbeat", "2")
    assert created.code == 0, created.err
    victim, survivor = _worker("kill", "1"), _worker("kill", "2")
    storage = optuna.storages.RDBStorage(postgres_url)
    mark = f"{socket.gethostname()}:{victim.pid}"
    lost = _training(postgres_url, "kill", owner=mark)[0].number  # kill it mid-candidate
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    trials = optuna.load_study(study_name="kill", storage=storage).trials
    assert trials[lost].state == States.RUNNING  # killed mid-trial, not between trials

    out, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    assert f"trial {lost} was lost: its worker ({mark}) was silent for 6 s; queued again" in out
    trials = optuna.load_study(study_name="kill", storage=storage).trials
    assert trials[lost].state == States.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == lost]
    assert len(retries) == 1  # queued again once, not twice
    assert retries[0].state == States.COMPLETE and retries[0].params == trials[lost].params
    assert retries[0].user_attrs["seed_trial"] == trials[lost].user_attrs["seed_trial"]
    assert retries[0].user_attrs["worker"] == f"{socket.gethostname()}:{survivor.pid}"
    # Nothing lost (left RUNNING or WAITING), nothing run twice, the study holds its 7 trials.
    assert [t.number for t in trials if not _done(t) and t.state != States.FAIL] == []
    assert [t.number for t in trials if t.state == States.FAIL] == [lost]
    # Seven trained: sampled copies of a trained network take no slot of --trials.
    assert len([t for t in trials if t.state == States.COMPLETE]) == 7
    assert len({t.number for t in trials}) == len(trials)
    shown = cli("studies", "show", "kill", "--failed").out
    assert (f"trial {lost} was lost: its worker ({mark}) was silent for 6 s; queued again as trial "
            f"{retries[0].number}") in shown


def _done(trial: optuna.trial.FrozenTrial) -> bool:
    """Trained, or a sampled copy of a trained network (ends pruned, trains nothing)."""
    return trial.state == States.COMPLETE or (
        trial.state == States.PRUNED and trial.user_attrs.get("status") == "duplicate")


def test_an_exited_but_unreaped_worker_counts_as_dead() -> None:
    """joblib reaps a killed worker later: until then it is a zombie, which answers signal 0."""
    from asc_search.study.heartbeat import _alive

    child = subprocess.Popen(["sleep", "0.1"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _state(child.pid) != "Z":
        time.sleep(0.05)
    assert _state(child.pid) == "Z"
    os.kill(child.pid, 0)  # signal 0 still finds it...
    assert not _alive(child.pid)  # ...but its trial can be settled now
    child.wait()
    assert _alive(os.getpid())


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rpartition(")")[2].split()[0]


@pytest.mark.slow
def test_a_killed_local_worker_stops_run_in_one_line_and_the_rerun_recovers(
        tiny_corpus: Path, tmp_path: Path) -> None:
    command = ["-q", "run", "--data", str(tiny_corpus), *QUICK, "--trials", "6", "--n-jobs", "2",
               "--promote", "0", "--study", "local", "--heartbeat", "2"]
    run = start(*command)
    url = f"sqlite:///{tmp_path / 'studies' / 'asc-search.db'}"
    child = int(_training(url, "local")[0].user_attrs["worker"].rsplit(":", 1)[1])
    assert child != run.pid  # a worker process, not run itself
    os.kill(child, signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(
        r"error: a worker process died \(killed, or out of memory\); [12] running trial\(s\) "
        r"were queued again: rerun the same command to go on", lines[0]), lines
    # Its processes are gone, so its trials were settled at once: none is left running.
    states = [t.state for t in optuna.load_study(study_name="local", storage=url).trials]
    assert States.RUNNING not in states
    again = start(*command)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    trials = optuna.load_study(study_name="local", storage=url).trials
    lost = [t for t in trials if t.state == States.FAIL]
    assert 1 <= len(lost) <= 2  # the killed worker's trial, and its partner's if it was running
    for trial in lost:
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
        assert [t.state for t in retries] == [States.COMPLETE]
        assert retries[0].user_attrs.get("seed_trial") == trial.user_attrs.get("seed_trial")
    assert [t.number for t in trials if not _done(t) and t.state != States.FAIL] == []
    assert len([t for t in trials if _done(t)]) >= 6


@pytest.mark.slow
def test_ctrl_c_on_local_workers_records_their_trials_and_the_rerun_resumes(
        tiny_corpus: Path, tmp_path: Path) -> None:
    command = ["-q", "run", "--data", str(tiny_corpus), *QUICK, "--proxy-epochs", "6", "--trials",
               "5", "--n-jobs", "2", "--promote", "0", "--study", "ctrlc"]
    # Its own process group, as in a terminal, where Ctrl-C reaches every process of the job.
    run = start(*command, start_new_session=True)
    url = f"sqlite:///{tmp_path / 'studies' / 'asc-search.db'}"
    training = _training(url, "ctrlc", enough=2)  # both workers mid-trial
    assert len(training) == 2
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, (out[-3000:], err[-3000:])
    assert [line for line in err.splitlines() if line.strip()] == ["error: interrupted"]
    trials = optuna.load_study(study_name="ctrlc", storage=url).trials
    assert States.RUNNING not in [t.state for t in trials]  # nothing left half-recorded
    for trial in training:
        assert trials[trial.number].state == States.FAIL
        assert f"trial {trial.number} was lost: its worker" in out and "stopped by Ctrl-C" in out
        queued = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
        assert [t.state for t in queued] == [States.WAITING]

    again = start(*command)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    trials = optuna.load_study(study_name="ctrlc", storage=url).trials
    for trial in training:  # each interrupted candidate trained once on the rerun
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
        assert [t.state for t in retried] == [States.COMPLETE]
    assert len([t for t in trials if _done(t)]) >= 5
