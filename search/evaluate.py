"""Macro (class-wise) accuracy, per device with seen and unseen groups, per class, confusion matrix.

DCASE ranks by macro accuracy; unseen devices s4–s6 show how much of a model's accuracy survives a
microphone it never heard, which is the point of the device-robustness augmentations.
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

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "macro_accuracy": self.macro_accuracy, "accuracy": self.accuracy,
                "per_class": self.per_class, "per_device": self.per_device,
                "seen": self.seen, "unseen": self.unseen, "confusion": self.confusion.tolist()}


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
    )


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
    row("seen devices", [e.seen for e in evaluations])
    row("unseen devices", [e.unseen for e in evaluations])
    for device in DEVICES:
        if any(device in e.per_device for e in evaluations):
            row(f"  device {device}", [e.per_device.get(device) for e in evaluations])
    for scene in SCENES:
        row(f"  {scene}", [e.per_class.get(scene) for e in evaluations])
    table.add_row("clips", *(f"{e.n:,}" for e in evaluations))
    return table
