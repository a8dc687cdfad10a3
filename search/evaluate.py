"""Macro (class-wise) accuracy, per device with seen and unseen groups, per class, confusion matrix.

DCASE ranks by macro accuracy; unseen devices s4–s6 show how much of a model's accuracy survives a
microphone it never heard, which is the point of the device-robustness augmentations.

Every macro accuracy carries a 95 % bootstrap interval over clips: on a few hundred clips a
difference of two points can be chance, and a number printed without its interval invites reading
it as a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table

from asc_search.dataset import DEVICES, SCENES, SEEN_DEVICES, UNSEEN_DEVICES


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
    macro_interval: tuple[float, float] = (float("nan"), float("nan"))  # 95 % bootstrap

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "macro_accuracy": self.macro_accuracy, "accuracy": self.accuracy,
                "per_class": self.per_class, "per_device": self.per_device,
                "seen": self.seen, "unseen": self.unseen, "confusion": self.confusion.tolist(),
                "macro_interval": list(self.macro_interval)}


def evaluate(logits: np.ndarray, labels: np.ndarray, devices: Sequence[str]) -> Evaluation:
    """Score ``logits`` against ``labels``; per-device figures are class-wise averages too."""
    predicted = np.asarray(logits).argmax(axis=1)
    labels = np.asarray(labels)
    devices_arr = np.asarray(devices)
    n_classes = len(SCENES)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {scene: _recall(confusion, k) for k, scene in enumerate(SCENES)
                 if confusion[k].sum() > 0}
    per_device = {}
    for device in DEVICES:
        mask = devices_arr == device
        if mask.any():
            per_device[device] = _macro(labels[mask], predicted[mask])
    seen = [per_device[d] for d in SEEN_DEVICES if d in per_device]
    unseen = [per_device[d] for d in UNSEEN_DEVICES if d in per_device]
    return Evaluation(
        n=len(labels),
        macro_accuracy=float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        accuracy=float((predicted == labels).mean()) if len(labels) else float("nan"),
        per_class=per_class,
        per_device=per_device,
        seen=float(np.mean(seen)) if seen else None,
        unseen=float(np.mean(unseen)) if unseen else None,
        confusion=confusion,
        macro_interval=bootstrap_interval(labels, predicted == labels),
    )


BOOTSTRAP_RESAMPLES = 1000


def bootstrap_interval(labels: np.ndarray, correct: np.ndarray, *, level: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of macro accuracy: clips drawn with replacement, the mean
    of per-class recalls recomputed on each draw (classes absent from a draw are skipped)."""
    labels, correct = np.asarray(labels), np.asarray(correct, dtype=bool)
    if len(labels) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(resamples, len(labels)))
    drawn_labels, drawn_correct = labels[draws], correct[draws]
    recalls = []
    for k in np.unique(labels):
        members = drawn_labels == k
        count = members.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(count > 0, (members & drawn_correct).sum(axis=1) / count,
                                    np.nan))
    macro = np.nanmean(np.stack(recalls), axis=0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(macro, [tail, 100 - tail])
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
    for scene in SCENES:
        row(f"  {scene}", [e.per_class.get(scene) for e in evaluations])
    table.add_row("clips", *(f"{e.n:,}" for e in evaluations))
    return table
