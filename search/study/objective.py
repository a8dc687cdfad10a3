"""One search trial: sample, count, and only then train, prune, fine-tune and score.

The order is the point. A candidate is counted with the DCASE counter before any training; if its
final architecture breaks a budget the trial ends at once, untrained, keeping its counted MACs and
bytes as Optuna constraints, so the sampler learns where the wall is and no second is spent on a
network that could never be submitted. Feasible candidates are trained wide with KD on a short
proxy schedule, pruned by their plan, fine-tuned with KD, and scored on the validation list. The
test list is never loaded here.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pluggy
import torch

from asc_search.architecture import ArchSpec, build_model
from asc_search.complexity import (
    ComplexityCard,
    CountDisagreement,
    NoCountingRule,
    checked_complexity,
    count_complexity,
)
from asc_search.errors import AscSearchError
from asc_search.parents.store import PARENT_SEED, trained_parent
from asc_search.pruning.plans import candidate_of, pruning_path, settle
from asc_search.pruning.prune import PruningPlan, prune
from asc_search.study.budget import (
    StepBudget,
    final_share,
    report_epochs,
    step_budget,
    training_macs,
)
from asc_search.study.heartbeat import worker_id
from asc_search.study.references import reference_spec
from asc_search.study.space import Candidate, SearchSpace
from asc_search.study.storage import scratch
from asc_search.teachers import (
    DEFAULT_TEACHER_DEVICE_RESPONSE_P,
    DEFAULT_TEACHER_EPOCHS,
    DEFAULT_TEACHERS,
)
from asc_search.training.checkpoint import save_checkpoint
from asc_search.training.evaluate import Evaluation, evaluate
from asc_search.training.int8 import (
    INT8_PRECISION,
    Int8Network,
    qat_steps,
    quantization_aware_fit,
)
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision, derive_seed, fit, predict

OBJECTIVES = ("pareto", "accuracy")


@dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs to run the same trials: stored with the study as a user attr.

    A second machine (``asc-search worker``) rebuilds its trials from this alone, and a rerun of
    ``asc-search run`` refuses to resume a study whose settings differ.
    """

    space: dict[str, Any]
    space_source: str
    data: str | None = None
    split: int = 5
    max_macs: int = 30_000_000
    max_param_bytes: int = 128_000
    storage_dtype: str = "float16"
    objective: str = "pareto"
    #: Training budget of every candidate, in epochs at the study's batch size, for a search
    #: trial and for a finalist. A pruning plan divides it (``asc_search.study.budget``).
    proxy_epochs: int = 8
    promote_epochs: int = 32
    #: The ensemble every student distils from; empty (``--teacher none``): no distillation,
    #: students learn from the labels alone.
    teachers: tuple[str, ...] = DEFAULT_TEACHERS
    teacher_epochs: int = DEFAULT_TEACHER_EPOCHS
    #: Out-of-fold teacher logits from this many fits (1: logits on the clips a teacher saw).
    teacher_folds: int = 1
    #: The teachers' device impulse-response augmentation; 0: the study recipe's, as students.
    teacher_device_response_p: float = DEFAULT_TEACHER_DEVICE_RESPONSE_P
    ensemble: str = "mean_logits"
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides of the published recipe
    #: DCASE 2025 mode: the recommended finalist also gets one model per training device
    #: (``asc_search.training.device_models``), its fine-tune searched over this many tunings.
    device_specific: bool = False
    device_trials: int = 6
    #: The user's own hand-made networks (``run --reference``): label, spec and training
    #: overrides each (``asc_search.study.references``), queued as seed trials.
    references: tuple[dict[str, Any], ...] = ()
    #: The run's seed for its trainings (``run --seed``, beside the sampler's): a trial's
    #: fine-tunes, the parents its plans share and the finalists' rungs draw from it, so two
    #: seeds repeat the whole search, the hand-made references' training included. With one
    #: seed for the sampler only, five "seeds" of the default run trained the reference the
    #: same way five times (51.7 % on validation each time). 0 is the seeding every study
    #: before this setting had: their trials, parents and cache keys stay what they were.
    training_seed: int = 0
    #: Unseen devices simulated on the validation list (``run --simulated-devices``): copies of
    #: its device-a clips under responses no training draws from
    #: (``training.device_responses.with_simulated_devices``), so every score the search acts on
    #: (pruner, promotion, recommendation) also hears devices a model never heard, as the test's
    #: s4–s6 do. 0: the list as it is.
    simulated_devices: int = 0

    def trial_seed(self, number: int) -> int:
        """The seed trial ``number`` trains with."""
        return number if self.training_seed == 0 else derive_seed(self.training_seed, number)

    @property
    def parent_seed(self) -> int:
        """The seed every parent of the study trains with (one for all, so plans share them)."""
        return PARENT_SEED if self.training_seed == 0 else derive_seed(PARENT_SEED,
                                                                       self.training_seed)

    def to_json(self) -> str:
        # Settings added later enter only when set: a study made before keeps resuming.
        data = {k: v for k, v in asdict(self).items()
                if not (k in _ADDED_SETTINGS and v == _ADDED_SETTINGS[k])}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SearchSettings:
        """Read stored settings; fields this version no longer has are dropped (the stored
        text still differs from the new settings, so resuming such a study is refused, and
        ``dropped_settings`` names them for commands that would train under them)."""
        # A setting added later is missing from a study made before it: that study ran with
        # the value that leaves it out, whatever the default is now.
        data = {**_ADDED_SETTINGS, **json.loads(text)}
        data["teachers"] = tuple(data["teachers"])
        data["references"] = tuple(data["references"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


    def base_recipe(self, n_train: int) -> TrainingRecipe:
        """The published recipe with the study's overrides, and a batch that fits the split.

        The published batch of 256 gives the 5 % split of the embedded corpus (400 clips) two
        steps per epoch: a 4-epoch proxy would take 8 steps and learn nothing. Unless the study
        sets ``batch_size``, a split of n clips gets n // 25 per batch, between 16 and 256 (the
        published value from 6,400 clips up). Measured on that split, baseline spec, 4 epochs with
        KD: batch 16 reaches 30 % validation accuracy, batch 64 12 % (chance 10 %).
        """
        recipe = TrainingRecipe().with_(**self.recipe)
        if "batch_size" not in self.recipe:
            recipe = recipe.with_(batch_size=auto_batch_size(n_train))
        return recipe

    def teacher_recipe(self, n_train: int) -> TrainingRecipe:
        """Teachers train on the split with the base recipe, warm-up 10 % of their steps, and
        their own device impulse-response augmentation (``teacher_device_response_p``; 0: the
        study recipe's)."""
        base = self.base_recipe(n_train)
        steps = self.teacher_epochs * math.ceil(n_train / base.batch_size)
        defaults = TrainingRecipe()
        return base.with_(epochs=self.teacher_epochs, warmup_steps=steps // 10,
                          kd_weight=defaults.kd_weight, kd_temperature=defaults.kd_temperature,
                          device_response_p=self.teacher_responses_p)

    @property
    def teacher_responses_p(self) -> float:
        """The teachers' device-response probability: their own, else the study recipe's."""
        return self.teacher_device_response_p or self.recipe.get("device_response_p", 0.0)


#: ``--teacher none``: the study distils from nothing.
NO_TEACHERS = "none"


def study_teachers(names: Sequence[str]) -> tuple[str, ...]:
    """The teachers a study's ``--teacher`` options name: the default ensemble when none are
    given, and no teachers at all for ``none``, the control that measures what distillation
    adds. It can take away: on the embedded corpus, teachers trained to memorise the split cost
    students 2–3 points on test, while the default's short-trained one added 3.4 over six seeds
    (95 % t +2.5 to +4.4; ``benchmarks/kd_gain.py``)."""
    if NO_TEACHERS not in names:
        return tuple(names) or DEFAULT_TEACHERS
    if len(names) > 1:
        raise AscSearchError("--teacher none: it means no distillation, so it cannot be given "
                             "with other teachers")
    return ()


def dropped_settings(text: str) -> list[str]:
    """Stored settings keys this version does not know: a study made by an older asc-search."""
    known = {f.name for f in fields(SearchSettings)}
    return sorted(key for key in json.loads(text) if key not in known)


#: Settings newer than the first stored studies, with the value that leaves them out of the JSON.
_ADDED_SETTINGS: dict[str, Any] = {"device_specific": False, "device_trials": 6,
                                   "teacher_device_response_p": 0.0, "references": (),
                                   "training_seed": 0, "simulated_devices": 0}
#: User attribute of a trial that trains a user's reference (``run --reference``): its label,
#: spec and training, trained as given instead of sampled from the space.
REFERENCE_ATTR = "reference"


def auto_batch_size(n_train: int) -> int:
    """About 25 steps per epoch, at least 16 and at most the published 256 clips per batch."""
    return max(16, min(256, n_train // 25))


@dataclass
class TrialResources:
    """What every trial of one worker process shares: loaded once, read-only."""

    settings: SearchSettings
    space: SearchSpace
    pm: pluggy.PluginManager
    train: LabelledSet
    validation: LabelledSet
    teacher_logits: np.ndarray | None  # None: the study distils from no teachers
    precision: Precision
    artifacts: Any  # an Optuna artifact store
    studies: Path | None = None  # the studies folder (artifacts and their scratch space)
    progress: bool = False
    test: LabelledSet | None = None  # loaded for promotion only: trials never see it
    cache: Path | None = None  # the cache folder: trained parents are kept there


@dataclass(frozen=True)
class Outcome:
    """A trained candidate: the pruned network, its count and its scores."""

    model: torch.nn.Module
    spec: ArchSpec
    macs: int
    params: int
    param_bytes: int
    validation: Evaluation
    seconds: float
    budget: StepBudget
    training_macs: int  # spent by this call: a parent loaded from the cache costs nothing here
    parent_trained: bool = False  # a pruned plan whose parent this call trained (no cache hit)
    #: CPU seconds an earlier process spent on this candidate's parent before this call resumed
    #: it: what charging the call by its own process time would miss.
    restored_cpu_seconds: float = 0.0
    #: An int8 candidate's converted program: what ``validation`` scored and ``param_bytes``
    #: counts (``model`` is its float network, for a longer fine-tune to continue from).
    int8: Int8Network | None = None


def trial_candidate(space: SearchSpace, params: Mapping[str, Any], *, settings: SearchSettings,
                    pm: pluggy.PluginManager, seed_trial: bool = False,
                    reference: Mapping[str, Any] | None = None) -> Candidate:
    """The trainable candidate of a trial's stored ``params`` under the study's budgets: what the
    trial trained, what promotion trains again and what ``parents build`` prepares. A user's
    ``reference`` (the trial's ``REFERENCE_ATTR``) is its own network, trained as it is."""
    if reference is not None:
        return Candidate(spec=reference_spec(reference), training=dict(reference["training"]))
    return candidate_of(space, space.values_of(params), pm=pm, max_macs=settings.max_macs,
                        max_param_bytes=settings.max_param_bytes,
                        storage_dtype=settings.storage_dtype, seed_trial=seed_trial)


def candidate_storage(candidate: Candidate, settings: SearchSettings) -> str:
    """The dtype a candidate's parameters are stored in: its own when the space searches
    ``storage``, else the study's."""
    return str(candidate.plan.get("storage", settings.storage_dtype))


def candidate_budget(candidate: Candidate, *, settings: SearchSettings, n_train: int,
                     epochs: int, seed: int, pm: pluggy.PluginManager,
                     ) -> tuple[ArchSpec, tuple[dict[str, int], ...], TrainingRecipe, StepBudget]:
    """The wide network, pruning targets, recipe and step budget a candidate trains with."""
    wide, targets = pruning_path(candidate, pm=pm)
    recipe = settings.base_recipe(n_train).with_(**candidate.training, seed=seed)
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    pruning_steps = len(targets) * int(candidate.plan.get("prune_steps", 1)) if targets else 0
    budget = step_budget(epochs, steps_per_epoch=steps_per_epoch, pruning_steps=pruning_steps,
                         final=final_share(candidate.plan.get("final_share")))
    recipe = recipe.with_(epochs=epochs,
                          warmup_steps=min(recipe.warmup_steps, budget.wide // 10))
    return wide, targets, recipe, budget


def parent_recipe(recipe: TrainingRecipe, candidate: Candidate, *, settings: SearchSettings,
                  n_train: int, parent_seed: int | None = None) -> TrainingRecipe:
    """The recipe a candidate's parent trains with: the study's, not the candidate's searched
    training values (its batch and warm-up excepted, which set the steps), and the parent seed
    instead of the trial's (``parent_seed``; the study's by default).

    A parent is shared by every plan that prunes it (``asc_search.parents.store``, keyed by its
    recipe): were a candidate's sampled augmentation or learning rate to reach it, every pruned
    candidate of a joint space would train a wide network of its own, a 96-wide one at nine times
    a final network's cost per step. Its searched recipe acts on the steps that are its own: the
    fine-tunes between pruning steps and the final fine-tune, or all of an unpruned candidate's.
    """
    study = settings.base_recipe(n_train)
    shared = {name: getattr(study, name) for name in candidate.training
              if name not in ("batch_size", "warmup_steps")}
    seed = settings.parent_seed if parent_seed is None else parent_seed
    return recipe.with_(**shared, seed=derive_seed(seed, 0))


def train_candidate(candidate: Candidate, *, settings: SearchSettings, pm: pluggy.PluginManager,
                    train: LabelledSet, validation: LabelledSet,
                    teacher_logits: np.ndarray | None,
                    precision: Precision, epochs: int, seed: int = 0, progress: bool = False,
                    on_report: Callable[[torch.nn.Module, int], None] | None = None,
                    final_card: ComplexityCard | None = None,
                    parents: Path | None = None, parent_seed: int | None = None) -> Outcome:
    """Train with KD for a budget of ``epochs``, pruning by the candidate's plan on the way;
    score the result on validation.

    Every candidate gets the same ``epochs`` of training samples, ``epochs × steps-per-epoch``
    optimiser steps at its batch size (``asc_search.study.budget``): an unpruned one trains its
    network for all of them, a pruning plan divides them between the wide network, the
    fine-tunes between pruning steps and the final fine-tune. Search trials call this with the
    proxy budget; promotion calls it again with the longer one. ``on_report(model, epoch)`` runs
    at every whole epoch of the budget at which the network being trained is the final one
    (every epoch of an unpruned candidate, the epochs of the final fine-tune of a pruned one),
    so intermediate values always score a network of the submitted width. ``final_card`` is the
    candidate's count if the caller has one: an unpruned network is then not counted again (a
    pruned one carries the count its last step made). A pruned plan's wide network is its
    parent (``asc_search.parents.store``): trained with the parent seed, not ``seed``, and loaded from
    the ``parents`` cache folder when an earlier trial trained it; the pruning and fine-tunes
    after it draw ``seed``. A study keeps one parent seed for all its trials (its settings'
    ``parent_seed`` unless ``parent_seed`` is given); a benchmark that repeats a whole experiment
    per seed passes its seed, so the parents vary with it too.
    """
    started = time.perf_counter()
    wide, targets, recipe, budget = candidate_budget(candidate, settings=settings,
                                                   n_train=len(train), epochs=epochs, seed=seed,
                                                   pm=pm)
    steps_per_epoch, pruning_steps = budget.steps_per_epoch, budget.pruning_steps

    def reporting(offset: int) -> Callable[[int], None] | None:
        """An ``on_step`` that reports at whole epochs of the budget, ``offset`` steps in."""
        if on_report is None:
            return None

        def on_step(step: int) -> None:
            done = offset + step
            if done % steps_per_epoch == 0:
                on_report(model, done // steps_per_epoch)

        return on_step

    storage = candidate_storage(candidate, settings)
    # An int8 candidate gives the last share of its last fine-tune to quantisation-aware
    # training, then is converted and scored as int8 (``asc_search.training.int8``).
    int8 = storage == "int8"

    def float_steps(steps: int) -> int:
        """The float share of a last fine-tune of ``steps`` (all of it unless int8)."""
        return steps - qat_steps(steps) if int8 else steps
    parent_trained, restored_cpu = False, 0.0
    if targets:
        model, cache_hit, restored_cpu = trained_parent(
            wide, pm=pm, recipe=parent_recipe(recipe, candidate, settings=settings,
                                              n_train=len(train), parent_seed=parent_seed),
            steps=budget.wide, train=train, teacher_logits=teacher_logits, precision=precision,
            cache=parents, progress=progress)
        parent_trained = not cache_hit
    else:
        model = build_model(wide, pm=pm, seed=seed)
        if float_steps(budget.wide):
            fit(model, train, recipe.with_(seed=derive_seed(seed, 0)),
                steps=float_steps(budget.wide), teacher_logits=teacher_logits,
                precision=precision, on_step=reporting(0), progress=progress,
                label=f"train {wide.base_channels}-wide")
    model.to("cpu")
    if targets and not parent_trained:
        wide_macs = 0  # a parent loaded from the cache cost this trial nothing: not counted
    elif final_card is not None and not targets:
        wide_macs = final_card.macs
    else:
        wide_macs = count_complexity(model, storage_dtype=storage).macs
    spec = wide
    between_macs: list[int] = []
    if targets:
        schedule = candidate.plan.get("schedule", "agp")
        plan = PruningPlan(
            importance=candidate.plan.get("importance", "l2"),
            schedule=schedule, steps=int(candidate.plan.get("prune_steps", 1)), targets=targets,
            max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes,
            storage_dtype=storage, finetune_steps=budget.between,
            final_finetune_epochs=0,
        )
        result = prune(model, wide, plan, pm=pm, train=train, teacher_logits=teacher_logits,
                       recipe=recipe.with_(seed=derive_seed(seed, 1)), precision=precision,
                       progress=progress)
        model, spec = result.model, result.spec
        between_macs = [step.macs for step in result.steps[:pruning_steps - 1]]
        if float_steps(budget.final):
            fit(model, train, recipe.with_(warmup_steps=0, seed=derive_seed(seed, 2)),
                steps=float_steps(budget.final), teacher_logits=teacher_logits,
                precision=precision, on_step=reporting(budget.total - budget.final),
                progress=progress, label="final fine-tune")
        model.to("cpu")
        card = result.card
    else:
        card = final_card or count_complexity(model, storage_dtype=storage)
    network, param_bytes, scored = None, card.param_bytes, model
    if int8:
        network, _ = quantization_aware_fit(
            model, train, recipe.with_(seed=derive_seed(seed, 3)),
            steps=qat_steps(budget.final if targets else budget.wide),
            teacher_logits=teacher_logits, precision=precision, progress=progress)
        param_bytes, scored = network.stored_bytes, network
    logits = predict(scored, validation.features,
                     precision=INT8_PRECISION if int8 else precision)
    model.to("cpu")
    spent = training_macs(budget, batch_size=recipe.batch_size, wide_macs=wide_macs,
                          between_macs=between_macs, final_macs=card.macs)
    return Outcome(model=model, spec=spec, macs=card.macs, params=card.params,
                   param_bytes=param_bytes,
                   validation=evaluate(logits, validation.labels, validation.devices,
                                       files=validation.files, classes=validation.classes),
                   seconds=time.perf_counter() - started, budget=budget, training_macs=spent,
                   parent_trained=parent_trained, restored_cpu_seconds=restored_cpu,
                   int8=network)


def run_trial(trial: optuna.Trial, resources: TrialResources) -> float | tuple[float, float]:
    """The objective Optuna calls: see the module docstring for the order of events."""
    try:
        return _run_trial(trial, resources)
    except optuna.TrialPruned:
        raise
    except KeyboardInterrupt:
        # Ctrl-C: Optuna records this trial as FAIL; queue its parameters again so the rerun
        # that resumes the study trains the same candidate (a seed trial stays a seed trial).
        trial.set_user_attr("status", "interrupted")
        keep = {k: v for k, v in trial.user_attrs.items() if k in ("seed_trial", REFERENCE_ATTR)}
        trial.study.enqueue_trial(trial.params, user_attrs=keep)
        raise
    except Exception:
        # The study goes on (optimize catches); the trial keeps why it failed.
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        raise


def _run_trial(trial: optuna.Trial, resources: TrialResources) -> float | tuple[float, float]:
    settings = resources.settings
    # Which machine and process ran it: the first thing to look at when a trial was lost.
    trial.set_user_attr("worker", worker_id())
    # A parent-based plan is scaled to fill the budget here; a seed trial is trained as defined,
    # and a user's reference is its own network, not a point of the space.
    reference = trial.user_attrs.get(REFERENCE_ATTR)
    if reference is not None:
        candidate = trial_candidate(resources.space, {}, settings=settings, pm=resources.pm,
                                    reference=reference)
    else:
        candidate = settle(resources.space.suggest(trial), pm=resources.pm,
                           max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes,
                           storage_dtype=settings.storage_dtype,
                           seed_trial="seed_trial" in trial.user_attrs)
    final = build_model(candidate.spec, pm=resources.pm)
    # The pre-check: every registered counter must agree with the official count, or the
    # candidate is refused here, untrained. Refused, not failed: the candidate is what the
    # space offered, not a crash, so it ends pruned with the counters' one line (a failure
    # would keep a traceback and count towards stopping the search).
    try:
        card = checked_complexity(final, pm=resources.pm,
                                  storage_dtype=candidate_storage(candidate, settings))
    except (CountDisagreement, NoCountingRule) as exc:
        trial.set_user_attr("spec", candidate.spec.to_dict())
        trial.set_user_attr("status", "refused")
        trial.set_user_attr("refused", str(exc))
        raise optuna.TrialPruned(f"refused by the count: {exc}") from None
    trial.set_user_attr("spec", candidate.spec.to_dict())
    trial.set_user_attr("plan", candidate.plan)
    trial.set_user_attr("training", candidate.training)
    trial.set_user_attr("macs", card.macs)
    trial.set_user_attr("params", card.params)
    trial.set_user_attr("param_bytes", card.param_bytes)
    over_macs = card.macs - settings.max_macs
    over_bytes = card.param_bytes - settings.max_param_bytes
    if over_macs > 0 or over_bytes > 0:
        trial.set_constraint("macs", over_macs)
        trial.set_constraint("param_bytes", over_bytes)
        trial.set_user_attr("status", "infeasible")
        trial.set_user_attr("train_seconds", 0.0)
        return _values(settings, 0.0, card.macs)
    twin = None if "seed_trial" in trial.user_attrs else _unpruned_twin(trial, candidate)
    if twin is not None:
        # A sampled plan whose parent fits as it is (the baseline, say) *is* that trained
        # network: nothing is trained again, and the trial ends pruned. Given the twin's score
        # instead, TPE took the point for a good region and sampled it again and again (8 of 11
        # sampled trials of a default run were copies of the baseline); pruned trials go to its
        # worse group, so it looks elsewhere. The twin keeps the score.
        trial.set_constraint("macs", over_macs)
        trial.set_constraint("param_bytes", over_bytes)
        trial.set_user_attr("status", "duplicate")
        trial.set_user_attr("duplicate_of", twin.number)
        trial.set_user_attr("train_seconds", 0.0)
        raise optuna.TrialPruned(f"the network of trial {twin.number} as it is")

    # A seed trial is the hand-made reference and is never stopped; without a pruner, reports
    # cost validation passes and decide nothing.
    reported = report_epochs(settings.proxy_epochs)
    stoppable = ("seed_trial" not in trial.user_attrs
                 and not isinstance(trial.study.pruner, optuna.pruners.NopPruner))

    def report(model: torch.nn.Module, epoch: int) -> None:
        if epoch not in reported:
            return
        logits = predict(model, resources.validation.features, precision=resources.precision)
        score = evaluate(logits, resources.validation.labels, resources.validation.devices,
                         interval=False, classes=resources.validation.classes).macro_accuracy
        model.train()
        trial.report(score, epoch)
        if trial.should_prune():
            trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"validation {100 * score:.1f} % at epoch {epoch}")

    # Intermediate reports (and so early stopping) exist for one objective only: Optuna's pruners
    # do not handle several. They score the final-width network only (see train_candidate).
    outcome = train_candidate(
        candidate, settings=settings, pm=resources.pm, train=resources.train,
        validation=resources.validation, teacher_logits=resources.teacher_logits,
        precision=resources.precision, epochs=settings.proxy_epochs,
        seed=settings.trial_seed(trial.number),
        progress=resources.progress, final_card=card, parents=resources.cache,
        on_report=report if settings.objective == "accuracy" and stoppable else None,
    )
    # The pruned network, not the sampled spec, is what would be submitted: constrain that.
    trial.set_constraint("macs", outcome.macs - settings.max_macs)
    trial.set_constraint("param_bytes", outcome.param_bytes - settings.max_param_bytes)
    trial.set_user_attr("status", "trained")
    trial.set_user_attr("train_seconds", round(outcome.seconds, 1))
    trial.set_user_attr("budget", outcome.budget.to_dict())
    trial.set_user_attr("training_macs", outcome.training_macs)
    if outcome.budget.pruning_steps:
        trial.set_user_attr("parent", "trained" if outcome.parent_trained else "cached")
    trial.set_user_attr("macs", outcome.macs)
    trial.set_user_attr("params", outcome.params)
    trial.set_user_attr("param_bytes", outcome.param_bytes)
    trial.set_user_attr("storage", candidate_storage(candidate, settings))
    trial.set_user_attr("pruned_spec", outcome.spec.to_dict())
    trial.set_user_attr("validation", evaluation_attrs(outcome.validation))
    _upload_checkpoint(trial, resources, outcome)
    return _values(settings, outcome.validation.macro_accuracy, outcome.macs)


def _unpruned_twin(trial: optuna.Trial,
                   candidate: Candidate) -> optuna.trial.FrozenTrial | None:
    """A trained trial of the same study that trained exactly this unpruned network and recipe,
    if there is one (parent-based plans whose parent fits the budget as it is)."""
    if "parent" not in candidate.plan or candidate.targets:
        return None
    spec, training = candidate.spec.to_dict(), candidate.training
    for other in trial.study.get_trials(deepcopy=False,
                                        states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = other.user_attrs
        if (attrs.get("status") == "trained" and attrs.get("spec") == spec
                and attrs.get("training") == training
                and not attrs.get("budget", {}).get("pruning_steps")):
            return other
    return None


def _values(settings: SearchSettings, accuracy: float, macs: int) -> float | tuple[float, float]:
    return accuracy if settings.objective == "accuracy" else (accuracy, float(macs))


def evaluation_attrs(result: Evaluation) -> dict[str, Any]:
    return {"macro": round(result.macro_accuracy, 4),
            "macro_interval": [round(v, 4) for v in result.macro_interval], "seen": result.seen,
            "unseen": result.unseen,
            "per_device": {k: round(v, 4) for k, v in result.per_device.items()},
            "per_device_interval": {k: [round(v, 4) for v in interval]
                                    for k, interval in result.per_device_interval.items()},
            "per_class": {k: round(v, 4) for k, v in result.per_class.items()}}


def _upload_checkpoint(trial: optuna.Trial, resources: TrialResources, outcome: Outcome) -> None:
    """The trial's pruned network, tensor-only, as an Optuna artifact (``export`` reads it)."""
    from optuna.artifacts import upload_artifact

    with scratch(resources.studies) as folder:
        path = Path(folder) / f"trial-{trial.number}.pt"
        save_checkpoint(path, spec=outcome.spec, state_dict=outcome.model.state_dict(),
                        metadata={"trial": trial.number, "stage": "search",
                                  "validation_macro_accuracy": outcome.validation.macro_accuracy,
                                  "classes": list(resources.train.classes)})
        artifact_id = upload_artifact(artifact_store=resources.artifacts, file_path=str(path),
                                      study_or_trial=trial)
        if outcome.int8 is not None:  # what the trial scored: its int8 program
            program = Path(folder) / f"trial-{trial.number}-int8.pt2"
            outcome.int8.save(program)
            trial.set_user_attr("int8_artifact", upload_artifact(
                artifact_store=resources.artifacts, file_path=str(program),
                study_or_trial=trial))
    trial.set_user_attr("checkpoint_artifact", artifact_id)
