"""Promotion: the search's best feasible trials distilled again at full length, then tested.

Search trials train on a short proxy schedule and are ranked on the validation list only. The
best searched trials (Pareto-optimal and feasible, best validation accuracy first) are retrained
here with the same teachers on the longer promotion schedule, pruned by their plan, fine-tuned,
and only now evaluated on the test list as well. The best seed trial by validation (the DCASE
baseline or one of the seed's S1–S3) is promoted with them as the hand-made reference, so every
study reports the searched model against what a researcher would have built by hand, trained with
the same recipe, teachers and budget, and each finalist's test difference from it with a paired
bootstrap interval over recordings.

Optuna refuses to change a finished trial, so a finalist's results are a study user attribute
``finalist:<trial number>`` and its checkpoint and complexity card are study artifacts named after
the trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import upload_artifact

from asc_search.checkpoint import save_checkpoint
from asc_search.complexity import count_complexity
from asc_search.errors import AscSearchError
from asc_search.evaluate import Evaluation, evaluate, paired_difference, recordings
from asc_search.objective import evaluation_attrs, train_candidate, trial_candidate
from asc_search.storage import scratch
from asc_search.study import feasible, load_resources, ranked_trials, settings_of
from asc_search.train import predict

FINALIST_PREFIX = "finalist:"


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


def finalists(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Promoted trials' results, by trial number."""
    return {int(key.removeprefix(FINALIST_PREFIX)): value
            for key, value in study.user_attrs.items() if key.startswith(FINALIST_PREFIX)}


def distill(study: optuna.Study, *, top: int, pm: Any, cache: Path, studies: Path | None,
            device: str = "cpu", progress: bool = True, with_seed_plan: bool = True,
            announce: Callable[[str], None] = lambda line: None) -> dict[int, dict[str, Any]]:
    """Promote the study's finalists (see the module docstring); return their results."""
    settings = settings_of(study)
    chosen = choose_finalists(study, top=top, with_seed_plan=with_seed_plan)
    if not chosen:
        raise AscSearchError(f"study {study.study_name!r} has no feasible trained trial to promote")
    loaded = load_resources(settings, pm=pm, cache=cache, studies=studies, device=device,
                            progress=progress, with_test=True)
    space, precision, store = loaded.space, loaded.precision, loaded.artifacts
    data, teacher_logits = loaded, loaded.teacher_logits
    results = {}
    test_correct: dict[int, np.ndarray] = {}
    for trial in chosen:
        candidate = trial_candidate(space, trial.params, settings=settings, pm=pm,
                                    seed_trial="seed_trial" in trial.user_attrs)
        label = trial.user_attrs.get("seed_trial", "searched")
        announce(f"promoting trial {trial.number} ({label}): a budget of "
                 f"{settings.promote_epochs} epochs with KD, shared by its pruning plan")
        outcome = train_candidate(
            candidate, settings=settings, pm=pm, train=data.train, validation=data.validation,
            teacher_logits=teacher_logits, precision=precision, epochs=settings.promote_epochs,
            seed=0, progress=progress, parents=cache,
        )
        card = count_complexity(outcome.model, storage_dtype=settings.storage_dtype)
        if not card.fits(max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes):
            announce(f"trial {trial.number} skipped: its promoted network does not fit the budget "
                     f"({card.macs:,} MACs, {card.param_bytes:,} bytes)")
            continue
        # Selection is over; only now does the test list get looked at.
        test_logits = predict(outcome.model, data.test.features, precision=precision)
        test = evaluate(test_logits, data.test.labels, data.test.devices, files=data.test.files)
        test_correct[trial.number] = test_logits.argmax(axis=1) == data.test.labels
        outcome.model.to("cpu")
        with scratch(studies) as folder:
            checkpoint = Path(folder) / f"trial-{trial.number}-finalist.pt"
            save_checkpoint(checkpoint, spec=outcome.spec, state_dict=outcome.model.state_dict(),
                            metadata={"trial": trial.number, "stage": "finalist",
                                      "validation_macro_accuracy":
                                          outcome.validation.macro_accuracy,
                                      "test_macro_accuracy": test.macro_accuracy})
            complexity = Path(folder) / f"trial-{trial.number}-complexity.json"
            complexity.write_text(json.dumps(card.to_dict(), indent=2))
            checkpoint_id = upload_artifact(artifact_store=store, file_path=str(checkpoint),
                                            study_or_trial=study)
            complexity_id = upload_artifact(artifact_store=store, file_path=str(complexity),
                                            study_or_trial=study)
        record = {
            "trial": trial.number, "label": label, "epochs": settings.promote_epochs,
            "budget": outcome.budget.to_dict(), "training_macs": outcome.training_macs,
            "validation": evaluation_attrs(outcome.validation),
            "test": evaluation_attrs(test), "macs": card.macs, "params": card.params,
            "param_bytes": card.param_bytes, "seconds": round(outcome.seconds, 1),
            "spec": outcome.spec.to_dict(), "checkpoint_artifact": checkpoint_id,
            "complexity_artifact": complexity_id,
        }
        study.set_user_attr(f"{FINALIST_PREFIX}{trial.number}", record)
        announce(f"finalist trial {trial.number} ({label}): validation "
                 f"{_with_interval(outcome.validation)}, test {_with_interval(test)}, "
                 f"{card.macs / 1e6:.2f} M MACs, "
                 f"{card.param_bytes:,} B ({outcome.seconds:.0f} s)")
        results[trial.number] = record
    reference = next((n for n, r in results.items() if r["label"] != "searched"),
                     None) if with_seed_plan else None
    _compare_with_reference(study, results, test_correct, data.test, reference, announce)
    return results


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
