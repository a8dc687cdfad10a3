"""A search study: create or resume it, enqueue the seed trials, and run workers on it.

A study is a plain Optuna study. Its ``SearchSettings`` travel with it as a study user attribute,
so ``asc-search worker`` on another machine runs exactly the same trials, and a rerun of
``asc-search run`` resumes instead of silently mixing two different searches.
"""

from __future__ import annotations

import json
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna

from asc_search.errors import AscSearchError
from asc_search.parallel import usable_cores
from asc_search.study.budget import first_shared_report_epoch
from asc_search.study.heartbeat import (
    RequeueLostTrial,
    fail_stale_trials,
    grace_of,
    heartbeat_of,
    settle_dead_local_trials,
    taken_as_lost,
)
from asc_search.study.objective import (
    REFERENCE_ATTR,
    SearchSettings,
    TrialResources,
    dropped_settings,
    run_trial,
)
from asc_search.study.run_length import (
    PromotionPlan,
    SearchRules,
    TimedTrial,
    say_minutes,
    seconds_left,
)
from asc_search.study.storage import artifact_store, check_study_name, mask_url, open_storage
from asc_search.training.recipe import TrainingRecipe

SETTINGS_ATTR = "asc_search_settings"
# Trials that have taken a slot of ``--trials``; queued (WAITING) seed trials take theirs when run.
# Failed trials do not: after a fix, a rerun still gets its full number of trials.
_COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.RUNNING)
#: Copies (:func:`counted_trials`) a study may hold per slot of ``--trials`` before it ends anyway.
COPIES_PER_SLOT = 3
#: A worker stops after this many failed trials in a row: something is broken, not unlucky.
MAX_FAILURES_IN_A_ROW = 3
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "hyperband", "none")

#: The hand-made systems every study starts from, as values of the shipped spaces' dimensions:
#: the DCASE 2024 baseline, and the seed's three plans (SJTU-THU: train wide with KD, prune to 32).
SEED_TRIALS: dict[str, dict[str, Any]] = {
    "dcase-baseline": {
        "arch": "cp_mobile", "base_channels": 32, "channels_multiplier": 1.8,
        "expansion_rate": 2.1, "n_blocks": [3, 2, 1], "stem_factorization": "plain",
        "stage1_factorization": "plain", "stage2_factorization": "plain",
        "stage3_factorization": "plain", "prune_width_ratio": 1.0, "prune_stages": 1,
    },
    **{
        name: {
            "arch": "sscp_mobile", "base_channels": 32, "channels_multiplier": 1.8,
            "expansion_rate": 2.1, "n_blocks": [3, 2, 1], "stem_factorization": "plain",
            "stage1_factorization": "sequential", "stage2_factorization": "sequential",
            "stage3_factorization": "sequential", "importance": "l2", **plan,
        }
        for name, plan in {
            "seed-S1": {"prune_width_ratio": 2.0, "schedule": "agp", "prune_steps": 5,
                        "prune_stages": 1},
            "seed-S2": {"prune_width_ratio": 3.0, "schedule": "linear", "prune_steps": 5,
                        "prune_stages": 1},
            "seed-S3": {"prune_width_ratio": 3.0, "schedule": "agp", "prune_steps": 5,
                        "prune_stages": 2},
        }.items()
    },
}


#: The same systems in a budget-filling space (``asc_search.pruning.plans``): a parent and keep
#: ratios that place them in the space; as seed trials they are trained uniform, as defined.
PARENT_SEED_TRIALS: dict[str, dict[str, Any]] = {
    "dcase-baseline": {"parent": "dcase-baseline", "prune_stages": 1, **dict.fromkeys(
        ("keep_stem", "keep_s1", "keep_s2", "keep_s3", "keep_expand"), 1.0)},
    **{
        name: {"parent": parent, **dict.fromkeys(
                   ("keep_stem", "keep_s1", "keep_s2", "keep_s3", "keep_expand"), keep),
               "importance": "l2", "final_share": "1/3", **plan}
        for name, (parent, keep, plan) in {
            "seed-S1": ("seed-s1-start", 0.5, {"schedule": "agp", "prune_steps": 5,
                                                "prune_stages": 1}),
            "seed-S2": ("seed-s2-start", 1 / 3, {"schedule": "linear", "prune_steps": 5,
                                                  "prune_stages": 1}),
            "seed-S3": ("seed-s2-start", 1 / 3, {"schedule": "agp", "prune_steps": 5,
                                                  "prune_stages": 2}),
        }.items()
    },
}


