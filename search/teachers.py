"""Teachers and their ensemble logits, computed once per (split, teacher set, settings) and cached.

A teacher plugin sees only a ``TeacherContext``: the split's training clips (features, labels,
devices) and the recipe. It has no handle on the data set, so it cannot read validation or test
labels even by mistake; the tests check that no other file's label reaches it. The ensemble (mean of
the teachers' logits by default) is stored in the cache folder beside the teachers' checkpoints and
reused by every student that trains on the same split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
from torch import nn

from asc_search.errors import AscSearchError, CacheError, PluginError
from asc_search.plugin_manager import collect_named
from asc_search.recipe import TrainingRecipe
from asc_search.train import LabelledSet, Precision, precision_for

log = logging.getLogger(__name__)
#: 2: masks before Freq-MixStyle and CP-JKU's KD scale changed what a fitted teacher is.
TEACHER_FORMAT_VERSION = 2
ENSEMBLE_MODES = ("mean_logits", "mean_probs")


@dataclass(frozen=True)
class TeacherContext:
    """Everything a teacher may use: the split's training clips and nothing else."""

    train: LabelledSet
    recipe: TrainingRecipe
    precision: Precision
    workdir: Path  # a private folder inside the cache, for the teacher's own checkpoint
    option: str | None = None  # what followed "=" in --teacher NAME=OPTION
    progress: bool = True


@dataclass(frozen=True)
class TeacherFit:
    """A fitted teacher: its logits on the training rows, and the model when it has one."""

    logits: np.ndarray
    model: nn.Module | None = None


@dataclass(frozen=True)
class Teacher:
    """A teacher plugin's offer (see ``asc_teachers`` in hookspecs)."""

    name: str
    description: str
    fit: Callable[[TeacherContext], TeacherFit]
    #: Settings that change the teacher's output; part of the cache key.
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: Fingerprint of what an option points at (a logits file's size and mtime), for the cache key.
    fingerprint: Callable[[str | None], str] | None = None


@dataclass(frozen=True)
class EnsembleLogits:
    files: tuple[str, ...]
    logits: np.ndarray  # (N, classes), row-aligned with ``files``
    per_teacher: dict[str, np.ndarray]
    directory: Path
    cache_hit: bool


def teachers(pm: pluggy.PluginManager) -> dict[str, Teacher]:
    """Every teacher registered through ``asc_teachers``."""
    return collect_named(pm.hook.asc_teachers(), what="teacher")


def parse_teacher(text: str, known: Mapping[str, Teacher]) -> tuple[str, str | None]:
    """``wide_cp_mobile`` or ``logits_file=path.npz`` → (name, option), checking the name."""
    name, _, option = text.partition("=")
    if name not in known:
        raise PluginError(f"unknown teacher {name!r} (known: {', '.join(known) or 'none'})")
    return name, option or None


def ensemble_logits(
    train: LabelledSet,
    *,
    teacher_names: Sequence[str],
    pm: pluggy.PluginManager,
    cache_dir: Path,
    recipe: TrainingRecipe,
    precision: Precision | None = None,
    mode: str = "mean_logits",
    progress: bool = True,
    on_teacher: Callable[[str, TeacherFit], None] | None = None,
) -> EnsembleLogits:
    """Fit (or load) every teacher on ``train`` and return their ensemble logits for its rows."""
    if mode not in ENSEMBLE_MODES:
        raise AscSearchError(f"ensemble mode {mode!r}: choose one of {', '.join(ENSEMBLE_MODES)}")
    if not teacher_names:
        raise AscSearchError("no teachers given")
    known = teachers(pm)
    parsed = [parse_teacher(text, known) for text in teacher_names]
    precision = precision or precision_for("cpu")
    key = _key(train, parsed, known, recipe, mode)
    directory = cache_dir / "teachers" / key
    if directory.exists():
        try:
            return _load(directory, train)
        except CacheError as exc:
            log.warning("teacher cache %s is unusable (%s); refitting", directory, exc)
            shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=directory.parent))
    try:
        per_teacher: dict[str, np.ndarray] = {}
        for index, (name, option) in enumerate(parsed):
            label = f"{name}#{index}" if sum(n == name for n, _ in parsed) > 1 else name
            workdir = partial / label
            workdir.mkdir()
            context = TeacherContext(train=train, recipe=recipe, precision=precision,
                                     workdir=workdir, option=option, progress=progress)
            fitted = known[name].fit(context)
            logits = np.asarray(fitted.logits, dtype=np.float32)
            if logits.ndim != 2 or logits.shape[0] != len(train):
                raise PluginError(f"teacher {name!r} returned logits of shape {logits.shape} "
                                  f"for {len(train)} clips")
            if not np.isfinite(logits).all():
                raise PluginError(f"teacher {name!r} returned NaN or infinite logits")
            per_teacher[label] = logits
            np.save(partial / f"{label}.npy", logits)
            if on_teacher is not None:
                on_teacher(label, fitted)
        ensemble = _combine(list(per_teacher.values()), mode)
        np.save(partial / "ensemble.npy", ensemble)
        meta = {"key": key, "files": list(train.files), "teachers": list(per_teacher),
                "mode": mode, "recipe": recipe.to_dict()}
        (partial / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(partial, directory)
        except OSError:
            if not directory.exists():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    result = _load(directory, train)
    return EnsembleLogits(files=result.files, logits=result.logits, per_teacher=result.per_teacher,
                          directory=directory, cache_hit=False)


def _combine(logits: list[np.ndarray], mode: str) -> np.ndarray:
    stacked = np.stack(logits)
    if mode == "mean_logits":
        return stacked.mean(axis=0).astype(np.float32)
    shifted = stacked - stacked.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return np.log(probs.mean(axis=0) + 1e-12).astype(np.float32)  # logits of the mean probability


def _key(train: LabelledSet, parsed: list[tuple[str, str | None]], known: Mapping[str, Teacher],
         recipe: TrainingRecipe, mode: str) -> str:
    payload = {
        "v": TEACHER_FORMAT_VERSION,
        "features": train.features.directory.name,  # keyed by the exact training file list
        "teachers": [
            [name, option, dict(known[name].settings),
             known[name].fingerprint(option) if known[name].fingerprint else None]
            for name, option in parsed
        ],
        "recipe": recipe.to_dict(),
        "mode": mode,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _load(directory: Path, train: LabelledSet) -> EnsembleLogits:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        ensemble = np.load(directory / "ensemble.npy", allow_pickle=False)
        per_teacher = {name: np.load(directory / f"{name}.npy", allow_pickle=False)
                       for name in meta["teachers"]}
    except (OSError, ValueError, KeyError) as exc:
        raise CacheError(f"unreadable: {exc}") from exc
    if tuple(meta.get("files", ())) != train.files or ensemble.shape[0] != len(train):
        raise CacheError("file list differs from the training split")
    if not np.isfinite(ensemble).all():
        raise CacheError("ensemble logits hold NaN or infinite values")
    return EnsembleLogits(files=train.files, logits=ensemble, per_teacher=per_teacher,
                          directory=directory, cache_hit=True)
