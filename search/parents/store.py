"""Parents: the wide networks pruning plans start from, trained once and shared by every trial.

The seed's method is "train wide, prune, distil", and many plans start from the same wide network
(S2 and S3 both prune the seed's 96-wide SSCP-Mobile). Training that network is most of a plan's
compute: two thirds of its steps (``asc_search.study.budget`` gives every pruned plan of a budget the
same wide steps), each about nine times the cost of a step of the 32-wide result. So a parent is
trained once and kept in the cache folder beside the teacher logits, under a key of everything
that shapes its weights: the wide spec, the recipe and its length in steps, the seed, the
training clips, the teacher logits it distils from and the precision. Every later trial, worker
or promotion that prunes from the same parent loads it instead of training it again.

A parent is a tensor-only checkpoint (``asc_search.training.checkpoint``), written to a temporary file and
renamed into place, so workers sharing a cache folder never read half a file. Training it holds a
lock file beside it (``filelock``, an OS lock that dies with its process), so of several workers
that want the same parent at once one trains it and the others wait and load it: before the lock,
two workers starting S2 and S3 together trained the 96-wide parent twice. A parent file
that does not load (truncated, tampered, not ours) is reported and trained again, never unpickled.
While it trains, its whole fit state is kept after every epoch in ``<key>.pt.resume``: a parent
cut short (a killed worker, a session that ended) continues from its last epoch the next time it
is asked for, and ends with the weights an uninterrupted fit gives.
Parents are trained with the study's parent seed rather than the trial's, or no two trials would
share one; the pruning steps and fine-tunes after it draw the trial's own seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pluggy
import torch
from filelock import FileLock
from torch import nn

from asc_search.architecture import ArchSpec, build_model
from asc_search.data.dataset import SCENES
from asc_search.errors import AscSearchError
from asc_search.training.checkpoint import load_checkpoint, save_checkpoint
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision, TrainHistory, fit

log = logging.getLogger(__name__)

PARENTS_FOLDER = "parents"
#: The seed every parent is trained with (its initial weights and batch order).
PARENT_SEED = 0
#: Bump when the way a parent is trained changes, so old files are not mistaken for new ones.
PARENT_VERSION = 1


class ParentFit(NamedTuple):
    """What ``trained_parent`` gives: the network, whether the cache had it, and the CPU seconds
    an earlier process spent on it before this one resumed the fit (0 unless it resumed)."""

    model: nn.Module
    cache_hit: bool
    restored_cpu_seconds: float


@dataclass(frozen=True)
class ParentInfo:
    """One cached parent, as ``asc-search parents list`` shows it."""

    key: str
    path: Path
    spec: ArchSpec
    steps: int
    seed: int
    seconds: float
    #: Process time of the whole fit, epochs a killed worker paid for included.
    cpu_seconds: float
    train_clips: int
    created: str
    size_bytes: int


def parent_key(spec: ArchSpec, *, recipe: TrainingRecipe, steps: int, train: LabelledSet,
               teacher_logits: np.ndarray | None, precision: Precision) -> str:
    """The content key of a parent: every input that changes its trained weights."""
    digest = hashlib.sha256()
    digest.update(json.dumps({
        "version": PARENT_VERSION, "spec": spec.to_dict(), "recipe": recipe.to_dict(),
        "steps": steps, "files": list(train.files),
        "autocast": str(precision.autocast_dtype), "channels_last": precision.channels_last,
        "device": precision.device.type,
        # A corpus of other scenes (the DCASE ten keep the key they always had).
        **({"classes": list(train.classes)} if train.classes != SCENES else {}),
    }, sort_keys=True).encode())
    if teacher_logits is not None:
        digest.update(np.ascontiguousarray(teacher_logits, dtype=np.float32).tobytes())
    return digest.hexdigest()[:24]


def trained_parent(spec: ArchSpec, *, pm: pluggy.PluginManager, recipe: TrainingRecipe,
                   steps: int, train: LabelledSet, teacher_logits: np.ndarray | None,
                   precision: Precision, cache: Path | None, progress: bool = False,
                   ) -> ParentFit:
    """The wide network ``spec`` trained for ``steps`` optimiser steps of ``recipe`` with KD.

    Returns the model, whether it came from the cache, and the CPU seconds of the epochs an
    earlier process trained before this one resumed them (0 unless a cut-off fit resumed).
    Without ``cache`` it is trained and not kept. The initial weights and batch order come from
    ``recipe.seed``.
    """
    if cache is None:
        model, _ = _train(spec, pm=pm, recipe=recipe, steps=steps, train=train,
                          teacher_logits=teacher_logits, precision=precision, path=None,
                          progress=progress)
        return ParentFit(model, False, 0.0)
    key = parent_key(spec, recipe=recipe, steps=steps, train=train,
                     teacher_logits=teacher_logits, precision=precision)
    path = cache / PARENTS_FOLDER / f"{key}.pt"
    model = _load(path, spec, pm=pm)
    if model is not None:
        return ParentFit(model, True, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        model = _load(path, spec, pm=pm)  # trained by another worker while this one waited
        if model is not None:
            return ParentFit(model, True, 0.0)
        model, history = _train(spec, pm=pm, recipe=recipe, steps=steps, train=train,
                                teacher_logits=teacher_logits, precision=precision, path=path,
                                progress=progress)
        return ParentFit(model, False, history.restored_cpu_seconds)


def _train(spec: ArchSpec, *, pm: pluggy.PluginManager, recipe: TrainingRecipe, steps: int,
           train: LabelledSet, teacher_logits: np.ndarray | None, precision: Precision,
           path: Path | None, progress: bool) -> tuple[nn.Module, TrainHistory]:
    """Train the parent and, given ``path``, keep it there."""
    model = build_model(spec, pm=pm, seed=recipe.seed)
    # A parent is the longest fit of a study: one cut short (a killed worker, the end of a
    # session) continues from its last epoch when it is asked for again.
    resume = None if path is None else path.with_name(f"{path.name}.resume")
    history = fit(model, train, recipe, steps=steps, teacher_logits=teacher_logits,
                  precision=precision, progress=progress,
                  label=f"parent {spec.base_channels}-wide", resume=resume)
    model.to("cpu").to(memory_format=torch.contiguous_format)
    if path is not None:
        save_checkpoint(path, spec=spec, state_dict=model.state_dict(), metadata={
            "stage": "parent", "version": PARENT_VERSION, "steps": steps, "seed": recipe.seed,
            # The whole fit's, resumed epochs included.
            "seconds": round(sum(history.seconds), 1),
            "cpu_seconds": round(sum(history.cpu_seconds), 1), "train_clips": len(train),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        resume.unlink(missing_ok=True)
    return model, history


def _load(path: Path, spec: ArchSpec, *, pm: pluggy.PluginManager) -> nn.Module | None:
    """The cached parent at ``path``, or None when there is none or it is unusable."""
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path, label="cached parent")
        if checkpoint.spec != spec or checkpoint.metadata.get("version") != PARENT_VERSION:
            raise AscSearchError("it holds another network")
        model = build_model(spec, pm=pm)
        model.load_state_dict(checkpoint.state_dict)
    except (AscSearchError, RuntimeError) as exc:
        log.warning("cached parent %s is unusable (%s); training it again", path.name, exc)
        return None
    return model


def cached_parents(cache: Path) -> list[ParentInfo]:
    """Every parent in the cache folder, newest first; unreadable files are skipped."""
    found = []
    for path in sorted((cache / PARENTS_FOLDER).glob("*.pt")):
        try:
            checkpoint = load_checkpoint(path, label="cached parent")
        except AscSearchError:
            continue
        meta: dict[str, Any] = checkpoint.metadata
        found.append(ParentInfo(key=path.stem, path=path, spec=checkpoint.spec,
                                steps=int(meta.get("steps", 0)), seed=int(meta.get("seed", 0)),
                                seconds=float(meta.get("seconds", 0.0)),
                                # Parents kept before fits counted process time have only wall.
                                cpu_seconds=float(meta.get("cpu_seconds",
                                                           meta.get("seconds", 0.0))),
                                train_clips=int(meta.get("train_clips", 0)),
                                created=str(meta.get("created", "")),
                                size_bytes=path.stat().st_size))
    return sorted(found, key=lambda info: info.created, reverse=True)