def seed_params(space: Any) -> dict[str, dict[str, Any]]:
    """The seed trials this space can express, as trial params (a space without a dimension the
    seed needs, or whose range excludes its value, skips that seed: ``seed_trials_left_out``
    says which and why)."""
    return _seed_params(space)[0]


def seed_trials_left_out(space: Any) -> dict[str, str]:
    """The seed trials (hand-made references) this space cannot express, each with the value
    that lies outside it: a run says so rather than drop a reference without a word."""
    return _seed_params(space)[1]


def _seed_params(space: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    parent_searched = any(d.name == "parent" for d in space.dimensions)
    parent_based = parent_searched or "parent" in space.fixed
    # A searched recipe field: the seed plans train with the published recipe's value (the
    # sampler would otherwise draw one for them, and a seed trial would not be the seed's).
    published = TrainingRecipe()
    recipe = {d.name: getattr(published, d.name) for d in space.dimensions
              if space.infos[d.name].target == "training" and hasattr(published, d.name)}
    # A plugin's own training knob (one that sets recipe fields through apply()) has no
    # published value: the seed trials cannot say what they would have used.
    knobs = [d.name for d in space.dimensions if space.infos[d.name].target == "training"
             and d.name not in recipe]
    found, left_out = {}, {}
    for name, values in (PARENT_SEED_TRIALS if parent_based else SEED_TRIALS).items():
        if knobs:
            left_out[name] = (f"the space searches {', '.join(knobs)}, which the published "
                              "recipe has no value for")
            continue
        if parent_based and not parent_searched and values["parent"] != space.fixed["parent"]:
            # A fixed parent is not a value the seed can set: queued anyway, the trial would be
            # the space's own parent under the seed's name.
            left_out[name] = f"the space's parent is fixed to {space.fixed['parent']}"
            continue
        arch = values.get("arch", space.fixed.get("arch", "cp_mobile"))
        if space.fixed.get("arch", "cp_mobile") != arch and "arch" not in {
                d.name for d in space.dimensions}:
            # The baseline is CP-Mobile; in an SSCP space it is the all-plain SSCP network,
            # which builds the same layers (a test checks the count is identical).
            if name != "dcase-baseline":
                left_out[name] = f"the space's architecture is {space.fixed.get('arch')}"
                continue
            values = {k: v for k, v in values.items() if k != "arch"}
        if any(d.name == "storage" for d in space.dimensions):
            values = {**values, "storage": "float16"}  # the seed's 16-bit weights, as defined
        values = {**recipe, **values}
        params, why = space.params_or_why(values)
        if params is None:
            left_out[name] = why
            continue
        # Only what acts: the baseline has no pruning plan, so no importance or stages.
        context = {**space.fixed, **values}
        found[name] = {k: v for k, v in params.items() if space.active(k, context)}
    return found, left_out


def make_sampler(name: str, *, seed: int | None, n_trials: int | None = None) -> optuna.samplers.BaseSampler:
    """tpe (multivariate, constant liar for parallel workers), nsga2 or random."""
    if name == "tpe":
        # Seed trials complete first and all share most values; enough random trials after them
        # keep TPE from modelling the seeds alone.
        startup = max(8, min(12, (n_trials or 40) // 3))
        # group: the pruning dimensions exist only for pruned plans (conditional), and grouped
        # multivariate TPE models each set of dimensions that occur together.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              constant_liar=True, n_startup_trials=startup)
    if name == "nsga2":
        population = max(4, min(50, (n_trials or 200) // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise AscSearchError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")


def make_pruner(name: str, *, epochs: int) -> optuna.pruners.BasePruner:
    """Early stopping for single-objective runs, on validation accuracy per proxy epoch."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 3))
    if name == "hyperband":
        # Hyperband ranks a trial's value at one epoch against others' values at lower rungs:
        # its first rung is the first epoch at which pruned plans report too (see budget.py).
        first = first_shared_report_epoch(epochs)
        return optuna.pruners.HyperbandPruner(min_resource=first,
                                              max_resource=max(epochs, first + 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise AscSearchError(f"unknown pruner {name!r} (known: {', '.join(PRUNERS)})")


def check_resumable(*, name: str, storage_url: str, settings: SearchSettings) -> None:
    """Refuse, before any data is loaded or the study is created, a study ``name`` that exists
    with other objectives or, once trials have run, other settings. A missing study is fine.

    Two ``run`` commands creating the same new study at the same moment both pass this check;
    the second then replaces the first's settings (nothing ran yet). Start extra machines with
    ``asc-search worker``, which reads the settings from the study.
    """
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=check_study_name(name), storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return
    _refuse_other_settings(study, settings, storage_url)


def _directions(settings: SearchSettings) -> list[str]:
    return ["maximize"] if settings.objective == "accuracy" else ["maximize", "minimize"]


def _refuse_other_settings(study: optuna.Study, settings: SearchSettings, url: str) -> None:
    directions = _directions(settings)
    if [d.name.lower() for d in study.directions] != directions:
        raise AscSearchError(f"study {study.study_name!r} optimises "
                             f"{', '.join(d.name.lower() for d in study.directions)}, not "
                             f"{', '.join(directions)}; choose another --study")
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None or stored == settings.to_json() or not _started(study):
        return  # new, identical, or nothing ran under the old settings (they will be replaced)
    old, new = json.loads(stored), json.loads(settings.to_json())
    # A setting added later is absent from the text at its default: read it from the settings.
    before = SearchSettings.from_json(stored)
    differ = [_difference(key, old.get(key, getattr(before, key, None)),
                          new.get(key, getattr(settings, key, None)))
              for key in {**old, **new} if old.get(key) != new.get(key)]
    raise AscSearchError(
        f"study {study.study_name!r} in {mask_url(url)} was made with other settings "
        f"({', '.join(differ)}); resume it with its own or choose another --study")


def _difference(key: str, old: Any, new: Any) -> str:
    """One differing setting for the refusal: with the study's value and this run's where both
    are short (``training_seed 0, not 3``), else its name alone (a space is a whole table)."""
    short = all(isinstance(v, (int, float, str, bool, type(None))) and len(str(v)) <= 40
                for v in (old, new))
    return f"{key} {old}, not {new}" if short else f"{key} differs"


def _started(study: optuna.Study) -> bool:
    return any(t.state != optuna.trial.TrialState.WAITING
               for t in study.get_trials(deepcopy=False))


def create_or_resume(*, name: str, storage_url: str, settings: SearchSettings, sampler: str,
                     seed: int | None, seed_trials: bool, space: Any) -> optuna.Study:
    """The study ``name``: created (with its seed trials queued) or, if it exists, resumed.

    Resuming a study made with other settings is refused, naming the first settings that differ.
    """
    check_study_name(name)
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name=name, storage=storage,
                                directions=_directions(settings), load_if_exists=True,
                                sampler=make_sampler(sampler, seed=seed))
    _refuse_other_settings(study, settings, storage_url)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is not None and stored != settings.to_json():
        # Nothing ran under the old settings (say, a first run with a wrong --data): replace them.
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())
        _queue_references(study, settings)
    elif stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings.to_json())
        with warnings.catch_warnings():  # experimental in Optuna 5, and harmless
            warnings.simplefilter("ignore")
            study.set_metric_names(["validation_macro_accuracy", "macs"][:len(study.directions)])
        if seed_trials:
            for label, params in seed_params(space).items():
                study.enqueue_trial(params, user_attrs={"seed_trial": label},
                                    skip_if_exists=True)
        _queue_references(study, settings)
    return study


def _queue_references(study: optuna.Study, settings: SearchSettings) -> None:
    """Queue the user's own references (``asc_search.study.references``): seed trials that are
    their own networks, not points of the space. Each label is queued once, also when a first
    run's settings are replaced before anything ran (its queued references stay)."""
    wanted = {reference["label"]: reference for reference in settings.references}
    there = {t.user_attrs[REFERENCE_ATTR]["label"] for t in study.get_trials(deepcopy=False)
             if REFERENCE_ATTR in t.user_attrs}
    for label, reference in wanted.items():
        if label not in there:
            study.enqueue_trial({}, user_attrs={"seed_trial": label, REFERENCE_ATTR: reference})


def settings_of(study: optuna.Study, *, to_train: bool = True) -> SearchSettings:
    """The study's stored settings.

    ``to_train``: the caller trains under them (a worker, promotion), so a study made by an
    older asc-search whose settings this version no longer has is refused rather than silently
    trained under other rules (its stored budget would mean something else). Reading commands
    (report, export) pass False and get the settings this version understands.
    """
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        raise AscSearchError(f"study {study.study_name!r} was not made by asc-search run")
    dropped = dropped_settings(stored)
    if to_train and dropped:
        raise AscSearchError(
            f"study {study.study_name!r} was made by an older asc-search with settings this "
            f"version no longer has ({', '.join(dropped)}); its trials cannot be continued or "
            "promoted under this version's training budget: start a new --study")
    return SearchSettings.from_json(stored)


@dataclass(frozen=True)
class WorkerJob:
    """One worker process's orders (plain data, so it pickles into a joblib worker)."""

    study: str
    storage_url: str
    sampler: str
    seed: int | None
    n_trials: int | None  # total for the study, seed trials included
    timeout: float | None
    pruner: str = "none"
    threads: int | None = None
    plugins: tuple[str, ...] = ()
    cache: str | None = None
    studies: str | None = None
    device: str = "cpu"
    progress: bool = False
    #: Sampled networks the study trains before ``timeout`` may end this worker.
    min_sampled: int = 0
    #: Workers of this run side by side (``--n-jobs``), for the estimate of the time left.
    workers: int = 1
    #: The promotion that follows the search (``asc-search run``), for the same estimate;
    #: None for ``asc-search worker``, whose estimate covers the search alone.
    promotion: PromotionPlan | None = None


def load_resources(settings: SearchSettings, *, pm: Any, cache: Path, studies: Path | None,
                   device: str, progress: bool, with_test: bool = False) -> TrialResources:
    """Load a worker's data, teachers' logits and space (all cache hits after the first).

    ``with_test`` adds the test list, for promotion; search workers never load it. The
    validation list gets the study's simulated devices here, so workers and promotion score on
    the same clips.
    """
    from asc_search.features.experiment import load_split_data
    from asc_search.features.logmel import FrontEndSettings
    from asc_search.study.space import space_from_dict
    from asc_search.teachers.ensemble import ensemble_logits
    from asc_search.training.train import precision_for

    space = space_from_dict(settings.space, source=settings.space_source, pm=pm).under_budgets(
        pm=pm, max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes,
        storage_dtype=settings.storage_dtype)
    data = load_split_data(settings.data, settings.split, pm=pm, cache_dir=cache,
                           progress=progress, with_test=with_test)
    validation = data.validation
    if settings.simulated_devices:
        from asc_search.training.device_responses import with_simulated_devices

        validation = with_simulated_devices(validation, settings.simulated_devices,
                                            FrontEndSettings())
    precision = precision_for(device)
    teacher_logits = None  # a study without teachers distils from nothing
    if settings.teachers:
        teacher_logits = ensemble_logits(
            data.train, teacher_names=settings.teachers, pm=pm, cache_dir=cache,
            recipe=settings.teacher_recipe(len(data.train)), precision=precision,
            mode=settings.ensemble, progress=progress, folds=settings.teacher_folds).logits
    return TrialResources(settings=settings, space=space, pm=pm, train=data.train,
                          validation=validation, teacher_logits=teacher_logits,
                          precision=precision, artifacts=artifact_store(studies),
                          studies=studies, progress=progress, test=data.test, cache=cache)


def run_worker(job: WorkerJob, *, pm: Any = None,
               announce: Callable[[str], None] | None = None,
               resources: TrialResources | None = None) -> int:
    """Run trials of ``job.study`` until it holds ``n_trials`` or ``timeout`` passes.

    ``resources``: the data and teacher logits when the caller has loaded them already.

    Returns how many trials this worker finished. Every worker counts the study's trials, so
    N workers together stop at ``n_trials``, not N × ``n_trials``. A worker with nothing left to
    start waits while other workers' trials run: one of them may turn out lost (its worker
    killed), and is then queued again and run here (``asc_search.study.heartbeat``).
    """
    import torch

    from asc_search.paths import cache_dir, studies_dir
    from asc_search.plugin_manager import build_plugin_manager

    if job.threads:
        torch.set_num_threads(job.threads)
    pm = pm or build_plugin_manager(extra_modules=job.plugins)
    announce = announce or (lambda line: None)
    probe = optuna.load_study(study_name=job.study, storage=open_storage(job.storage_url))
    settings = settings_of(probe)
    heartbeat = heartbeat_of(probe)
    # A resumed study must not replay its first random draws: the seed moves on with the study.
    seed = None if job.seed is None else job.seed + 1000 * len(probe.get_trials(deepcopy=False))
    sampler = make_sampler(job.sampler, seed=seed, n_trials=job.n_trials)
    storage = open_storage(job.storage_url, heartbeat=heartbeat,
                           on_lost_trial=RequeueLostTrial(
                               announce, why=f"was silent for {grace_of(probe)} s"))
    study = optuna.load_study(study_name=job.study, storage=storage, sampler=sampler,
                              pruner=make_pruner(job.pruner, epochs=settings.proxy_epochs))
    fail_stale_trials(study)  # a lost trial counts as running until failed; it must not stop us
    if not _wanted(study, job.n_trials) and not study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        return 0
    resources = resources or load_resources(settings, pm=pm, cache=cache_dir(job.cache),
                                            studies=studies_dir(job.studies),
                                            device=job.device, progress=job.progress)
    started = time.monotonic()
    progress = _ProgressLine(announce, job.n_trials, time_left=partial(
        _time_left_text, rules=SearchRules(n_trials=job.n_trials, timeout=job.timeout,
                                             min_sampled=job.min_sampled, workers=job.workers),
        promotion=job.promotion, started=started))
    callbacks: list[Any] = [progress]
    if job.n_trials is not None:
        callbacks.append(_TrialBudget(job.n_trials))
    deadline = None if job.timeout is None else started + job.timeout

    def time_left() -> bool:
        # Past the timeout a study goes on, a trial at a time, until it has trained the
        # sampled networks it was promised: the seed trials alone took a whole 300-s search
        # phase on a busy 2-core machine, and the run then compared nothing with them.
        return (deadline is None or time.monotonic() < deadline
                or sampled_trained(study) < job.min_sampled)

    waiting = False
    while time_left():
        if _wanted(study, job.n_trials):
            waiting = False
            over = deadline is not None and time.monotonic() >= deadline
            try:
                # No n_trials here: _TrialBudget ends the run when the study (all workers,
                # failed trials and copies not counted) holds enough trials.
                study.optimize(lambda trial: run_trial(trial, resources),
                               n_trials=1 if over else None,
                               timeout=None if deadline is None or over
                               else deadline - time.monotonic(),
                               callbacks=callbacks, catch=(Exception,), gc_after_trial=True,
                               show_progress_bar=False)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                if not taken_as_lost(exc):
                    raise
                announce("another worker took this worker's trial as lost (its heartbeats were "
                         "late) and queued it again; going on")
            if progress.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise AscSearchError(
                    f"{progress.failures_in_a_row} trials failed in a row; the last: "
                    f"{progress.last_failure} (tracebacks: asc-search studies show "
                    f"{job.study} --failed)")
        elif study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if not waiting:
                announce(f"waiting for the trials other workers are running (one silent for "
                         f"{grace_of(study)} s is taken as lost and run here)")
                waiting = True
            time.sleep(min(heartbeat, 5))
        else:
            break
        fail_stale_trials(study)
    return progress.finished


def sampled_trained(study: optuna.Study) -> int:
    """Sampled (not seed) trials of the study that trained a network to the end."""
    return sum(t.user_attrs.get("status") == "trained" and "seed_trial" not in t.user_attrs
               for t in study.get_trials(deepcopy=False,
                                         states=(optuna.trial.TrialState.COMPLETE,)))


def _wanted(study: optuna.Study, n_trials: int | None) -> bool:
    """Whether the study still wants trials from this worker (``None``: until the timeout)."""
    if n_trials is None:
        return True
    taken, copies = counted_trials(study)
    return taken < n_trials and copies < COPIES_PER_SLOT * n_trials


def counted_trials(study: optuna.Study) -> tuple[int, int]:
    """The trials that took a slot of ``--trials``, and the sampled copies that did not.

    A copy (status ``duplicate``: a sampled plan whose parent fits the budgets as it is, so it *is*
    a network the study trained already) trains nothing and costs no compute, so it takes no slot:
    ``--trials 16`` trains 16 networks. In ``sscp_fill`` every sampled baseline is one, and
    while the baseline seed trial leads, TPE kept drawing it (8 of 12 sampled trials of a default
    run were copies when they counted, so the search trained four networks of its own); the
    joint space's searched recipe makes every baseline plan a network of its own. Copies
    end pruned, which turns TPE away from them, though slowly: in the tests' tiny space six of
    eleven trials were copies. A space that offers nothing else still ends, once its copies reach
    ``COPIES_PER_SLOT`` times ``--trials``.
    """
    trials = study.get_trials(deepcopy=False, states=_COUNTED)
    copies = sum(t.user_attrs.get("status") == "duplicate" for t in trials)
    return len(trials) - copies, copies


class _TrialBudget:
    """Stops the study once it holds ``n_trials`` counted trials (:func:`counted_trials`), as
    Optuna's ``MaxTrialsCallback`` does for plain counts: every worker reads the same study, so
    N workers stop at ``n_trials``, not N × ``n_trials``."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not _wanted(study, self.n_trials):
            study.stop()


def _time_left_text(study: optuna.Study, *, rules: SearchRules,
                    promotion: PromotionPlan | None, started: float) -> str:
    """`` · about 9 min left`` (of the run; of the search where no promotion follows here):
    ``asc_search.study.run_length.seconds_left`` from the study's trials' wall times (start to
    completion, as the storage kept them; copies trained nothing and are left out)."""
    timed = [TimedTrial(seed_trial="seed_trial" in t.user_attrs,
                        seconds=(t.datetime_complete - t.datetime_start).total_seconds())
             for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
             if t.user_attrs.get("status") == "trained"
             and t.datetime_start is not None and t.datetime_complete is not None]
    queued = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    left = seconds_left(timed, rules, elapsed=time.monotonic() - started,
                        counted=counted_trials(study)[0],
                        references_queued=sum("seed_trial" in t.user_attrs for t in queued),
                        promotion=promotion)
    if left is None:
        return ""
    return f" · {say_minutes(left)} {'left' if promotion else 'of search left'}"


class _ProgressLine:
    """One line per finished trial: its outcome, the best feasible accuracy so far, and how
    long the run has left (``time_left``: the line's ending, from ``_time_left_text``)."""

    def __init__(self, announce: Callable[[str], None], n_trials: int | None,
                 time_left: Callable[[optuna.Study], str] | None = None) -> None:
        self.announce, self.n_trials, self.time_left = announce, n_trials, time_left
        self.finished = 0  # trials this process ran
        self.failures_in_a_row = 0
        self.last_failure = ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.finished += 1
        attrs = trial.user_attrs
        if trial.state == optuna.trial.TrialState.FAIL:
            self.failures_in_a_row += 1
            lines = attrs.get("traceback", "").strip().splitlines()
            self.last_failure = lines[-1] if lines else "no traceback"
            if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                study.stop()
        else:
            self.failures_in_a_row = 0
        # Trials that took a slot of --trials (failed, lost and copies do not), so N of N ends it.
        done = sum(t.user_attrs.get("status") != "duplicate" for t in study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                    optuna.trial.TrialState.PRUNED)))
        total = f"/{self.n_trials}" if self.n_trials else ""
        label = f" [{attrs['seed_trial']}]" if "seed_trial" in attrs else ""
        if trial.state == optuna.trial.TrialState.COMPLETE and attrs.get("status") == "trained":
            what = (f"validation {100 * trial.values[0]:.1f} %, {attrs['macs'] / 1e6:.2f} M MACs, "
                    f"{attrs['param_bytes']:,} B, {attrs['train_seconds']:.0f} s")
        elif attrs.get("status") == "infeasible":
            what = (f"infeasible, not trained ({attrs['macs'] / 1e6:.2f} M MACs, "
                    f"{attrs['param_bytes']:,} B)")
        elif attrs.get("status") == "duplicate":
            what = (f"the network of trial {attrs['duplicate_of']} as it is: not trained again, "
                    "takes no slot (ends pruned, so the sampler looks elsewhere)")
        elif trial.state == optuna.trial.TrialState.FAIL:
            what = f"failed: {self.last_failure}"
        else:
            what = trial.state.name.lower()
        best = best_feasible(study)
        best_text = (f"best {100 * best.values[0]:.1f} % (trial {best.number})" if best
                     else "no feasible trial yet")
        left = "" if self.time_left is None else self.time_left(study)
        self.announce(f"trial {trial.number}{label} ({done}{total}): {what} · {best_text}{left}")


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return (trial.state == optuna.trial.TrialState.COMPLETE
            and trial.user_attrs.get("status") == "trained"
            and all(v <= 0 for v in trial.constraints.values()))


def best_feasible(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    trials = [t for t in study.get_trials(deepcopy=False) if feasible(t)]
    return max(trials, key=lambda t: (t.values[0], -t.user_attrs["macs"]), default=None)


def dominates(a: tuple[float, int], b: tuple[float, int]) -> bool:
    """Whether (accuracy, MACs) point ``a`` is at least as good as ``b`` on both and better on
    one: the rule of the search's Pareto front and of a Pareto promotion rung."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_trials(study: optuna.Study, *,
                  among: Sequence[optuna.trial.FrozenTrial] | None = None,
                  ) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials (of ``among``, else of the study) no other beats on both accuracy and MACs,
    best first."""
    pool = study.get_trials(deepcopy=False) if among is None else among
    trials = [t for t in pool if feasible(t)]

    def point(t: optuna.trial.FrozenTrial) -> tuple[float, int]:
        return t.values[0], t.user_attrs["macs"]

    front = [t for t in trials if not any(dominates(point(o), point(t)) for o in trials)]
    return sorted(front, key=lambda t: (-t.values[0], t.user_attrs["macs"]))


def ranked_trials(study: optuna.Study, *, searched_only: bool = False,
                  ) -> list[optuna.trial.FrozenTrial]:
    """Feasible trials best first: by validation accuracy under the budgets (one objective), or
    the Pareto front of accuracy and MACs (two). ``searched_only`` leaves out the seed trials."""
    pool = [t for t in study.get_trials(deepcopy=False)
            if feasible(t) and not (searched_only and "seed_trial" in t.user_attrs)]
    if len(study.directions) > 1:
        return pareto_trials(study, among=pool)
    return sorted(pool, key=lambda t: (-t.values[0], t.user_attrs["macs"]))


def run_workers(jobs: Sequence[WorkerJob], *, announce: Callable[[str], None],
                pm: Any = None, resources: TrialResources | None = None) -> int:
    """Run one job here (reusing ``resources``), or several in parallel processes (joblib,
    loky) on one storage, each loading its own from the cache."""
    if len(jobs) == 1:
        return run_worker(jobs[0], pm=pm, announce=announce, resources=resources)
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    study = optuna.load_study(study_name=jobs[0].study, storage=open_storage(jobs[0].storage_url))
    try:
        counts = Parallel(n_jobs=len(jobs), backend="loky")(
            delayed(_worker_process)(job) for job in jobs)
    except KeyboardInterrupt:
        # joblib has stopped the worker processes mid-trial: record and queue their trials.
        settle_dead_local_trials(study, why="was stopped by Ctrl-C", announce=announce)
        raise
    except TerminatedWorkerError:
        # joblib stops the other workers too; all their trials go back in the queue.
        settled = settle_dead_local_trials(study, why="stopped when a worker process died",
                                           announce=announce)
        raise AscSearchError(
            f"a worker process died (killed, or out of memory); {len(settled)} running trial(s) "
            "were queued again: rerun the same command to go on") from None
    return sum(counts)


def _worker_process(job: WorkerJob) -> int:
    # Ctrl-C is the parent's to handle: it stops the workers and records their trials, once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A child prints its own progress lines; stdout is shared with the parent's terminal.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return run_worker(job, announce=lambda line: print(line, flush=True))


def split_threads(n_jobs: int) -> int:
    """Torch threads per worker when ``n_jobs`` share the cores this process may use (two
    workers under ``taskset -c 0`` get one thread each, not the machine's count halved)."""
    return max(1, usable_cores() // n_jobs)
