"""Built-in teachers: a wide CP-Mobile, a patchout transformer, and precomputed logits from a file.

The first two train from scratch on the split's training clips only (the context gives them
nothing else); ``logits_file`` is how a user brings a real PaSST ensemble computed elsewhere (on a
GPU machine) as logits keyed by file name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from asc_search.architecture import ArchSpec
from asc_search.errors import PluginError
from asc_search.hookspecs import hookimpl
from asc_search.plugin_types import Teacher
from asc_search.plugins.mobile_nets import build_cp_mobile
from asc_search.plugins.patchout_transformer import TEACHER_SPEC, PatchoutTransformer
from asc_search.teachers.ensemble import TeacherContext, TeacherFit
from asc_search.training.checkpoint import save_checkpoint
from asc_search.training.train import fit, predict

WIDE_BASE = 64  # no budget: about 4× the baseline's MACs, still trainable on a CPU


def _train_and_predict(context: TeacherContext, spec: ArchSpec, model, label: str) -> TeacherFit:
    fit(model, context.train, context.recipe, precision=context.precision, resume=context.resume,
        progress=context.progress, label=f"teacher {label}")
    logits = predict(model, context.train.features, precision=context.precision)
    save_checkpoint(context.workdir / "model.pt", spec=spec, state_dict=model.state_dict(),
                    metadata={"teacher": label, "files": len(context.train)})
    return TeacherFit(logits=logits, model=model)


def fit_wide_cp_mobile(context: TeacherContext) -> TeacherFit:
    try:
        base = int(context.option) if context.option else WIDE_BASE
    except ValueError as exc:
        raise PluginError(f"wide_cp_mobile={context.option}: the option is a base width") from exc
    spec = ArchSpec(base_channels=base, n_classes=len(context.train.classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.recipe.seed)
        model = build_cp_mobile(spec)
    return _train_and_predict(context, spec, model, "wide_cp_mobile")


def fit_patchout_transformer(context: TeacherContext) -> TeacherFit:
    spec = TEACHER_SPEC.with_(n_classes=len(context.train.classes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(context.recipe.seed)
        model = PatchoutTransformer(spec)
    return _train_and_predict(context, spec, model, "patchout_transformer")


def read_logits_file(path: Path) -> dict[str, np.ndarray]:
    """Read ``.npz`` (arrays ``filenames``, ``logits``; no pickles) or ``.csv``/``.tsv``
    (filename, then one column per class) into {filename: logits}."""
    if not path.is_file():
        raise PluginError(f"{path}: logits file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                names, logits = data["filenames"], data["logits"]
            return {str(n): np.asarray(v, dtype=np.float32) for n, v in zip(names, logits, strict=True)}
        delimiter = "\t" if path.suffix == ".tsv" else ","
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle, delimiter=delimiter) if row]
        if rows and not _is_number(rows[0][1]):
            rows = rows[1:]  # header
        return {row[0]: np.array([float(v) for v in row[1:]], dtype=np.float32) for row in rows}
    except (KeyError, ValueError, IndexError, OSError) as exc:
        raise PluginError(f"{path}: not a logits file ({exc})") from exc


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fit_logits_file(context: TeacherContext) -> TeacherFit:
    if not context.option:
        raise PluginError("logits_file needs a path: --teacher logits_file=PATH")
    path = Path(context.option).expanduser()
    table = read_logits_file(path)
    missing = [name for name in context.train.files if name not in table]
    if missing:
        raise PluginError(f"{path}: no logits for {len(missing)} training clip(s), e.g. {missing[0]}")
    logits = np.stack([table[name] for name in context.train.files])
    classes = len(context.train.classes)
    if logits.ndim != 2 or logits.shape[1] != classes:
        raise PluginError(f"{path}: expected {classes} logits per clip (one per class of the "
                          f"data), got shape {logits.shape}")
    return TeacherFit(logits=logits)


def file_fingerprint(option: str | None) -> str:
    """A file option's identity for a cache key: its resolved path, size and mtime."""
    if not option:
        return ""
    path = Path(option).expanduser()
    stat = path.stat() if path.is_file() else None
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" if stat else str(path)


@hookimpl
def asc_teachers() -> list[Teacher]:
    return [
        Teacher("wide_cp_mobile", f"CP-Mobile without a budget (base {WIDE_BASE}; =WIDTH to change)",
                fit_wide_cp_mobile, settings={"default_base": WIDE_BASE}),
        Teacher("patchout_transformer", "small PaSST-style patchout transformer, from scratch",
                fit_patchout_transformer, settings={"spec": TEACHER_SPEC.to_json()}),
        Teacher("logits_file", "precomputed logits keyed by file name: =PATH (.npz, .csv, .tsv)",
                fit_logits_file, fingerprint=file_fingerprint),
    ]
