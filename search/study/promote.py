"""Promotion: the search's best feasible trials trained on to full length, then tested.

Search trials train on a short proxy schedule and are ranked on the validation list only. The
best searched trials then climb **rungs** of successive halving: each continues from its own
search checkpoint (the pruned network the trial left, with its trained weights), fine-tuned with
KD to a budget ``REDUCTION`` times its last one (the proxy's 8 epochs, then 16, then 32), and
after every rung only the best 1/``REDUCTION`` of them (by validation; by non-dominated sorting
of accuracy and MACs in the Pareto mode, as MO-ASHA ranks a rung) go on. Nothing is trained from
scratch: the parents and pruning the trial paid for are kept, and a plan ranked well on a short
fine-tune earns a longer one. The top rung's survivors are the finalists. The best seed trial by
validation (the DCASE baseline or one of the seed's S1–S3) climbs beside them, never dropped, as
the hand-made reference: same rungs, recipe, teachers and budget. Only now is the test list read,
for the finalists, and each searched finalist's test difference from the reference gets a paired
bootstrap interval over recordings.

``promote_by="retrain"`` is the earlier promotion: each finalist trained again from scratch on
the whole promotion budget (a parent at that length, pruning, fine-tune), kept for comparison and
for studies whose trial checkpoints are elsewhere (a worker's artifacts on another machine).

Optuna refuses to change a finished trial, so a finalist's results are a study user attribute
``finalist:<trial number>`` and its checkpoint and complexity card are study artifacts named after
the trial.

Promotion is long (tens of CPU-minutes at the default settings, hours in a benchmark), so it
resumes: every contender's network after every finished rung is kept in the studies folder
(``RungStore``), and a fine-tune cut off inside a rung continues from its last epoch
(``fit(resume=)``). Promotion started again for the same trials and rungs re-enters at the first
unfinished rung with the networks the cut-off run had; the store is removed once the finalists are
saved.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from asc_search.architecture import ArchSpec, build_model
from asc_search.complexity import count_complexity
from asc_search.errors import AscSearchError
from asc_search.paths import studies_dir
from asc_search.study.budget import REDUCTION, TRAINING_PASSES, rung_epochs
from asc_search.study.lifecycle import (
    dominates,
    feasible,
    load_resources,
    ranked_trials,
    settings_of,
)
from asc_search.study.objective import (
    REFERENCE_ATTR,
    TrialResources,
    candidate_storage,
    evaluation_attrs,
    train_candidate,
    trial_candidate,
)
from asc_search.study.recommend import (
    FinalistScore,
    Recommendation,
    never_predicted,
    recommend,
)
from asc_search.study.storage import artifact_store, scratch
from asc_search.training.checkpoint import load_checkpoint, save_checkpoint
from asc_search.training.evaluate import Evaluation, evaluate, paired_difference, recordings
from asc_search.training.int8 import (
    INT8_PRECISION,
    Int8Network,
    load_int8,
    qat_steps,
    quantization_aware_fit,
)
from asc_search.training.train import Precision, derive_seed, fit, predict

FINALIST_PREFIX = "finalist:"
#: Study user attribute holding the recommendation (``asc_search.study.recommend``).
RECOMMENDATION_ATTR = "recommendation"


def _with_interval(result: Evaluation) -> str:
    low, high = result.macro_interval
    return f"{100 * result.macro_accuracy:.1f} % ({100 * low:.1f}–{100 * high:.1f})"


def choose_finalists(study: optuna.Study, *, top: int,
                     with_seed_plan: bool = True) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` best searched trials (feasible; see ``ranked_trials``),
    then the hand-made reference: the best seed trial (the DCASE baseline or one of the seed's
    plans) by validation. Both are chosen before any test clip is read."""
    chosen = ranked_trials(study, searched_only=True)[:top]
    if with_seed_plan:
        seeds = [t for t in study.get_trials(deepcopy=False)
                 if "seed_trial" in t.user_attrs and feasible(t) and t.values]
        if seeds:
            chosen.append(max(seeds, key=lambda t: t.values[0]))
    if not chosen:  # a study of seed trials only, asked for no reference
        chosen = ranked_trials(study)[:top]
    return chosen


def recommendation(study: optuna.Study) -> Recommendation | None:
    """The study's recommended model, if its promotion has run."""
    stored = study.user_attrs.get(RECOMMENDATION_ATTR)
    return None if stored is None else Recommendation.from_dict(stored)


