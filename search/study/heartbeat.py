"""Lost trials: heartbeats, the grace period, and queuing a lost trial again.

A worker killed mid-trial (SIGKILL, out of memory, a machine gone) cannot record that its trial
stopped. Optuna's heartbeats let the other workers notice: a running trial beats into the storage
every ``heartbeat`` seconds, and one silent for ``GRACE_HEARTBEATS`` beats is failed by the next
worker to start a trial, which queues the same candidate again (Optuna's retry callback). The
interval is one value per study, kept as a study user attribute, because a worker with a short
grace period would fail the live trials of a worker beating slowly.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from asc_search.errors import AscSearchError

HEARTBEAT_ATTR = "asc_search_heartbeat"
DEFAULT_HEARTBEAT = 60
#: A running trial whose worker has missed this many heartbeats in a row is taken as lost.
GRACE_HEARTBEATS = 3
#: A lost trial is queued again at most this many times: a candidate that kills every worker that
#: trains it (say, by running out of memory) must not loop forever.
MAX_RETRIES = 2
#: Study user attribute ``lost:<trial number>``: which worker lost the trial (Optuna will not
#: change a finished trial, so the record lives on the study).
LOST_PREFIX = "lost:"


def worker_id() -> str:
    """``host:pid`` of this process, kept on each trial it runs: who to blame when one is lost,
    and, on this host, whether that process still exists."""
    return f"{socket.gethostname()}:{os.getpid()}"


def heartbeat_of(study: optuna.Study) -> int:
    """Seconds between heartbeats for ``study``'s workers."""
    return int(study.user_attrs.get(HEARTBEAT_ATTR, DEFAULT_HEARTBEAT))


def grace_of(study: optuna.Study) -> int:
    """Seconds of silence after which a running trial of ``study`` is taken as lost."""
    return GRACE_HEARTBEATS * heartbeat_of(study)


def set_heartbeat(study: optuna.Study, seconds: int) -> None:
    """Keep ``seconds`` as the study's heartbeat; refused while trials run at another pace."""
    if seconds == heartbeat_of(study):
        return
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        raise AscSearchError(
            f"study {study.study_name!r} has {len(running)} trial(s) running with heartbeats "
            f"every {heartbeat_of(study)} s; change --heartbeat when none is running")
    study.set_user_attr(HEARTBEAT_ATTR, seconds)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker went silent (and so queue them again); see the module."""
    with warnings.catch_warnings():  # experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class RequeueLostTrial:
    """Optuna's retry callback (a WAITING copy of the lost trial, same parameters), recorded on
    the study and announced. ``why`` completes "its worker ...": what happened to it."""

    def __init__(self, announce: Callable[[str], None], *, why: str) -> None:
        with warnings.catch_warnings():  # experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        self.announce, self.why = announce, why

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retries = len(trial.system_attrs.get("retry_history", ()))
        self._retry(study, trial)
        where = trial.user_attrs.get("worker", "unknown")
        study.set_user_attr(f"{LOST_PREFIX}{trial.number}", {"worker": where, "why": self.why})
        again = ("queued again" if retries < MAX_RETRIES
                 else f"not queued again after {MAX_RETRIES} retries")
        self.announce(f"trial {trial.number} was lost: its worker ({where}) {self.why}; {again}")


def settle_dead_local_trials(study: optuna.Study, *, why: str,
                             announce: Callable[[str], None], wait: float = 10.0) -> list[int]:
    """Fail and queue again, now, the running trials whose worker was a process on this machine
    that no longer exists (joblib stopped it after Ctrl-C, or after another worker died).

    That loss is certain, so nobody need wait out the grace period. Trials of live processes and
    of other machines are left to the heartbeats. joblib stops the surviving workers
    asynchronously, so a process on this machine is given up to ``wait`` seconds to exit before
    it counts as alive. Returns the trial numbers settled.
    """
    host, settled = socket.gethostname(), []
    requeue = RequeueLostTrial(announce, why=why)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    local = {int(pid) for name, _, pid in (str(t.user_attrs.get("worker", "")).rpartition(":")
                                           for t in running)
             if name == host and pid.isdigit() and int(pid) != os.getpid()}
    deadline = time.monotonic() + wait
    while any(_alive(pid) for pid in local) and time.monotonic() < deadline:
        time.sleep(0.2)
    for trial in running:
        name, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process settled it first
        requeue(study, study.get_trials(deepcopy=False)[trial.number])
        settled.append(trial.number)
    return settled


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process that has exited but not been reaped still answers signal 0 (Linux: state Z)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False  # no /proc (not Linux), or it has just gone: signal 0 decided
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def lost_trials(study: optuna.Study) -> dict[int, dict]:
    """``{trial number: record}`` of the trials taken as lost with their worker."""
    return {int(key[len(LOST_PREFIX):]): value for key, value in study.user_attrs.items()
            if key.startswith(LOST_PREFIX)}


def retried_as(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """``{lost trial number: number of the trial that retried it}``.

    Optuna keeps ``failed_trial`` pointing at the first trial of a chain of retries; the last
    entry of ``retry_history`` is the trial each retry replaced.
    """
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials
            if t.system_attrs.get("retry_history")}


def taken_as_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is Optuna refusing to record a trial another worker already failed as
    lost (its heartbeats arrived late): the worker should go on, not crash."""
    return isinstance(exc, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a FAIL trial"))
