"""Teachers and their ensemble logits, computed once per (split, teacher set, settings) and cached.

A teacher plugin sees only a ``TeacherContext``: the split's training clips (features, labels,
devices) and the recipe. It has no handle on the data set, so it cannot read validation or test
labels even by mistake; the tests check that no other file's label reaches it. The ensemble (mean of
the teachers' logits by default) is stored in the cache folder beside the teachers' checkpoints and
reused by every student that trains on the same split.

A teacher trained from scratch on a few hundred clips memorises them: its logits on its own
training clips are near one-hot and teach the student little beyond the labels. With ``folds`` K > 1
every teacher is fitted K times, each time without one K-th of the clips (whole recordings, scenes
balanced), and each clip gets the logits of the fit that did not see it: out-of-fold logits, what
the teacher really knows about a clip it has not memorised. It costs K fits of (K − 1)/K of the data.
An ensemble is fitted under a lock (``asc_search.cache_entries``): workers that start together fit it
once, the others wait and read it.
Teachers without a model (``logits_file``) keep their given logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pluggy
import torch
from torch import nn

from asc_search.cache_entries import clean_leftovers, entry_lock, partial_folder, set_aside
from asc_search.data.dataset import SCENES
from asc_search.errors import AscSearchError, CacheError, PluginError
from asc_search.features.logmel import FeatureSet, FrontEnd
from asc_search.plugin_types import Teacher, collect_named
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision, precision_for

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
    #: A file for ``fit(resume=)`` that outlives an interrupted fit (``workdir`` does not): a
    #: teacher fit cut short continues from its last epoch when the ensemble is asked for again.
    resume: Path | None = None
    #: The run's cache folder (``--cache``), for what a teacher keeps between runs, such as
    #: downloaded weights; None: the default one (``asc_search.paths.cache_dir``).
    cache: Path | None = None


@dataclass(frozen=True)
class TeacherFit:
    """A fitted teacher: its logits on the training rows, and the model when it has one."""

    logits: np.ndarray
    model: nn.Module | None = None
    #: The front-end whose features ``model`` reads (``FeatureSet.computed_with``); None: the
    #: student's log-mels.
    front_end: FrontEnd | None = None

    def predict(self, features: FeatureSet, *, precision: Precision) -> np.ndarray:
        """The model's logits for ``features`` (student log-mels of any clips), computed under
        the teacher's own front-end when it has one."""
        from asc_search.training.train import predict

        if self.model is None:
            raise PluginError("this teacher has no model, only its logits")
        if self.front_end is not None:
            features = features.computed_with(self.front_end)
        return predict(self.model, features, precision=precision)


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
    folds: int = 1,
) -> EnsembleLogits:
    """Fit (or load) every teacher on ``train`` and return their ensemble logits for its rows
    (out-of-fold logits with ``folds`` > 1; see the module docstring)."""
    if mode not in ENSEMBLE_MODES:
        raise AscSearchError(f"ensemble mode {mode!r}: choose one of {', '.join(ENSEMBLE_MODES)}")
    if not teacher_names:
        raise AscSearchError("no teachers given")
    if folds < 1 or folds > len(train) // 2:
        raise AscSearchError(f"teacher folds {folds}: must be between 1 and half the clips")
    if folds > 1:
        from asc_search.data.dataset import recording_of

        held_out = len({recording_of(name) for name in train.files})
        if folds > held_out:
            raise AscSearchError(
                f"teacher folds {folds}: the training list has only {held_out} recordings, and "
                "a fold holds out whole recordings; choose at most that many folds")
    known = teachers(pm)
    parsed = [parse_teacher(text, known) for text in teacher_names]
    precision = precision or precision_for("cpu")
    key = _key(train, parsed, known, recipe, mode, folds)
    directory = cache_dir / "teachers" / key
    resumes = cache_dir / "teachers" / f".{key}.resume"  # kept until the ensemble is saved
    if directory.exists():
        try:
            return _load(directory, train)
        except CacheError:
            pass  # looked at again, and reported, under the lock
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Workers started together fit once: the others wait here and read the saved ensemble.
    with entry_lock(directory):
        if directory.exists():
            try:
                return _load(directory, train)
            except CacheError as exc:
                log.warning("teacher cache %s is unusable (%s); refitting", directory, exc)
                set_aside(directory)
        clean_leftovers(directory.parent, keep=key)
        _fit_all(train, parsed=parsed, known=known, recipe=recipe, precision=precision,
                 mode=mode, folds=folds, progress=progress, on_teacher=on_teacher,
                 directory=directory, resumes=resumes, cache_dir=cache_dir, key=key)
    result = _load(directory, train)
    return EnsembleLogits(files=result.files, logits=result.logits, per_teacher=result.per_teacher,
                          directory=directory, cache_hit=False)


