"""Macro (class-wise) accuracy, per device with seen and unseen groups, per class, confusion matrix.

A validation list with simulated devices (``sim1``, …; ``training.device_responses``) counts them
as unseen, as the test's s4–s6.

DCASE ranks by macro accuracy; unseen devices s4–s6 show how much of a model's accuracy survives a
microphone it never heard, which is the point of the device-robustness augmentations.

Every final macro accuracy carries a 95 % bootstrap interval: on a few hundred clips a difference
of two points can be chance, and a number printed without its interval invites reading it as a
result. The bootstrap resamples whole recordings, not clips: the ten 1-s clips of a 10-s recording
(and its parallel copies on other devices) share a place and a moment, so they are right or wrong
together more often than independent clips would be, and a clip bootstrap would draw intervals
too narrow. Two models scored on the same clips are compared by a paired bootstrap of their
difference, which is far tighter than comparing two intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from asc_search.data.dataset import (
    DEVICES,
    SCENES,
    SEEN_DEVICES,
    SIMULATED_DEVICE_PREFIX,
    UNSEEN_DEVICES,
    recording_of,
)


@dataclass(frozen=True)
class Evaluation:
    n: int
    macro_accuracy: float
    accuracy: float
    per_class: dict[str, float]
    per_device: dict[str, float]
    seen: float | None
    unseen: float | None
    confusion: np.ndarray  # rows: true class, columns: predicted
    #: 95 % bootstrap interval over recordings (over clips when the files were not given);
    #: NaN when not asked for (intermediate scores during training).
    macro_interval: tuple[float, float] = (float("nan"), float("nan"))
    #: The same interval for each device's clips alone (empty when not asked for).
    per_device_interval: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "macro_accuracy": self.macro_accuracy, "accuracy": self.accuracy,
                "per_class": self.per_class, "per_device": self.per_device,
                "seen": self.seen, "unseen": self.unseen, "confusion": self.confusion.tolist(),
                "macro_interval": list(self.macro_interval),
                "per_device_interval": {k: list(v) for k, v in self.per_device_interval.items()}}


def evaluate(logits: np.ndarray, labels: np.ndarray, devices: Sequence[str], *,
             files: Sequence[str] | None = None, interval: bool = True,
             classes: Sequence[str] = SCENES) -> Evaluation:
    """Score ``logits`` against ``labels``; per-device figures are class-wise averages too.

    ``files`` (row-aligned) lets the interval resample whole recordings; ``interval=False``
    skips the bootstrap where only the figure is wanted (intermediate reports, training scores).
    ``classes`` names the logits' columns (the ``LabelledSet``'s, for a corpus of other scenes).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != len(classes):
        raise ValueError(f"{logits.shape} logits for {len(classes)} classes")
    predicted = logits.argmax(axis=1)
    labels = np.asarray(labels)
    devices_arr = np.asarray(devices)
    n_classes = len(classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {scene: _recall(confusion, k) for k, scene in enumerate(classes)
                 if confusion[k].sum() > 0}
    per_device = {}
    simulated = sorted({str(d) for d in devices_arr if str(d).startswith(SIMULATED_DEVICE_PREFIX)})
    for device in (*DEVICES, *simulated):
        mask = devices_arr == device
        if mask.any():
            per_device[device] = _macro(labels[mask], predicted[mask])
    seen = [per_device[d] for d in SEEN_DEVICES if d in per_device]
    unseen = [per_device[d] for d in (*UNSEEN_DEVICES, *simulated) if d in per_device]
    groups = None if files is None else recordings(files)
    correct = predicted == labels
    per_device_interval = {}
    if interval:
        for device in per_device:
            mask = devices_arr == device
            per_device_interval[device] = bootstrap_interval(
                labels[mask], correct[mask],
                groups=None if groups is None else [g for g, m in zip(groups, mask, strict=True) if m])
    return Evaluation(
        n=len(labels),
        macro_accuracy=float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        accuracy=float((predicted == labels).mean()) if len(labels) else float("nan"),
        per_class=per_class,
        per_device=per_device,
        seen=float(np.mean(seen)) if seen else None,
        unseen=float(np.mean(unseen)) if unseen else None,
        confusion=confusion,
        macro_interval=bootstrap_interval(labels, correct, groups=groups)
        if interval else (float("nan"), float("nan")),
        per_device_interval=per_device_interval,
    )


BOOTSTRAP_RESAMPLES = 1000
#: Resample weights held at once (resamples × groups): bounds memory on the full test list.
_CHUNK_CELLS = 2_000_000


def recordings(files: Sequence[str]) -> list[str]:
    """The recording of each file, the unit the bootstrap resamples."""
    return [recording_of(name) for name in files]


def bootstrap_macro(labels: np.ndarray, corrects: Sequence[np.ndarray], *,
                    groups: Sequence[str] | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> np.ndarray:
    """Macro accuracy of each of ``corrects`` (row-aligned right/wrong vectors of several models
    on the same clips) on ``resamples`` bootstrap draws: ``(resamples, len(corrects))``.

    A draw takes as many groups as there are, with replacement (every clip its own group when
    ``groups`` is None); all models see the same draws, which is what pairs them. Each group is
    reduced to its per-class counts first, so a draw is one weighted sum and the full test list
    costs no more memory than a chunk of weights. Classes absent from a draw are skipped.
    """
    labels = np.asarray(labels)
    codes = np.arange(len(labels)) if groups is None else \
        np.unique(np.asarray(groups), return_inverse=True)[1]
    n_groups = int(codes.max()) + 1
    classes = np.unique(labels)
    members = np.zeros((n_groups, len(classes)))
    np.add.at(members, (codes, np.searchsorted(classes, labels)), 1)
    hits = []
    for correct in corrects:
        counted = np.zeros((n_groups, len(classes)))
        np.add.at(counted, (codes, np.searchsorted(classes, labels)),
                  np.asarray(correct, dtype=float))
        hits.append(counted)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n_groups)
    out = np.empty((resamples, len(hits)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        weights = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=size)
        totals = weights @ members
        with np.errstate(invalid="ignore", divide="ignore"):
            for index, counted in enumerate(hits):
                recall = np.where(totals > 0, (weights @ counted) / totals, np.nan)
                out[start:start + size, index] = np.nanmean(recall, axis=1)
    return out


def bootstrap_interval(labels: np.ndarray, correct: np.ndarray, *, level: float = 0.95,
                       groups: Sequence[str] | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of macro accuracy over ``groups`` (clips when None)."""
    if len(labels) == 0:
        return (float("nan"), float("nan"))
    macro = bootstrap_macro(labels, [correct], groups=groups, resamples=resamples, seed=seed)
    return _percentiles(macro[:, 0], level)


def paired_difference(labels: np.ndarray, correct: np.ndarray, reference: np.ndarray, *,
                      groups: Sequence[str] | None = None, level: float = 0.95,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Macro accuracy of ``correct`` minus that of ``reference`` on the same clips, with its
    paired percentile bootstrap interval: a difference whose interval excludes 0 is one this
    data shows, whether or not the two accuracies' own intervals overlap."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan")}
    observed = _macro(labels, np.where(np.asarray(correct, bool), labels, -1)) - \
        _macro(labels, np.where(np.asarray(reference, bool), labels, -1))
    draws = bootstrap_macro(labels, [correct, reference], groups=groups, resamples=resamples,
                            seed=seed)
    low, high = _percentiles(draws[:, 0] - draws[:, 1], level)
    return {"difference": float(observed), "low": low, "high": high}


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return (float(low), float(high))


#: Student's t, 97.5th percentile, for 1–30 degrees of freedom (beyond: the normal 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_sd_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95 % Student-t interval of the mean over seeds."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return {"n": len(data), "mean": mean, "sd": float("nan"), "low": float("nan"),
                "high": float("nan")}
    sd = float(data.std(ddof=1))
    quantile = _T975[len(data) - 2] if len(data) - 1 <= len(_T975) else 1.96
    half = quantile * sd / float(np.sqrt(len(data)))
    return {"n": len(data), "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def _recall(confusion: np.ndarray, k: int) -> float:
    return float(confusion[k, k] / confusion[k].sum())


def _macro(labels: np.ndarray, predicted: np.ndarray) -> float:
    recalls = [float((predicted[labels == k] == k).mean()) for k in np.unique(labels)]
    return float(np.mean(recalls))


def evaluation_table(results: dict[str, Evaluation], *, title: str = "evaluation") -> Table:
    """One column per evaluated list (validation, test): macro accuracy, devices, classes."""
    table = Table("", *results, title=title)

    def row(label: str, values: list[float | None]) -> None:
        table.add_row(label, *("" if v is None else f"{100 * v:.2f}" for v in values))

    evaluations = list(results.values())
    row("macro accuracy %", [e.macro_accuracy for e in evaluations])
    table.add_row("  95 % interval", *(f"{100 * e.macro_interval[0]:.1f}–"
                                       f"{100 * e.macro_interval[1]:.1f}" for e in evaluations))
    row("seen devices", [e.seen for e in evaluations])
    row("unseen devices", [e.unseen for e in evaluations])
    for device in DEVICES:
        if any(device in e.per_device for e in evaluations):
            row(f"  device {device}", [e.per_device.get(device) for e in evaluations])
    for scene in dict.fromkeys(scene for e in evaluations for scene in e.per_class):
        row(f"  {scene}", [e.per_class.get(scene) for e in evaluations])
    table.add_row("clips", *(f"{e.n:,}" for e in evaluations))
    return table
