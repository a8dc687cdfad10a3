"""Device-specific models (DCASE 2025): the general network fine-tuned on each known device's clips.

DCASE 2025 Task 1 gives the recording device at inference time, so a submission may run one
model per device it knows; a device it has no model for (unseen in training) gets the general
model. The task's baseline fine-tunes the general model on each training device's clips and
gains about a point (50.7 → 51.9 % on the development set). Here:

- a device model starts from the general network's weights and trains with KD from the same
  teachers' logits on that device's clips of the split only (``fine_tune_devices``);
- how it trains is a ``DeviceTuning``: epochs, learning rate, and which layers learn (``all``,
  ``last_stage``: the last stage and the head, or ``head``). Frozen layers keep their weights;
  their BatchNorm statistics follow the device's clips, which is itself a known device
  adaptation. The settings are searched (``search_device_tuning``, an Optuna study per
  network) and chosen on validation, routed by device as the test will be;
- every device model is the general network's architecture, so each fits the budgets on its own,
  as the 2025 rules count them (each model that may run on a device is counted alone);
- evaluation routes each clip by its device id (``routed_logits``); the report keeps the 2025
  task's figures: overall, known (devices with a model of their own), unknown, and per device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
from torch import nn

from asc_search.errors import AscSearchError
from asc_search.training.evaluate import Evaluation, evaluate
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision, derive_seed, fit, predict

LAYERS = ("all", "last_stage", "head")
#: Fewer training clips than this on a device: no model of its own (the general one serves it).
MIN_DEVICE_CLIPS = 8


@dataclass(frozen=True)
class DeviceTuning:
    """How each device model is fine-tuned from the general one."""

    epochs: int = 8
    learning_rate: float = 0.001
    layers: str = "all"

    def validate(self) -> None:
        if self.epochs < 1 or self.learning_rate <= 0 or self.layers not in LAYERS:
            raise AscSearchError(f"device tuning {self}: epochs ≥ 1, a positive learning rate, "
                                 f"layers one of {', '.join(LAYERS)}")


def learnable(model: nn.Module, layers: str) -> None:
    """Let only ``layers`` learn: all, the last stage and the head, or the head. Networks
    without a ``stem``/``stages``/``head`` layout learn everywhere."""
    children = dict(model.named_children())
    if layers == "all" or not {"stages", "head"} <= set(children):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    chosen = [children["head"]]
    if layers == "last_stage":
        chosen.append(list(children["stages"].children())[-1])
    for module in chosen:
        for parameter in module.parameters():
            parameter.requires_grad_(True)


def fine_tune_devices(general: nn.Module, *, train: LabelledSet, teacher_logits: np.ndarray | None,
                      recipe: TrainingRecipe, tuning: DeviceTuning, precision: Precision,
                      seed: int = 0, progress: bool = False) -> dict[str, nn.Module]:
    """One model per device of ``train`` with at least ``MIN_DEVICE_CLIPS`` clips, each the
    general network fine-tuned on that device's clips alone."""
    tuning.validate()
    models: dict[str, nn.Module] = {}
    devices = np.asarray(train.devices)
    for index, device in enumerate(sorted(set(train.devices))):
        rows = np.flatnonzero(devices == device)
        if len(rows) < MIN_DEVICE_CLIPS:
            continue
        model = copy.deepcopy(general).to("cpu")
        learnable(model, tuning.layers)
        clips = train.subset(rows)
        fit(model, clips, recipe.with_(epochs=tuning.epochs, learning_rate=tuning.learning_rate,
                                       warmup_steps=0, batch_size=min(recipe.batch_size,
                                                                      max(2, len(rows) // 4)),
                                       seed=derive_seed(seed, index)),
            teacher_logits=None if teacher_logits is None else teacher_logits[rows],
            precision=precision, progress=progress, label=f"device {device}")
        learnable(model, "all")
        models[device] = model.to("cpu")
    return models


def routed_logits(models: dict[str, nn.Module], general: nn.Module, labelled: LabelledSet, *,
                  precision: Precision) -> np.ndarray:
    """Each clip's logits from its device's model, or from the general one where its device
    has none (an unknown device)."""
    devices = np.asarray(labelled.devices)
    out = np.zeros((len(labelled), len(labelled.classes)), dtype=np.float32)
    owners = [(device, models[device]) for device in models] + [
        (None, general)]  # the general network takes every clip no device model took
    for device, model in owners:
        rows = np.flatnonzero(devices == device) if device is not None else \
            np.flatnonzero(~np.isin(devices, list(models)))
        if len(rows):
            out[rows] = predict(model, labelled.features.subset(rows), precision=precision)
            model.to("cpu")
    return out


def routed_evaluation(models: dict[str, nn.Module], general: nn.Module, labelled: LabelledSet, *,
                      precision: Precision, interval: bool = True) -> Evaluation:
    return evaluate(routed_logits(models, general, labelled, precision=precision),
                    labelled.labels, labelled.devices, files=labelled.files, interval=interval,
                    classes=labelled.classes)


def known_and_unknown(per_device: Mapping[str, float], known: Sequence[str]
                      ) -> dict[str, float | None]:
    """The 2025 task's split of per-device scores (an ``Evaluation``'s or a stored one's):
    the mean over devices with a model of their own, and over the rest."""
    def mean(devices: list[str]) -> float | None:
        return float(np.mean([per_device[d] for d in devices])) if devices else None

    return {"known": mean([d for d in per_device if d in known]),
            "unknown": mean([d for d in per_device if d not in known])}


@dataclass
class DeviceSearch:
    """The chosen tuning, its device models and its routed validation score, with every tried
    tuning's score (in order)."""

    tuning: DeviceTuning
    models: dict[str, nn.Module]
    validation: Evaluation
    tried: list[dict[str, Any]]


def search_device_tuning(general: nn.Module, *, train: LabelledSet, validation: LabelledSet,
                         teacher_logits: np.ndarray | None, recipe: TrainingRecipe,
                         precision: Precision, trials: int = 6, seed: int = 0,
                         max_epochs: int = 32,
                         announce: Callable[[str], None] = lambda line: None) -> DeviceSearch:
    """Search ``trials`` tunings with TPE (the first is the default ``DeviceTuning``), each
    scored by the routed validation accuracy of its device models; keep the best."""
    if trials < 1:
        raise AscSearchError("device tuning needs at least one trial")
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(asdict(DeviceTuning()))
    best: DeviceSearch | None = None
    tried: list[dict[str, Any]] = []
    for _ in range(trials):
        trial = study.ask()
        tuning = DeviceTuning(epochs=trial.suggest_int("epochs", 2, max_epochs, log=True),
                              learning_rate=trial.suggest_float("learning_rate", 1e-4, 5e-3,
                                                                log=True),
                              layers=trial.suggest_categorical("layers", list(LAYERS)))
        models = fine_tune_devices(general, train=train, teacher_logits=teacher_logits,
                                   recipe=recipe, tuning=tuning, precision=precision,
                                   seed=derive_seed(seed, trial.number))
        score = routed_evaluation(models, general, validation, precision=precision,
                                  interval=False)
        study.tell(trial, score.macro_accuracy)
        tried.append({**asdict(tuning), "validation": round(score.macro_accuracy, 4)})
        announce(f"device tuning {trial.number}: {tuning.epochs} epochs, lr "
                 f"{tuning.learning_rate:.2g}, {tuning.layers}: routed validation "
                 f"{100 * score.macro_accuracy:.1f} %")
        if best is None or score.macro_accuracy > best.validation.macro_accuracy:
            best = DeviceSearch(tuning, models, score, tried)
    assert best is not None
    best.validation = routed_evaluation(best.models, general, validation, precision=precision)
    return best
