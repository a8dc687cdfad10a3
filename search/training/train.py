"""Training a network on cached log-mel features, with optional distillation from teacher logits.

This is where a search spends its compute, so the loop does nothing but gather a batch from the
cached features, augment it, and take a step: no audio, no spectrograms, no teacher forward
passes (teachers' ensemble logits are computed once and passed in). On an accelerator the
features, labels and teacher logits live on the device and the loop never waits for it
(``asc_search.training.batches``). On CPU it trains under bf16
autocast with channels-last tensors, which more than doubles throughput on this kind of machine; on
CUDA it uses the native bf16 (or fp16 with a gradient scaler) autocast path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asc_search.data.dataset import SCENES, TAU22Dataset
from asc_search.errors import AscSearchError
from asc_search.features.logmel import FeatureSet, FrontEnd, FrontEndSettings
from asc_search.progress import progress_bar
from asc_search.training.augment import augment
from asc_search.training.batches import DeviceBatches, to_device
from asc_search.training.device_responses import device_responses, eligible_rows
from asc_search.training.recipe import TrainingRecipe

log = logging.getLogger(__name__)
MIXUP_STREAM = 7  # derive_seed path of the mixup draws: apart from the batch order's


@dataclass(frozen=True)
class LabelledSet:
    """Cached features of a file list with their scene indices and devices, row-aligned."""

    files: tuple[str, ...]
    features: FeatureSet
    labels: np.ndarray  # indices into ``classes``
    devices: tuple[str, ...]
    #: The corpus's scene labels in output order (the ten DCASE scenes unless the data has others).
    classes: tuple[str, ...] = SCENES

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, rows: np.ndarray) -> LabelledSet:
        """The clips of ``rows`` (ascending), sharing the cached features."""
        return LabelledSet(files=tuple(self.files[r] for r in rows),
                           features=self.features.subset(rows), labels=self.labels[rows],
                           devices=tuple(self.devices[r] for r in rows), classes=self.classes)


def labelled_set(dataset: TAU22Dataset, features: FeatureSet, *,
                 classes: tuple[str, ...] | None = None) -> LabelledSet:
    """Attach labels and devices from ``dataset`` to the rows of ``features``; labels index the
    corpus's classes (``dataset.classes``) unless ``classes`` names the list to use."""
    classes = classes or dataset.classes
    index = {scene: k for k, scene in enumerate(classes)}
    clips = [dataset.clips[name] for name in features.files]
    try:
        labels = np.array([index[clip.scene] for clip in clips], dtype=np.int64)
    except KeyError as exc:
        raise AscSearchError(f"scene label {exc.args[0]!r} is not one of the "
                             f"{len(classes)} classes ({', '.join(classes)})") from exc
    return LabelledSet(files=features.files, features=features, labels=labels,
                       devices=tuple(clip.device for clip in clips), classes=classes)


@dataclass(frozen=True)
class Precision:
    """How tensors and autocast are set up on a device."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    scale_gradients: bool

    def autocast(self) -> AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


#: CPU features with native bf16 arithmetic (x86 AVX-512 BF16 or AMX, ARM BF16 or SVE BF16).
BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
#: Environment variables by which a user caps the instruction set oneDNN (PyTorch's CPU
#: convolutions) may use; the first is oneDNN's current name, the second its former one.
ONEDNN_ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
#: The caps under which oneDNN still has its native bf16 kernels (AVX-512 BF16 and above).
ONEDNN_BF16_ISAS = frozenset({
    "ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"})


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (``torch.cpu.get_capabilities``), and oneDNN is
    allowed to (no ``ONEDNN_MAX_CPU_ISA`` below AVX-512 BF16).

    Without it bf16 autocast is emulated: on a 2-core AMD EPYC with AVX2 only, a DCASE-baseline
    training step ran at 0.12× the speed of fp32 under bf16 autocast, and fp32 with channels-last
    at 1.61× (benchmarks/README.md, "Training precision"), where a CPU with AVX-512 BF16 runs
    bf16 about twice as fast as fp32. The cap matters as much as the hardware: on an AMX Xeon
    with ``ONEDNN_MAX_CPU_ISA=AVX2`` the same step ran at 0.11× of fp32 under bf16 autocast,
    while the CPU still reports AMX.
    """
    capabilities = torch.cpu.get_capabilities()
    if not any(bool(capabilities.get(name, False)) for name in BF16_CPU_FEATURES):
        return False
    limit = next((os.environ[name] for name in ONEDNN_ISA_LIMITS if os.environ.get(name)), None)
    return limit is None or limit.strip().upper() in ONEDNN_BF16_ISAS


