"""What a teacher set knows: all that distillation can pass on to a student.

KD gives a student only what its teachers know beyond it. Two numbers show that, and every place
that fits teachers reports both (``asc-search teachers fit``, ``benchmarks/kd_gain.py``):

- agreement with the labels on the training clips. At 100 % the teacher has memorised the split,
  and its soft labels are the hard labels again. On the embedded corpus, 150-epoch teachers agree
  100 % and cost their students 2–3 points; the 20-epoch teacher agrees 98.6 % and added 2.4
  points over six seeds (88 % and 3.4 points with device responses, the default since stop 28);
  the same teacher at 40 epochs agrees 100 % and gave 2.5 fewer;
- macro accuracy on validation, with its interval. A teacher below the student there can act at
  most as a regulariser.

Validation needs the teacher's model, so it is scored only for a teacher fitted now. A cache hit
(the cache keeps logits alone) or a ``logits_file`` teacher reports agreement alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pluggy

from asc_search.features.experiment import SplitData
from asc_search.teachers.ensemble import (
    EnsembleLogits,
    TeacherFit,
    combine_logits,
    ensemble_logits,
)
from asc_search.training.evaluate import Evaluation, evaluate
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision

#: The name of the row for the whole ensemble, after one row per teacher.
ENSEMBLE_ROW = "ensemble"


@dataclass(frozen=True)
class TeacherQuality:
    name: str  # the teacher as named (``wide_cp_mobile``, ``passt=PATH``), or ``ensemble``
    #: Macro accuracy of its logits against the training labels (out of fold with folds > 1).
    train_agreement: float
    #: Validation with its 95 % interval; None for a teacher not fitted now (see the docstring).
    validation: Evaluation | None


@dataclass(frozen=True)
class ScoredEnsemble:
    ensemble: EnsembleLogits
    qualities: list[TeacherQuality]  # one per teacher fitted or loaded, then the ensemble's


def fit_scored_ensemble(split: SplitData, *, teacher_names: Sequence[str],
                        pm: pluggy.PluginManager, cache_dir: Path, recipe: TrainingRecipe,
                        precision: Precision, mode: str = "mean_logits", progress: bool = True,
                        folds: int = 1) -> ScoredEnsemble:
    """Fit (or load) the ensemble on ``split``'s training clips and score what it knows."""
    qualities: list[TeacherQuality] = []
    validation_logits: list[np.ndarray] = []

    def scored(name: str, fitted: TeacherFit) -> None:
        validation = None
        if fitted.model is not None:
            logits = fitted.predict(split.validation.features, precision=precision)
            validation_logits.append(logits)
            validation = _validation(split, logits)
        qualities.append(TeacherQuality(name, label_agreement(split.train, fitted.logits),
                                        validation))

    ensemble = ensemble_logits(split.train, teacher_names=teacher_names, pm=pm,
                               cache_dir=cache_dir, recipe=recipe, precision=precision,
                               mode=mode, progress=progress, on_teacher=scored, folds=folds)
    # The ensemble's validation score needs every member's model, not the cached logits.
    together = (_validation(split, combine_logits(validation_logits, mode))
                if qualities and len(validation_logits) == len(qualities) else None)
    qualities.append(TeacherQuality(ENSEMBLE_ROW, label_agreement(split.train, ensemble.logits),
                                    together))
    return ScoredEnsemble(ensemble, qualities)


#: In-fold agreement with the training labels from which a teacher set has memorised them.
MEMORISED_AGREEMENT = 0.999


def label_agreement(train: LabelledSet, logits: np.ndarray) -> float:
    """Macro accuracy of a teacher set's logits against the training labels."""
    return evaluate(logits, train.labels, train.devices, interval=False,
                    classes=train.classes).macro_accuracy


def memorised_note(agreement: float, *, folds: int = 1) -> str | None:
    """A warning when in-fold teachers agree with every training label, else None.

    Such teachers hand the student its hard labels back, and at the recipe's KD weight of 0.98
    those replace the labels with nothing added: on the embedded corpus every memorising set cost
    its students 2–3 points against the 20-epoch default (``benchmarks/kd_gain.py``). Out of fold
    (``folds`` > 1), full agreement is knowledge, not memory, and gets no warning.
    """
    if folds > 1 or agreement < MEMORISED_AGREEMENT:
        return None
    return (f"note: the teachers agree with {100 * agreement:.1f} % of the training labels: they "
            "have memorised the split, so their soft labels are its hard labels again and KD "
            "can cost the students points; fit them shorter (--teacher-epochs, default 20) or "
            "out of fold (--teacher-folds)")


def _validation(split: SplitData, logits: np.ndarray) -> Evaluation:
    return evaluate(logits, split.validation.labels, split.validation.devices,
                    files=split.validation.files, classes=split.validation.classes)