def _fit_all(train: LabelledSet, *, parsed: list[tuple[str, str | None]],
             known: Mapping[str, Teacher], recipe: TrainingRecipe, precision: Precision,
             mode: str, folds: int, progress: bool,
             on_teacher: Callable[[str, TeacherFit], None] | None, directory: Path,
             resumes: Path, cache_dir: Path, key: str) -> None:
    """Fit every teacher into the entry's partial folder and rename it into place."""
    partial = partial_folder(directory)  # an earlier fit's, killed: teachers resume elsewhere
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        per_teacher: dict[str, np.ndarray] = {}
        for index, (name, option) in enumerate(parsed):
            label = f"{name}#{index}" if sum(n == name for n, _ in parsed) > 1 else name
            workdir = partial / label
            workdir.mkdir()
            context = TeacherContext(train=train, recipe=_member_recipe(recipe, parsed, index),
                                     precision=precision, workdir=workdir, option=option,
                                     progress=progress,
                                     resume=resumes / label / "fit.resume", cache=cache_dir)
            fitted = (known[name].fit(context) if folds == 1 else
                      _fit_out_of_fold(known[name], context, folds=folds))
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
        ensemble = combine_logits(list(per_teacher.values()), mode)
        np.save(partial / "ensemble.npy", ensemble)
        meta = {"key": key, "files": list(train.files), "teachers": list(per_teacher),
                "mode": mode, "recipe": recipe.to_dict(), "folds": folds}
        (partial / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(partial, directory)
        except OSError:
            if not directory.exists():
                raise
        shutil.rmtree(resumes, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class FoldAverage(nn.Module):
    """The K fold models of an out-of-fold teacher as one: the mean of their logits."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)


def fold_rows(files: Sequence[str], labels: np.ndarray, *, folds: int,
              seed: int) -> list[np.ndarray]:
    """``folds`` disjoint, ascending row sets covering ``files``: whole recordings per fold
    (its ten 1-s clips are near copies), dealt round-robin per scene so every fold has each."""
    from asc_search.data.dataset import recording_of

    groups: dict[str, list[int]] = {}
    for row, name in enumerate(files):
        groups.setdefault(recording_of(name), []).append(row)
    by_scene: dict[int, list[str]] = {}
    for recording, rows in sorted(groups.items()):
        by_scene.setdefault(int(labels[rows[0]]), []).append(recording)
    rng = np.random.default_rng(seed)
    assigned: list[list[int]] = [[] for _ in range(folds)]
    turn = 0
    for scene in sorted(by_scene):
        recordings = by_scene[scene]
        for index in rng.permutation(len(recordings)):
            assigned[turn % folds].extend(groups[recordings[index]])
            turn += 1
    return [np.array(sorted(rows), dtype=np.int64) for rows in assigned]


def _fit_out_of_fold(teacher: Teacher, context: TeacherContext, *, folds: int) -> TeacherFit:
    """Fit ``teacher`` on every fold's complement; each clip's logits from the fit without it."""
    from asc_search.training.train import derive_seed

    train = context.train
    logits = np.zeros((len(train), 0), dtype=np.float32)
    models: list[nn.Module] = []
    front_end: FrontEnd | None = None
    for fold, held in enumerate(fold_rows(train.files, train.labels, folds=folds,
                                          seed=context.recipe.seed)):
        kept = np.setdiff1d(np.arange(len(train)), held)
        workdir = context.workdir / f"fold{fold}"
        workdir.mkdir()
        fitted = teacher.fit(TeacherContext(
            train=train.subset(kept), precision=context.precision, workdir=workdir,
            recipe=context.recipe.with_(seed=derive_seed(context.recipe.seed, fold)),
            option=context.option, progress=context.progress,
            resume=None if context.resume is None
            else context.resume.with_name(f"fold{fold}.resume"), cache=context.cache))
        if fitted.model is None:  # logits given, not learned: nothing is memorised
            return teacher.fit(context)
        held_logits = fitted.predict(train.features.subset(held), precision=context.precision)
        if logits.shape[1] == 0:
            logits = np.zeros((len(train), held_logits.shape[1]), dtype=np.float32)
        logits[held] = held_logits
        models.append(fitted.model.to("cpu"))
        front_end = fitted.front_end
    return TeacherFit(logits=logits, model=FoldAverage(models).eval(), front_end=front_end)


def _member_recipe(recipe: TrainingRecipe, parsed: list[tuple[str, str | None]],
                   index: int) -> TrainingRecipe:
    """A teacher named again trains with a seed of its own (the seed's ensemble was several
    PaSSTs fine-tuned with different seeds); the first of a name keeps the recipe's seed."""
    from asc_search.training.train import derive_seed

    name = parsed[index][0]
    again = sum(n == name for n, _ in parsed[:index])
    return recipe if again == 0 else recipe.with_(seed=derive_seed(recipe.seed, again))


def combine_logits(logits: list[np.ndarray], mode: str) -> np.ndarray:
    """The ensemble of row-aligned teacher logits: their mean, or the logits of their mean
    probability (``mode`` ``mean_probs``)."""
    stacked = np.stack(logits)
    if mode == "mean_logits":
        return stacked.mean(axis=0).astype(np.float32)
    shifted = stacked - stacked.max(axis=-1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return np.log(probs.mean(axis=0) + 1e-12).astype(np.float32)  # logits of the mean probability


def _key(train: LabelledSet, parsed: list[tuple[str, str | None]], known: Mapping[str, Teacher],
         recipe: TrainingRecipe, mode: str, folds: int) -> str:
    payload = {
        "v": TEACHER_FORMAT_VERSION,
        "features": train.features.directory.name,  # keyed by the exact training file list
        # ...and, for a subset of a cached list, by the subset (no key change for whole lists).
        **({"rows": train.features.selection} if train.features.selection else {}),
        "teachers": [
            [name, option, dict(known[name].settings),
             known[name].fingerprint(option) if known[name].fingerprint else None]
            for name, option in parsed
        ],
        "recipe": recipe.to_dict(),
        "mode": mode,
        **({"folds": folds} if folds > 1 else {}),  # one fit: the key it always had
        # A corpus of other scenes (the DCASE ten keep the key they always had).
        **({"classes": list(train.classes)} if train.classes != SCENES else {}),
        # A repeated teacher draws its own seed (``_member_recipe``): new keys for repeats only.
        **({"repeats_reseeded": True} if len({n for n, _ in parsed}) < len(parsed) else {}),
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