def precision_for(device: str | torch.device = "cpu", *, mixed: bool = True) -> Precision:
    """Channels-last on CPU, with bf16 autocast where the CPU has native bf16 (fp32 otherwise:
    emulated bf16 is many times slower); native bf16 (fp16 + scaler if unsupported) on CUDA.
    ``mixed=False``: plain fp32, contiguous."""
    device = torch.device(device)
    if not mixed:
        return Precision(device, None, False, False)
    if device.type == "cuda":
        # Without the flag, V100 and T4 report bf16 by emulation, which runs many times slower
        # than fp16 there (issue 31): only a GPU that computes bf16 natively gets it.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision(device, torch.bfloat16, True, False)
        return Precision(device, torch.float16, True, True)
    return Precision(device, torch.bfloat16 if cpu_has_native_bf16() else None, True, False)


def warmup_cosine(step: int, *, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to zero."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """The published 2,000 warm-up steps, but never more than half the run.

    On the real 5 % split a 150-epoch run has 4,200 steps, so the published setting stands; the
    embedded corpus's 5 % split has 300, and an uncapped warm-up would never reach the peak rate.
    """
    return min(warmup_steps, total_steps // 2)


def kd_loss(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, *,
            temperature: float, weight: float) -> torch.Tensor:
    """(1 − w) · CE(student, label) + w · T² · KL(teacher/T ‖ student/T), as CP-JKU distil.

    CP-JKU take the KL term element-wise and average it over the batch *and* the classes
    (``KLDivLoss(reduction="none")(…).mean()``), not the per-clip sum over classes that
    ``reduction="batchmean"`` gives. The difference is a factor of the class count (10), and it
    sets how much the hard labels weigh at w = 0.98: about a sixth of the gradient with the
    mean, a fiftieth with the sum.
    """
    hard = F.cross_entropy(student, labels)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1),
                    F.log_softmax(teacher / temperature, dim=-1),
                    log_target=True, reduction="none").mean()
    return (1.0 - weight) * hard + weight * temperature**2 * soft


class WeightAverage:
    """An exponential moving average of a network's weights and buffers over its optimiser steps
    (``torch.optim.swa_utils.AveragedModel``), for ``TrainingRecipe.ema_decay``.

    Why: the last step's weights carry the noise of the last batches; two trainings of one
    candidate end several points apart (benchmarks/README, "Proxy fidelity"), and an average
    over the steps is the usual way to take some of that out. The decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run (a search's proxy:
    a few hundred steps) is not dominated by its first, untrained weights. Until the ramp reaches
    ``decay`` (n ≈ 890 for 0.99) the average spans about the last ninth of the steps taken,
    whatever ``decay`` is: in runs of a few hundred steps every decay above 0.96 is the same
    average. BatchNorm's running statistics are averaged with the weights; integer buffers (the
    batch counter) follow the network.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel

        self.decay = decay
        self.average = AveragedModel(model, multi_avg_fn=self._step, use_buffers=True)
        # Counted here, not read from the average's counter, which lives on the training
        # device: reading it every step would wait for a GPU at every step.
        self.updates = 0
        self._weight = 1.0

    def _step(self, averaged: list[torch.Tensor], current: list[torch.Tensor],
              n_averaged: torch.Tensor) -> None:
        """One update of a group of same-type tensors, in place (``multi_avg_fn``)."""
        for mean, now in zip(averaged, current, strict=True):
            if mean.is_floating_point():
                mean.lerp_(now, self._weight)
            else:
                mean.copy_(now)

    def update(self, model: nn.Module) -> None:
        """Fold the weights after this step into the average (the first step is copied)."""
        n = self.updates
        self._weight = 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
        self.average.update_parameters(model)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state)
        self.updates = int(self.average.n_averaged)

    def copy_into(self, model: nn.Module) -> None:
        """Put the averaged weights and buffers into ``model``, the network the run returns."""
        model.load_state_dict(self.average.module.state_dict())


