"""The recommendation: the one model a run hands its user, chosen on validation before any test.

Promotion ends with finalists: the best searched trials and the hand-made reference (the best
seed trial by validation). A user should not have to pick among them, and must not pick on test.
So the product recommends one, by validation only, with a rule that respects the noise:

- the finalist with the best validation score is the candidate;
- a searched candidate is recommended over the reference only if its paired difference from
  the reference on the validation clips (bootstrap over recordings) has an interval above 0:
  a searched model that ties the hand-made one within the noise is not worth trusting over it,
  so the reference is recommended, or the searched one where it is smaller on both budgets;
- a finalist that never predicts some class on validation (a collapsed network: one of a run's
  finalists scored exactly 50.0 % on every device, never naming half of the classes) is
  recommended only when every finalist is.

The same comparison gives the run's **resolution**: half the width of that paired interval, the
smallest difference this validation list tells apart between two finalists here. A list whose
own interval on one model is wider than ``COARSE_POINTS`` either way cannot rank candidates that
differ by the few points searched candidates differ by, and the run says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from asc_search.training.evaluate import Evaluation, paired_difference, recordings

#: A validation list whose 95 % interval on one model is wider than this (points, either way)
#: cannot rank candidates: searched candidates differ by 1-3 points (benchmarks/README.md).
COARSE_POINTS = 5.0


@dataclass(frozen=True)
class FinalistScore:
    """What the recommendation reads of one finalist: all of it from validation."""

    label: str  # "searched", or the seed trial's name
    validation: Evaluation
    correct: np.ndarray  # per validation clip: right or wrong
    macs: int
    param_bytes: int


@dataclass(frozen=True)
class Recommendation:
    trial: int
    label: str
    why: str
    reference: int | None
    #: The best searched finalist's validation difference from the reference (fractions).
    versus_reference: dict[str, float] | None = None
    #: Half the paired interval's width, in points: the difference validation tells apart here.
    resolution_points: float | None = None
    #: Half the reference's (else the recommended model's) own validation interval, in points.
    interval_points: float | None = None
    coarse: bool = False
    #: Finalists that never predict some class on validation, with those classes.
    never_predicted: dict[int, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["never_predicted"] = {str(k): v for k, v in self.never_predicted.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recommendation:
        data = dict(data)
        data["never_predicted"] = {int(k): v for k, v in data.get("never_predicted", {}).items()}
        return cls(**data)

    def headline(self) -> str:
        """The one line ``run``, the report and ``export`` give."""
        return f"recommended: trial {self.trial} ({self.label}): {self.why}"

    def notes(self) -> list[str]:
        """Lines about what validation can and cannot tell here."""
        lines = []
        if self.interval_points is not None:
            told = (f"; between two finalists it tells apart about ±{self.resolution_points:.1f}"
                    " points (paired)" if self.resolution_points is not None else "")
            lines.append(f"validation resolution: a model's score is known to "
                         f"±{self.interval_points:.1f} points (95 %){told}")
        if self.coarse:
            lines.append(f"the validation list is too coarse to rank candidates (±"
                         f"{self.interval_points:.1f} points against the 1–3 points searched "
                         "candidates differ by): give a larger validation list, or treat the "
                         "ranking as a guess")
        for number, classes in sorted(self.never_predicted.items()):
            lines.append(f"finalist trial {number} never predicts {', '.join(classes)} on "
                         "validation: a collapsed network")
        return lines


def never_predicted(evaluation: Evaluation, classes: Sequence[str]) -> list[str]:
    """Classes with examples that the model never predicts (its confusion matrix's empty
    columns)."""
    confusion = evaluation.confusion
    present = confusion.sum(axis=1) > 0
    return [classes[k] for k in range(len(classes))
            if present[k] and confusion[:, k].sum() == 0]


def recommend(finalists: Mapping[int, FinalistScore], *, reference: int | None,
              labels: np.ndarray, files: Sequence[str],
              classes: Sequence[str]) -> Recommendation:
    """The recommended finalist (see the module docstring); ``reference`` is the hand-made
    finalist's trial number (None: the study has none), ``labels`` and ``files`` the validation
    list's."""
    if not finalists:
        raise ValueError("no finalists to recommend from")
    collapsed = {n: never_predicted(f.validation, classes) for n, f in finalists.items()}
    collapsed = {n: c for n, c in collapsed.items() if c}
    eligible = {n: f for n, f in finalists.items() if n not in collapsed} or dict(finalists)
    groups = recordings(files)

    def accuracy(number: int) -> float:
        return finalists[number].validation.macro_accuracy

    best = max(eligible, key=lambda n: (accuracy(n), -finalists[n].macs))
    own = reference if reference in finalists else best
    low, high = finalists[own].validation.macro_interval
    interval = None if np.isnan(low) else 100 * (high - low) / 2
    common = {"reference": reference if reference in finalists else None,
              "interval_points": interval,
              "coarse": interval is not None and interval > COARSE_POINTS,
              "never_predicted": collapsed}
    searched = [n for n in eligible if finalists[n].label == "searched"]
    if reference not in finalists:
        return Recommendation(trial=best, label=finalists[best].label, why=(
            f"best on validation ({100 * accuracy(best):.1f} %); the study has no hand-made "
            "reference to compare it with"), **common)
    challenger = max(searched, key=lambda n: (accuracy(n), -finalists[n].macs)) \
        if searched else None
    if challenger is None:
        anyone = any(f.label == "searched" for f in finalists.values())
        why = ("the hand-made reference; every searched finalist is collapsed" if anyone
               else "the hand-made reference; no searched finalist to compare")
        return Recommendation(trial=reference, label=finalists[reference].label, why=why,
                              **common)
    paired = paired_difference(labels, finalists[challenger].correct,
                               finalists[reference].correct, groups=groups)
    resolution = 100 * (paired["high"] - paired["low"]) / 2
    versus = {k: round(v, 4) for k, v in paired.items()}
    difference = (f"{100 * paired['difference']:+.1f} points on validation "
                  f"({100 * paired['low']:+.1f} to {100 * paired['high']:+.1f}, paired 95 %)")
    ref, chal = finalists[reference], finalists[challenger]
    if reference in collapsed and challenger not in collapsed:
        trial, why = challenger, f"the reference is collapsed; {difference}"
    elif paired["low"] > 0:
        trial, why = challenger, f"beats the hand-made reference {ref.label}: {difference}"
    elif chal.macs < ref.macs and chal.param_bytes < ref.param_bytes and paired["high"] > 0:
        trial, why = challenger, (f"ties the hand-made reference {ref.label} within the "
                                  f"validation noise ({difference}) and is smaller")
    else:
        trial, why = reference, (f"no searched finalist beats the hand-made reference by more "
                                 f"than the validation noise (trial {challenger}: {difference})")
    return Recommendation(trial=trial, label=finalists[trial].label, why=why,
                          versus_reference=versus, resolution_points=resolution, **common)