def finalists(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Promoted trials' results, by trial number."""
    return {int(key.removeprefix(FINALIST_PREFIX)): value
            for key, value in study.user_attrs.items() if key.startswith(FINALIST_PREFIX)}


PROMOTE_BY = ("continue", "retrain")


class RungStore:
    """Each contender's network after each finished rung, in one folder of the studies folder.

    A rung's entry is named by what makes it that rung: the trial's own search checkpoint (its
    artifact id, unique to the trial), the rung, its budget and the promotion seed. Entries are
    tensor-only checkpoints written atomically; the validation score is computed again on load (it
    takes seconds) rather than trusted from a file. ``restored_cpu_seconds`` is the process time
    the restored rungs cost when they ran, so a resumed promotion still reports its whole cost.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.restored_cpu_seconds = 0.0

    def name(self, contender: Promoted, *, rung: int, epochs: int, seed: int) -> str:
        artifact = contender.trial.user_attrs.get("checkpoint_artifact", "none")
        return f"trial-{contender.trial.number}-{artifact}-rung{rung}-e{epochs}-s{seed}"

    def resume_file(self, contender: Promoted, *, rung: int, epochs: int, seed: int) -> Path:
        return self.folder / f"{self.name(contender, rung=rung, epochs=epochs, seed=seed)}.resume"

    def save(self, contender: Promoted, *, rung: int, epochs: int, seed: int,
             cpu_seconds: float) -> None:
        name = self.name(contender, rung=rung, epochs=epochs, seed=seed)
        if contender.int8 is not None:  # first: a rung counts as kept once its .pt is there
            contender.int8.save(self.folder / f"{name}.pt2")
        save_checkpoint(self.folder / f"{name}.pt",
                        spec=contender.spec, state_dict=contender.model.state_dict(),
                        metadata={"seconds": contender.seconds, "cpu_seconds": cpu_seconds,
                                  "training_macs": contender.training_macs,
                                  "budget": contender.budget, "rungs": contender.rungs})

    def restore(self, contender: Promoted, *, rung: int, epochs: int, seed: int) -> bool:
        """Put the rung's kept network and accounting into ``contender``; False if not kept."""
        path = self.folder / f"{self.name(contender, rung=rung, epochs=epochs, seed=seed)}.pt"
        if not path.is_file():
            return False
        loaded = load_checkpoint(path, label=f"trial {contender.trial.number}'s rung {rung}")
        contender.model.load_state_dict(loaded.state_dict)
        if contender.storage == "int8":
            contender.int8 = load_int8(path.with_suffix(".pt2"))
        meta = loaded.metadata
        contender.seconds, contender.training_macs = float(meta["seconds"]), int(meta["training_macs"])
        contender.budget, contender.rungs = dict(meta["budget"]), list(meta["rungs"])
        contender.epochs = epochs
        self.restored_cpu_seconds += float(meta["cpu_seconds"])
        return True

    def clear(self) -> None:
        for path in self.folder.glob("trial-*"):
            path.unlink(missing_ok=True)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


@dataclass
class Promoted:
    """A candidate on its way to the finals: its network as trained so far and what it cost."""

    trial: optuna.trial.FrozenTrial
    label: str  # "searched", or the seed trial's name (the hand-made reference)
    model: torch.nn.Module
    spec: ArchSpec
    macs: int
    epochs: int  # budget trained so far, in epochs of the study's batch
    validation: Evaluation | None  # after the last rung climbed (None before the first)
    #: Per validation clip, right or wrong, as ``validation`` scored it (the recommendation's
    #: paired comparison reads it; None where the network was scored elsewhere, by a retrain).
    validation_correct: np.ndarray | None = None
    seconds: float = 0.0  # spent by promotion (the search's share is the trial's)
    training_macs: int = 0
    budget: dict[str, Any] = field(default_factory=dict)
    rungs: list[dict[str, Any]] = field(default_factory=list)
    storage: str = "float16"  # the trial's stored dtype
    #: An int8 contender's converted program after its last fine-tune (``model`` is the float
    #: network it continues from): what is scored, counted and shipped.
    int8: Int8Network | None = None

    @property
    def scored(self) -> torch.nn.Module:
        """The network that is evaluated: the int8 program of an int8 contender."""
        return self.int8 if self.int8 is not None else self.model


def climb_rungs(entrants: Sequence[optuna.trial.FrozenTrial], *, top: int,
                resources: TrialResources, rungs: Sequence[int],
                reference: optuna.trial.FrozenTrial | None = None,
                announce: Callable[[str], None] = lambda line: None,
                seed: int = 0, store: RungStore | None = None) -> list[Promoted]:
    """Successive halving over fine-tune length (see the module docstring), from each trial's
    own search checkpoint; returns the top rung's ``top`` survivors, then ``reference``.

    ``entrants`` are searched trials, best first; the first ``top × REDUCTION^(rungs − 1)``
    enter. At rung r (from 1) each contender trains ``(rungs[r] − epochs so far) ×
    steps-per-epoch`` more steps (cosine from the recipe's rate, no warm-up, as a final
    fine-tune) and is scored on validation; the best ``top × REDUCTION^(len(rungs) − r − 1)``
    searched ones go on, and the last rung's best ``top`` are the finalists. With the default
    8-epoch proxy and 32-epoch promotion: two trials fine-tune 8 epochs more, the better one 16
    more: 32 epochs of promotion in all, against 32 per finalist (parent included) to retrain.
    With a ``store``, finished rungs are kept and a repeated call restores them (see ``RungStore``).
    """
    settings = resources.settings
    pareto = settings.objective == "pareto"
    width = top * REDUCTION ** (len(rungs) - 1)
    climbing = [_from_checkpoint(t, resources) for t in entrants[:width]]
    kept = [_from_checkpoint(reference, resources)] if reference is not None else []
    for rung, epochs in enumerate(rungs, start=1):
        for contender in climbing + kept:
            if store is not None and store.restore(contender, rung=rung, epochs=epochs, seed=seed):
                contender.validation = _validation(contender, resources)
                continue
            started = time.process_time()
            _continue(contender, epochs=epochs, rung=rung, resources=resources, seed=seed,
                      resume=None if store is None else
                      store.resume_file(contender, rung=rung, epochs=epochs, seed=seed))
            if store is not None:
                store.save(contender, rung=rung, epochs=epochs, seed=seed,
                           cpu_seconds=time.process_time() - started)
        goes_on = top * REDUCTION ** max(len(rungs) - rung - 1, 0)
        climbing = _ranked(climbing, pareto=pareto)
        names = ", ".join(f"{c.trial.number} {100 * c.validation.macro_accuracy:.1f} %"
                          for c in climbing + kept)
        dropped = [c.trial.number for c in climbing[goes_on:]]
        announce(f"rung {rung} ({epochs} epochs): validation of trials {names}"
                 + (f"; {', '.join(map(str, dropped))} stop here" if dropped else ""))
        climbing = climbing[:goes_on]
    return climbing + kept


def _ranked(contenders: list[Promoted], *, pareto: bool) -> list[Promoted]:
    """Best first: by validation accuracy, or by non-dominated front of (accuracy, MACs) and
    accuracy within a front."""
    if not pareto:
        return sorted(contenders, key=lambda c: (-c.validation.macro_accuracy, c.macs))
    front_of: dict[int, int] = {}
    rest, front = list(contenders), 0

    def point(c: Promoted) -> tuple[float, int]:
        return c.validation.macro_accuracy, c.macs

    while rest:
        layer = [c for c in rest if not any(dominates(point(o), point(c)) for o in rest)]
        for c in layer:
            front_of[id(c)] = front
        rest = [c for c in rest if id(c) not in front_of]
        front += 1
    return sorted(contenders, key=lambda c: (front_of[id(c)], -c.validation.macro_accuracy,
                                             c.macs))


def require_checkpoints(trials: Sequence[optuna.trial.FrozenTrial], *,
                        studies: Path | None) -> None:
    """Refuse, in one line, a promotion by continuing whose trials' search checkpoints are not
    in this studies folder: workers on machines that share no disk keep their artifacts at home.
    The line names the trials and the workers that ran them, and the two ways out."""
    store = artifact_store(studies)
    missing: dict[int, str] = {}
    for trial in trials:
        artifact = trial.user_attrs.get("checkpoint_artifact")
        try:
            if artifact is None:
                raise ArtifactNotFound(f"trial {trial.number} kept no checkpoint")
            store.open_reader(artifact).close()
        except ArtifactNotFound:
            worker = str(trial.user_attrs.get("worker", "")).rpartition(":")[0]
            missing[trial.number] = worker or "an unrecorded worker"
    if missing:
        where = sorted(set(missing.values()))
        raise AscSearchError(
            f"promoting by continuing needs the search checkpoints of trial(s) "
            f"{', '.join(map(str, sorted(missing)))}, which are not in "
            f"{studies_dir(studies) / 'artifacts'} (run on {', '.join(where)}): copy that "
            "folder from there, share the studies folder, or promote with --promote-by retrain "
            "(it needs only the study)")


def _from_checkpoint(trial: optuna.trial.FrozenTrial, resources: TrialResources) -> Promoted:
    """The network a trial left: its search checkpoint artifact, read tensor-only."""
    artifact = trial.user_attrs.get("checkpoint_artifact")
    if artifact is None:
        raise AscSearchError(f"trial {trial.number} has no search checkpoint to continue from; "
                             "promote with --promote-by retrain")
    with scratch(resources.studies) as folder:
        path = Path(folder) / f"trial-{trial.number}.pt"
        try:
            download_artifact(artifact_store=resources.artifacts, artifact_id=artifact,
                              file_path=str(path))
        except ArtifactNotFound:
            raise AscSearchError(
                f"trial {trial.number}'s checkpoint is not in this studies folder (a worker on "
                "another machine keeps its own artifacts): copy them, or promote with "
                "--promote-by retrain") from None
        loaded = load_checkpoint(path, label=f"trial {trial.number}'s search checkpoint")
    model = build_model(loaded.spec, pm=resources.pm)
    model.load_state_dict(loaded.state_dict)
    attrs = trial.user_attrs
    # Scored after its first rung: entrants are ranked by the trial's own search score.
    return Promoted(trial=trial, label=attrs.get("seed_trial", "searched"), model=model,
                    spec=loaded.spec, macs=int(attrs["macs"]),
                    epochs=resources.settings.proxy_epochs, validation=None,
                    budget={"search": attrs.get("budget", {})},
                    storage=str(attrs.get("storage", resources.settings.storage_dtype)))


def scoring_precision(contender: Promoted, resources: TrialResources) -> Precision:
    """The int8 program runs in float32 on the CPU, as shipped; a float network as the study
    trains it."""
    return INT8_PRECISION if contender.int8 is not None \
        else resources.precision


def _validation(contender: Promoted, resources: TrialResources) -> Evaluation:
    """The contender's validation score; its per-clip answers are kept on it as well."""
    logits = predict(contender.scored, resources.validation.features,
                     precision=scoring_precision(contender, resources))
    validation = evaluate(logits, resources.validation.labels, resources.validation.devices,
                          files=resources.validation.files, classes=resources.validation.classes)
    contender.validation_correct = logits.argmax(axis=1) == resources.validation.labels
    contender.model.to("cpu")
    return validation


def _continue(contender: Promoted, *, epochs: int, rung: int, resources: TrialResources,
              seed: int, resume: Path | None = None) -> None:
    """Fine-tune a contender in place with KD up to a budget of ``epochs``; score it.
    ``resume`` keeps the fine-tune's state after every epoch (removed once the rung is done)."""
    settings, trial = resources.settings, contender.trial
    started = time.perf_counter()
    # The recipe overrides the trial trained with, as it stored them: settling the plan again
    # (16 counts of bisection) for every contender at every rung would only find them again.
    recipe = settings.base_recipe(len(resources.train)).with_(**trial.user_attrs["training"])
    steps = (epochs - contender.epochs) * math.ceil(len(resources.train) / recipe.batch_size)
    # An int8 contender ends every rung as it ended its trial: quantisation-aware, converted.
    quantised = qat_steps(steps) if contender.storage == "int8" else 0
    if steps > quantised:
        fit(contender.model, resources.train,
            recipe.with_(epochs=epochs, warmup_steps=0, seed=derive_seed(seed, trial.number, rung)),
            steps=steps - quantised, teacher_logits=resources.teacher_logits,
            precision=resources.precision, progress=resources.progress,
            label=f"rung {rung}: trial {trial.number}", resume=resume)
    if quantised:
        contender.int8, _ = quantization_aware_fit(
            contender.model, resources.train,
            recipe.with_(seed=derive_seed(seed, trial.number, rung, 1)), steps=quantised,
            teacher_logits=resources.teacher_logits, precision=resources.precision,
            progress=resources.progress, label=f"rung {rung}: trial {trial.number}, int8")
    contender.validation = _validation(contender, resources)
    contender.seconds += time.perf_counter() - started
    contender.training_macs += steps * recipe.batch_size * TRAINING_PASSES * contender.macs
    contender.budget[f"rung {rung}"] = {"epochs": epochs, "steps": steps}
    contender.epochs = epochs
    contender.rungs.append({"rung": rung, "epochs": epochs,
                            "validation": round(contender.validation.macro_accuracy, 4)})
    if resume is not None:
        resume.unlink(missing_ok=True)


def _retrained(trial: optuna.trial.FrozenTrial, label: str, *, resources: TrialResources,
               cache: Path, progress: bool) -> Promoted:
    """A finalist trained again from scratch on the whole promotion budget."""
    settings = resources.settings
    candidate = trial_candidate(resources.space, trial.params, settings=settings,
                                pm=resources.pm, seed_trial="seed_trial" in trial.user_attrs,
                                reference=trial.user_attrs.get(REFERENCE_ATTR))
    outcome = train_candidate(
        candidate, settings=settings, pm=resources.pm, train=resources.train,
        validation=resources.validation, teacher_logits=resources.teacher_logits,
        precision=resources.precision, epochs=settings.promote_epochs,
        seed=settings.trial_seed(0),
        progress=progress, parents=cache)
    return Promoted(trial=trial, label=label, model=outcome.model, spec=outcome.spec,
                    macs=outcome.macs, epochs=settings.promote_epochs,
                    validation=outcome.validation, seconds=outcome.seconds,
                    training_macs=outcome.training_macs, budget=outcome.budget.to_dict(),
                    storage=candidate_storage(candidate, settings), int8=outcome.int8)


def distill(study: optuna.Study, *, top: int, pm: Any, cache: Path, studies: Path | None,
            device: str = "cpu", progress: bool = True, with_seed_plan: bool = True,
            promote_by: str = "continue",
            announce: Callable[[str], None] = lambda line: None) -> dict[int, dict[str, Any]]:
    """Promote the study's finalists (see the module docstring); return their results."""
    if promote_by not in PROMOTE_BY:
        raise AscSearchError(f"promote by {promote_by!r}: choose one of {', '.join(PROMOTE_BY)}")
    settings = settings_of(study)
    rungs = rung_epochs(settings.proxy_epochs, settings.promote_epochs) \
        if promote_by == "continue" else []
    width = top * REDUCTION ** (len(rungs) - 1) if rungs else top
    chosen = choose_finalists(study, top=width, with_seed_plan=with_seed_plan)
    if not chosen:
        raise AscSearchError(f"study {study.study_name!r} has no feasible trained trial to promote")
    searched = [t for t in chosen if "seed_trial" not in t.user_attrs]
    seeds = [t for t in chosen if "seed_trial" in t.user_attrs]
    if rungs:  # before the data and teachers are loaded: say at once what is missing
        require_checkpoints([*(searched or seeds)[:width], *seeds[:1]], studies=studies)
    loaded = load_resources(settings, pm=pm, cache=cache, studies=studies, device=device,
                            progress=progress, with_test=True)
    kept_rungs = RungStore(studies_dir(studies) / "promotion" / study.study_name) if rungs else None
    if rungs:
        announce(f"promoting by successive halving from the trials' checkpoints: "
                 f"{len(searched)} searched trial(s) and {len(seeds)} seed plan(s) through "
                 f"rungs of {', '.join(map(str, rungs))} epochs")
        promoted = climb_rungs(searched or seeds, top=top, resources=loaded, rungs=rungs,
                               reference=seeds[0] if searched and seeds else None,
                               announce=announce, store=kept_rungs,
                               seed=settings.training_seed)
    else:
        promoted = []
        for trial in chosen:
            label = trial.user_attrs.get("seed_trial", "searched")
            announce(f"promoting trial {trial.number} ({label}): a budget of "
                     f"{settings.promote_epochs} epochs with KD, shared by its pruning plan")
            promoted.append(_retrained(trial, label, resources=loaded, cache=cache,
                                       progress=progress))
    results = {}
    test_correct: dict[int, np.ndarray] = {}
    data, store = loaded, loaded.artifacts
    cards, scores = {}, {}
    for finalist in promoted:
        trial = finalist.trial
        card = count_complexity(finalist.model, storage_dtype=finalist.storage)
        if finalist.int8 is not None:  # the converted program's own count, not the bound
            card = replace(card, param_bytes=finalist.int8.stored_bytes)
        if not card.fits(max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes):
            announce(f"trial {trial.number} skipped: its promoted network does not fit the budget "
                     f"({card.macs:,} MACs, {card.param_bytes:,} bytes)")
            continue
        cards[trial.number] = card
        if finalist.validation_correct is None:  # a retrained finalist: scored inside training
            finalist.validation = _validation(finalist, loaded)
        scores[trial.number] = FinalistScore(
            label=finalist.label, validation=finalist.validation,
            correct=finalist.validation_correct, macs=card.macs, param_bytes=card.param_bytes)
    if not scores:
        announce("no promoted finalist fits the budgets: nothing to recommend or test")
        return {}
    reference = next((t.number for t in seeds if t.number in scores), None) \
        if with_seed_plan else None
    # The recommendation is made on validation and stored before any test clip is read.
    chosen_one = recommend(scores, reference=reference, labels=data.validation.labels,
                           files=data.validation.files, classes=data.validation.classes)
    study.set_user_attr(RECOMMENDATION_ATTR, chosen_one.to_dict())
    for finalist in promoted:
        trial, label = finalist.trial, finalist.label
        if trial.number not in cards:
            continue
        card = cards[trial.number]
        # Selection is over; only now does the test list get looked at.
        test_logits = predict(finalist.scored, data.test.features,
                              precision=scoring_precision(finalist, loaded))
        test = evaluate(test_logits, data.test.labels, data.test.devices, files=data.test.files,
                        classes=data.test.classes)
        test_correct[trial.number] = test_logits.argmax(axis=1) == data.test.labels
        finalist.model.to("cpu")
        with scratch(studies) as folder:
            checkpoint = Path(folder) / f"trial-{trial.number}-finalist.pt"
            save_checkpoint(checkpoint, spec=finalist.spec,
                            state_dict=finalist.model.state_dict(),
                            metadata={"trial": trial.number, "stage": "finalist",
                                      "validation_macro_accuracy":
                                          finalist.validation.macro_accuracy,
                                      "test_macro_accuracy": test.macro_accuracy,
                                      "classes": list(data.test.classes)})
            complexity = Path(folder) / f"trial-{trial.number}-complexity.json"
            complexity.write_text(json.dumps(card.to_dict(), indent=2))
            checkpoint_id = upload_artifact(artifact_store=store, file_path=str(checkpoint),
                                            study_or_trial=study)
            int8_id = None
            if finalist.int8 is not None:
                program = Path(folder) / f"trial-{trial.number}-finalist-int8.pt2"
                finalist.int8.save(program)
                int8_id = upload_artifact(artifact_store=store, file_path=str(program),
                                          study_or_trial=study)
            complexity_id = upload_artifact(artifact_store=store, file_path=str(complexity),
                                            study_or_trial=study)
        record = {
            "trial": trial.number, "label": label, "epochs": finalist.epochs,
            "recommended": trial.number == chosen_one.trial,
            "never_predicted": {"validation": never_predicted(finalist.validation,
                                                              data.validation.classes),
                                "test": never_predicted(test, data.test.classes)},
            "promoted_by": "continue" if rungs else "retrain", "rungs": finalist.rungs,
            "budget": finalist.budget, "training_macs": finalist.training_macs,
            "validation": evaluation_attrs(finalist.validation),
            "test": evaluation_attrs(test), "macs": card.macs, "params": card.params,
            "param_bytes": card.param_bytes, "seconds": round(finalist.seconds, 1),
            "spec": finalist.spec.to_dict(), "checkpoint_artifact": checkpoint_id,
            "complexity_artifact": complexity_id, "storage": finalist.storage,
            **({"int8_artifact": int8_id} if int8_id else {}),
        }
        study.set_user_attr(f"{FINALIST_PREFIX}{trial.number}", record)
        announce(f"finalist trial {trial.number} ({label}): validation "
                 f"{_with_interval(finalist.validation)}, test {_with_interval(test)}, "
                 f"{card.macs / 1e6:.2f} M MACs, "
                 f"{card.param_bytes:,} B ({finalist.seconds:.0f} s)")
        results[trial.number] = record
    _compare_with_reference(study, results, test_correct, data.test, reference, announce)
    announce(chosen_one.headline())
    for line in chosen_one.notes():
        announce(line)
    for number, record in results.items():
        if record["never_predicted"]["test"]:
            announce(f"finalist trial {number} never predicts "
                     f"{', '.join(record['never_predicted']['test'])} on test")
    if settings.device_specific and results:
        _device_specific(study, results, promoted, resources=loaded, announce=announce,
                         recommended=chosen_one.trial)
    if kept_rungs is not None:  # the finalists are saved: the rungs that led to them are not needed
        kept_rungs.clear()
    return results


def _device_specific(study: optuna.Study, results: dict[int, dict[str, Any]],
                     promoted: list[Promoted], *, resources: TrialResources,
                     announce: Callable[[str], None], recommended: int) -> None:
    """The DCASE 2025 mode: device models for the recommended finalist (chosen on validation,
    the reference when no searched one beats it), their tuning searched on validation; then,
    read once, the test routed by device against the same finalist's general model. Each device
    model is a study artifact beside the finalist."""
    from asc_search.training.device_models import (
        known_and_unknown,
        routed_evaluation,
        search_device_tuning,
    )

    settings = resources.settings
    chosen = next(p for p in promoted if p.trial.number == recommended)
    number = chosen.trial.number
    announce(f"device-specific models for finalist trial {number}: "
             f"{settings.device_trials} tunings searched on validation")
    recipe = settings.base_recipe(len(resources.train)).with_(
        **chosen.trial.user_attrs.get("training", {}))
    found = search_device_tuning(chosen.model, train=resources.train,
                                 validation=resources.validation,
                                 teacher_logits=resources.teacher_logits, recipe=recipe,
                                 precision=resources.precision, trials=settings.device_trials,
                                 seed=number, announce=announce)
    test = routed_evaluation(found.models, chosen.model, resources.test,
                             precision=resources.precision)
    known = sorted(found.models)
    artifacts = {}
    with scratch(resources.studies) as folder:
        for device, model in found.models.items():
            path = Path(folder) / f"trial-{number}-device-{device}.pt"
            save_checkpoint(path, spec=chosen.spec, state_dict=model.state_dict(),
                            metadata={"trial": number, "stage": "device", "device": device,
                                      "classes": list(resources.train.classes)})
            artifacts[device] = upload_artifact(artifact_store=resources.artifacts,
                                                file_path=str(path), study_or_trial=study)
    general = results[number]["test"]
    record = {
        "tuning": asdict(found.tuning),
        "tried": found.tried, "devices": known, "artifacts": artifacts,
        "validation": evaluation_attrs(found.validation),
        "test": evaluation_attrs(test) | known_and_unknown(test.per_device, known),
        "general_test": {"macro": general["macro"], "macro_interval": general["macro_interval"],
                         **known_and_unknown(general["per_device"], known)},
    }
    results[number]["device_specific"] = record
    study.set_user_attr(f"{FINALIST_PREFIX}{number}", results[number])
    announce(f"finalist trial {number} with device models ({', '.join(known)}; unknown devices "
             f"use the general one): test {_with_interval(test)}, known "
             f"{100 * record['test']['known']:.1f} %, unknown "
             f"{100 * (record['test']['unknown'] or float('nan')):.1f} %; general model "
             f"{100 * general['macro']:.1f} %")


def _compare_with_reference(study: optuna.Study, results: dict[int, dict[str, Any]],
                            test_correct: dict[int, np.ndarray], test: Any,
                            reference: int | None, announce: Callable[[str], None]) -> None:
    """Each finalist's test accuracy minus the hand-made reference's (the best seed trial), with
    its paired bootstrap interval.

    Two finalists scored on the same clips are compared on the same resampled recordings: the
    interval of the difference is far tighter than the two accuracies' own intervals, which
    overlap even where one model is reliably better.
    """
    if reference is None or reference not in results:
        return
    label = results[reference]["label"]
    for number, record in results.items():
        if number == reference:
            continue
        paired = paired_difference(test.labels, test_correct[number], test_correct[reference],
                                   groups=recordings(test.files))
        record["test_vs_reference"] = {**{k: round(v, 4) for k, v in paired.items()},
                                       "reference": label, "reference_trial": reference}
        study.set_user_attr(f"{FINALIST_PREFIX}{number}", record)
        verdict = "shown by this data" if paired["low"] > 0 or paired["high"] < 0 else \
            "not shown apart by this data"
        announce(f"finalist trial {number} ({record['label']}) − {label} on test: "
                 f"{100 * paired['difference']:+.1f} points ({100 * paired['low']:+.1f} to "
                 f"{100 * paired['high']:+.1f}, paired 95 % bootstrap): {verdict}")