@dataclass
class TrainHistory:
    """Per-epoch mean training loss, wall time and process (CPU) time of one ``fit``.

    A resumed fit's history starts with the epochs of the run it continues: ``restored_epochs``
    of them, whose cost this process did not pay. A benchmark that charges a run by its own
    process time adds ``restored_cpu_seconds`` to charge the whole run.
    """

    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    samples: int = 0
    restored_epochs: int = 0

    @property
    def restored_cpu_seconds(self) -> float:
        return float(sum(self.cpu_seconds[:self.restored_epochs]))


EpochCallback = Callable[[int, float], None]
StepCallback = Callable[[int], None]


def derive_seed(seed: int, *path: int) -> int:
    """A seed for one part of a run (a fine-tune after pruning step 3, say), derived from the
    run's seed: every ``fit`` of a trial then draws its own batch order and augmentations instead
    of repeating the first fit's."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0] >> 1)


def fit(
    model: nn.Module,
    train: LabelledSet,
    recipe: TrainingRecipe,
    *,
    teacher_logits: np.ndarray | None = None,
    precision: Precision | None = None,
    settings: FrontEnd | None = None,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    steps: int | None = None,
    progress: bool = True,
    label: str = "train",
    compile_model: bool = False,
    resume: Path | None = None,
) -> TrainHistory:
    """Train ``model`` in place on ``train`` with ``recipe``; distil when ``teacher_logits`` given.

    ``teacher_logits`` is row-aligned with ``train`` (the ensemble cache guarantees it).
    ``on_epoch(epoch, mean_loss)`` runs after every epoch; a search uses it to report intermediate
    values and may raise to stop the trial; ``on_step(step)`` runs after every optimiser step.
    ``steps`` trains for exactly that many optimiser steps instead of ``recipe.epochs`` epochs (the
    last epoch may be partial; warm-up and cosine span the steps): how a search gives every
    candidate the same budget however a pruning plan divides it. ``compile_model`` runs the step through
    ``torch.compile``: about 1.2× faster per step on this CPU but a minute of compilation per
    architecture, so it pays off only for long runs. ``resume`` names a file where the run's whole
    state (weights, optimiser, schedule, random generators, epoch) is written after every epoch:
    a run killed mid-way and started again with the same arguments continues from its last epoch
    and ends with the weights the uninterrupted run would have (``FitState``). The caller removes
    the file once it has kept the result. With ``recipe.ema_decay`` the returned network is the
    average (``WeightAverage``); ``on_epoch`` and ``on_step`` see the weights being trained.
    """
    import time

    recipe.validate()
    if len(train) < 2:
        raise AscSearchError("training needs at least 2 clips")
    if teacher_logits is not None and teacher_logits.shape[0] != len(train):
        raise AscSearchError(f"teacher logits have {teacher_logits.shape[0]} rows for {len(train)} clips")
    precision = precision or precision_for("cpu")
    settings = settings or FrontEndSettings()
    frames_per_second = settings.sample_rate / settings.hop_length
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    order_rng = np.random.default_rng(recipe.seed)
    mix_rng = np.random.default_rng(derive_seed(recipe.seed, MIXUP_STREAM))
    model.to(precision.device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate,
                                  weight_decay=recipe.weight_decay)
    average = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch if steps is None else steps
    if total < 1:
        raise AscSearchError(f"{label}: a training run needs at least one step")
    epochs = math.ceil(total / steps_per_epoch)
    warmup = effective_warmup(recipe.warmup_steps, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total=total, warmup=warmup))
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.scale_gradients)
    device = precision.device
    on_host = device.type == "cpu"
    batches = DeviceBatches(train.features, device)
    labels_all = to_device(train.labels, device)
    teachers_all = to_device(np.asarray(teacher_logits, dtype=np.float32), device) \
        if teacher_logits is not None else None
    responses, eligible = None, None
    if recipe.device_response_p > 0:
        responses = device_responses(recipe.device_responses, settings)
        eligible = eligible_rows(train.devices)
    history = TrainHistory()
    state = FitState(resume, identity={"recipe": recipe.to_dict(), "steps": total,
                                       "clips": len(train), "label": label,
                                       "kd": teacher_logits is not None}) if resume else None
    first = 1
    taken = 0
    if state is not None:
        restored = state.restore(model=model, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler, generator=generator,
                                 rngs={"order": order_rng, "mix": mix_rng}, history=history,
                                 average=average)
        if restored is not None:
            first, taken = restored[0] + 1, restored[1]
    step_model = torch.compile(model) if compile_model else model
    model.train()
    with progress_bar(label, total=total, enabled=progress) as advance:
        if taken:
            advance(taken)
        for epoch in range(first, epochs + 1):
            started, cpu_started, running, seen = time.perf_counter(), time.process_time(), 0.0, 0
            order = order_rng.permutation(len(train))
            # On an accelerator the loop never waits for the device: the epoch's order is sent
            # once, and the loss is summed and checked there, read back once per epoch.
            order_on_device = to_device(order, device)
            summed = torch.zeros((), dtype=torch.float64, device=device)
            finite = torch.ones((), dtype=torch.bool, device=device)
            for start in range(0, len(order), recipe.batch_size):
                if taken == total:
                    break
                taken += 1
                rows = order[start:start + recipe.batch_size]
                if len(rows) < 2:  # BatchNorm cannot train on one clip
                    advance(1)
                    if on_step is not None:
                        on_step(taken)
                    continue
                rows_on_device = order_on_device[start:start + recipe.batch_size]
                x = augment(batches(rows, rows_on_device), recipe, generator=generator,
                            frames_per_second=frames_per_second, silence=settings.silence,
                            log_scale=settings.log_scale, responses=responses,
                            eligible=None if eligible is None else eligible[torch.from_numpy(rows)])
                # Mixup: the batch blended with a shuffled copy of itself; the loss blends the
                # two clips' targets (labels and teacher logits) with the same weight.
                blend, partner = 1.0, None
                if recipe.mixup_alpha > 0:
                    blend = float(mix_rng.beta(recipe.mixup_alpha, recipe.mixup_alpha))
                    partner = mix_rng.permutation(len(rows))
                    x = blend * x + (1.0 - blend) * x[to_device(partner, device)]
                if precision.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with precision.autocast():
                    logits = step_model(x)
                logits = logits.float()
                loss = _loss(logits, rows_on_device, labels_all, teachers_all, recipe)
                if partner is not None:
                    loss = blend * loss + (1.0 - blend) * _loss(
                        logits, rows_on_device[to_device(partner, device)], labels_all,
                        teachers_all, recipe)
                if on_host and not torch.isfinite(loss):
                    raise _diverged(label, float(loss), epoch)
                finite &= torch.isfinite(loss)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if average is not None:
                    average.update(model)
                summed += loss.detach().double() * len(rows)
                seen += len(rows)
                advance(1)
                if on_step is not None:
                    on_step(taken)
            if not bool(finite):
                raise _diverged(label, float("nan"), epoch)
            running = float(summed)
            mean_loss = running / max(seen, 1)
            history.losses.append(mean_loss)
            history.seconds.append(time.perf_counter() - started)
            history.cpu_seconds.append(time.process_time() - cpu_started)
            history.samples += seen
            advance.describe(f"{label} epoch {epoch}/{epochs} loss {mean_loss:.3f}")
            if state is not None and epoch < epochs:
                state.save(epoch=epoch, taken=taken, model=model, optimizer=optimizer,
                           scheduler=scheduler, scaler=scaler, generator=generator,
                           rngs={"order": order_rng, "mix": mix_rng}, history=history,
                           average=average)
            if on_epoch is not None:
                on_epoch(epoch, mean_loss)
    if average is not None:
        average.copy_into(model)
    model.eval()
    return history


def _loss(logits: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor,
          teachers: torch.Tensor | None, recipe: TrainingRecipe) -> torch.Tensor:
    """Cross-entropy against the rows' labels, or the KD loss when there are teacher logits
    (``rows``, labels and logits all on the training device)."""
    y = labels[rows]
    if teachers is None:
        return F.cross_entropy(logits, y)
    return kd_loss(logits, y, teachers[rows], temperature=recipe.kd_temperature,
                   weight=recipe.kd_weight)


def _diverged(label: str, loss: float, epoch: int) -> AscSearchError:
    return AscSearchError(f"{label}: loss became {loss} at epoch {epoch}; lower the learning rate")


class FitState:
    """A ``fit``'s state after an epoch, in one tensor-only file (written whole, then renamed).

    It holds what the next epoch depends on: weights, optimiser moments, the schedule's step,
    the gradient scaler, the augmentation generator, torch's global generators (CPU and every
    GPU's) and the numpy generators (batch order, mixup), so continuing from it is the same run. ``identity``
    (recipe, steps, clips, KD) must match, or the file is another run's and is ignored.
    """

    def __init__(self, path: Path, *, identity: dict[str, Any]) -> None:
        self.path = path
        self.identity = json.dumps(identity, sort_keys=True, default=str)

    def save(self, *, epoch: int, taken: int, model: nn.Module, optimizer: Any, scheduler: Any,
             scaler: Any, generator: torch.Generator, rngs: dict[str, np.random.Generator],
             history: TrainHistory, average: WeightAverage | None = None) -> None:
        payload = {
            "identity": self.identity, "epoch": epoch, "taken": taken,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            # Every GPU's generator too (none on a CPU machine): dropout and any CUDA-side
            # draw would otherwise restart, and a resumed GPU run would not be the same run.
            "cuda_rng": list(torch.cuda.get_rng_state_all()),
            "rngs": json.dumps({name: rng.bit_generator.state for name, rng in rngs.items()}),
            "losses": list(history.losses), "seconds": list(history.seconds),
            "cpu_seconds": list(history.cpu_seconds), "samples": history.samples,
        }
        if average is not None:
            payload["average"] = average.state_dict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(payload, temporary)
        os.replace(temporary, self.path)

    def restore(self, *, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
                generator: torch.Generator, rngs: dict[str, np.random.Generator],
                history: TrainHistory,
                average: WeightAverage | None = None) -> tuple[int, int] | None:
        """Load the saved state into these objects; (epoch, steps taken), or None to start."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            if payload["identity"] != self.identity:
                raise ValueError("it belongs to another run")
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            scaler.load_state_dict(payload["scaler"])
            generator.set_state(payload["generator"])
            torch.set_rng_state(payload["torch_rng"])
            if payload.get("cuda_rng"):  # files of CPU runs, and older files, hold none
                torch.cuda.set_rng_state_all(payload["cuda_rng"])
            for name, saved in json.loads(payload["rngs"]).items():
                rngs[name].bit_generator.state = saved
            if average is not None:  # the identity's recipe says whether the file holds one
                average.load_state_dict(payload["average"])
        except (OSError, RuntimeError, ValueError, KeyError, TypeError,
                pickle.UnpicklingError) as exc:
            log.warning("resume file %s is unusable (%s); training from the start",
                        self.path, exc)
            return None
        history.losses[:] = payload["losses"]
        history.seconds[:] = payload["seconds"]
        # Files written before CPU time was kept: a single-thread run's wall time stands in.
        history.cpu_seconds[:] = payload.get("cpu_seconds", payload["seconds"])
        history.samples = int(payload["samples"])
        history.restored_epochs = len(history.losses)
        log.info("resuming %s after epoch %d", self.path.name, payload["epoch"])
        return int(payload["epoch"]), int(payload["taken"])


@torch.no_grad()
def predict(model: nn.Module, features: FeatureSet, *, precision: Precision | None = None,
            batch_size: int = 512) -> np.ndarray:
    """Logits (N, classes) for every row of ``features``, in eval mode, as float32."""
    precision = precision or precision_for("cpu")
    model.eval().to(precision.device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    outputs = []
    for start in range(0, len(features), batch_size):
        x = features.batch(np.arange(start, min(start + batch_size, len(features))))
        x = x.to(precision.device)
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs).numpy()
