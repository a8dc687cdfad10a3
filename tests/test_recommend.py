"""The recommendation: one model, chosen on validation, that respects the validation noise."""

from __future__ import annotations

import numpy as np
import pytest

from asc_search.data.dataset import SCENES
from asc_search.study.recommend import (
    COARSE_POINTS,
    FinalistScore,
    Recommendation,
    never_predicted,
    recommend,
)
from asc_search.training.evaluate import evaluate


def _validation(n_recordings: int, clips: int = 5) -> tuple[np.ndarray, list[str], list[str]]:
    """Labels, files and devices of a validation list: ``clips`` 1-s clips per recording."""
    labels, files = [], []
    for r in range(n_recordings):
        scene = SCENES[r % len(SCENES)]
        for c in range(clips):
            labels.append(r % len(SCENES))
            files.append(f"audio/{scene}-city-{r}-{100 * r}-{c}-a.wav")
    return np.array(labels), files, ["a"] * len(files)


def _finalist(label: str, labels: np.ndarray, files: list[str], devices: list[str],
              accuracy: float, *, seed: int, macs: int = 29_000_000,
              param_bytes: int = 120_000, never: tuple[int, ...] = ()) -> FinalistScore:
    """A finalist right on about ``accuracy`` of the recordings (whole recordings right or
    wrong), never predicting the classes ``never``."""
    rng = np.random.default_rng(seed)
    n_rec = len(labels) // 5
    right = np.repeat(rng.random(n_rec) < accuracy, 5)
    predicted = np.where(right, labels, (labels + 1) % len(SCENES))
    for k in never:
        predicted[predicted == k] = (k + 1) % len(SCENES)
    logits = np.eye(len(SCENES))[predicted]
    result = evaluate(logits, labels, devices, files=files)
    return FinalistScore(label=label, validation=result, correct=predicted == labels,
                         macs=macs, param_bytes=param_bytes)


@pytest.fixture(scope="module")
def validation():
    return _validation(480)


def _recommend(finalists, validation, reference=0):
    labels, files, _ = validation
    return recommend(finalists, reference=reference, labels=labels, files=files, classes=SCENES)


def test_a_searched_finalist_shown_better_on_validation_is_recommended(validation) -> None:
    chosen = _recommend({0: _finalist("dcase-baseline", *validation, 0.50, seed=0),
                         7: _finalist("searched", *validation, 0.65, seed=1)}, validation)
    assert chosen.trial == 7 and "beats the hand-made reference dcase-baseline" in chosen.why
    assert chosen.versus_reference["low"] > 0
    assert chosen.resolution_points > 0 and chosen.interval_points < COARSE_POINTS
    assert not chosen.coarse
    assert chosen.headline().startswith("recommended: trial 7 (searched)")
    assert Recommendation.from_dict(chosen.to_dict()) == chosen


def test_a_tie_within_the_noise_recommends_the_reference(validation) -> None:
    reference = _finalist("seed-S1", *validation, 0.55, seed=0)
    # The same recordings right, plus a handful: higher on validation, not shown better.
    tied = FinalistScore(label="searched", validation=reference.validation,
                         correct=reference.correct.copy(), macs=29_500_000,
                         param_bytes=125_000)
    labels, files, devices = validation
    extra = tied.correct.copy()
    extra[np.flatnonzero(~extra)[:5]] = True
    logits = np.eye(len(SCENES))[np.where(extra, labels, (labels + 1) % len(SCENES))]
    tied = FinalistScore(label="searched", validation=evaluate(logits, labels, devices,
                                                               files=files),
                         correct=extra, macs=29_500_000, param_bytes=125_000)
    assert tied.validation.macro_accuracy > reference.validation.macro_accuracy
    chosen = _recommend({0: reference, 3: tied}, validation)
    assert chosen.trial == 0 and "no searched finalist beats" in chosen.why
    assert chosen.versus_reference["low"] <= 0 < chosen.versus_reference["high"]
    # The same tie from a smaller network: as good within the noise and cheaper.
    smaller = FinalistScore(label="searched", validation=tied.validation, correct=tied.correct,
                            macs=20_000_000, param_bytes=90_000)
    chosen = _recommend({0: reference, 3: smaller}, validation)
    assert chosen.trial == 3 and "is smaller" in chosen.why


def test_a_collapsed_finalist_is_flagged_by_class_and_not_recommended(validation) -> None:
    collapsed = _finalist("searched", *validation, 0.9, seed=1, never=(4, 9))
    assert never_predicted(collapsed.validation, SCENES) == [SCENES[4], SCENES[9]]
    chosen = _recommend({0: _finalist("dcase-baseline", *validation, 0.5, seed=0),
                         5: collapsed}, validation)
    assert chosen.trial == 0 and chosen.never_predicted == {5: [SCENES[4], SCENES[9]]}
    assert "every searched finalist is collapsed" in chosen.why
    assert any("never predicts park, tram" in line for line in chosen.notes())


def test_a_tiny_validation_list_is_called_too_coarse() -> None:
    small = _validation(12)  # 60 clips: one recording moves a score by 8 points
    chosen = _recommend({0: _finalist("seed-S3", *small, 0.5, seed=0),
                         2: _finalist("searched", *small, 0.6, seed=1)}, small)
    assert chosen.coarse and chosen.interval_points > COARSE_POINTS
    assert any("too coarse to rank candidates" in line for line in chosen.notes())


def test_without_a_reference_the_best_on_validation_is_recommended(validation) -> None:
    chosen = _recommend({1: _finalist("searched", *validation, 0.5, seed=0),
                         2: _finalist("searched", *validation, 0.6, seed=1)}, validation,
                        reference=None)
    assert chosen.trial == 2 and chosen.reference is None and "no hand-made reference" in chosen.why
