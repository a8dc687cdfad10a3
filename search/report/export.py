"""``asc-search export STUDY --trial N --out DIR``: what a DCASE submission needs from one trial.

The folder holds ``model.pt`` (tensor-only checkpoint, weights stored in the type the budget
counts, 16-bit by default; for an int8 trial its float32 weights, beside ``model_int8.pt2``, the
converted int8 program that is scored, counted and packaged), ``spec.json`` (the pruned
network's per-layer widths), ``complexity.json`` (the DCASE count) and ``output.csv`` (the
challenge's format: file name, predicted scene, one probability per scene, tab-separated) for the
test list, and
``inference/``, the DCASE 2025 inference package (``inference_package.py``): installable, with
``predict(file_paths, device_ids)``, no asc-search needed. A promoted trial exports its finalist
network; otherwise the trial's search-time network. The folder appears only when everything is
written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from asc_search.architecture import build_model
from asc_search.complexity import count_complexity
from asc_search.errors import AscSearchError
from asc_search.paths import studies_dir
from asc_search.study.lifecycle import settings_of
from asc_search.study.promote import finalists
from asc_search.study.storage import artifact_store
from asc_search.training.checkpoint import load_checkpoint, save_checkpoint
from asc_search.training.int8 import INT8_PRECISION, load_int8
from asc_search.training.train import precision_for

#: The submission label the package is named by unless ``--label`` says otherwise.
DEFAULT_LABEL = "Asc_Search"
_WEIGHT_TYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _as_stored(state_dict: Any, weights_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Float weights rounded to the type the budget counts, back in float32: the network as
    submitted, for counting and scoring."""
    return {k: v.to(weights_dtype).float() if v.is_floating_point() else v
            for k, v in state_dict.items()}


def _device_models(promoted: dict[str, Any] | None, *, studies: Path | None, pm: Any,
                   folder: Path, weights_dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The finalist's device models (DCASE 2025 mode), read tensor-only from their artifacts,
    with weights rounded to the type the budget counts, as the general network's are."""
    artifacts = ((promoted or {}).get("device_specific") or {}).get("artifacts", {})
    models = {}
    for device, artifact in artifacts.items():
        path = folder / f"device-{device}.pt"
        download_artifact(artifact_store=artifact_store(studies), artifact_id=artifact,
                          file_path=str(path))
        loaded = load_checkpoint(path, label=f"device {device}'s model (artifact {artifact})")
        path.unlink()
        model = build_model(loaded.spec, pm=pm)
        model.load_state_dict(_as_stored(loaded.state_dict, weights_dtype))
        models[device] = model.eval()
    return models


def export_trial(study: optuna.Study, *, number: int, out: Path, pm: Any, cache: Path,
                 studies: Path | None, progress: bool = False,
                 label: str = DEFAULT_LABEL) -> dict[str, Any]:
    """Write the export folder (see the module docstring); return a summary of what it holds."""
    from asc_search.features.experiment import load_split_data
    from asc_search.features.logmel import FrontEndSettings
    from asc_search.report.inference_package import package_names, write_inference_package
    from asc_search.training.device_models import routed_logits

    package, module = package_names(label)  # a bad label fails before anything is written

    settings = settings_of(study, to_train=False)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise AscSearchError(f"study {study.study_name!r} has no trial {number}")
    promoted = finalists(study).get(number)
    artifact = (promoted or {}).get("checkpoint_artifact") or \
        trials[number].user_attrs.get("checkpoint_artifact")
    if artifact is None:
        status = trials[number].user_attrs.get("status", trials[number].state.name.lower())
        raise AscSearchError(f"trial {number} has no trained network ({status})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AscSearchError(f"{out}: exists and is not an empty folder")
    storage = str((promoted or {}).get("storage")
                  or trials[number].user_attrs.get("storage", settings.storage_dtype))
    int8_artifact = (promoted or {}).get("int8_artifact") if promoted else \
        trials[number].user_attrs.get("int8_artifact")
    if storage == "int8" and int8_artifact is None:
        raise AscSearchError(f"trial {number} counts int8 storage but holds no int8 network "
                             "(made by an asc-search without the int8 path): promote it again")
    # float weights are kept at float32 beside an int8 program (the program is what ships).
    weights_dtype = torch.float32 if storage == "int8" else _WEIGHT_TYPES[storage]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        downloaded = partial / "downloaded.pt"
        try:
            download_artifact(artifact_store=artifact_store(studies), artifact_id=artifact,
                              file_path=str(downloaded))
        except ArtifactNotFound:
            raise AscSearchError(
                f"trial {number}'s checkpoint is not in {(studies or studies_dir()) / 'artifacts'}: a worker "
                "on another machine keeps its own studies/artifacts; share or copy it") from None
        loaded = load_checkpoint(downloaded, label=f"trial {number}'s checkpoint (artifact "
                                                   f"{artifact})")
        downloaded.unlink()
        model = build_model(loaded.spec, pm=pm)
        model.load_state_dict(loaded.state_dict)
        half = {k: v.to(weights_dtype) if v.is_floating_point() else v
                for k, v in model.state_dict().items()}
        (partial / "spec.json").write_text(json.dumps(loaded.spec.to_dict(), indent=2) + "\n")
        # The network as submitted: the stored weights, restored to float for counting and scoring.
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in half.items()})
        card = count_complexity(model, storage_dtype=storage)
        int8 = None
        if int8_artifact is not None:  # the int8 program as trained, its own byte count
            program = partial / "model_int8.pt2"
            download_artifact(artifact_store=artifact_store(studies), artifact_id=int8_artifact,
                              file_path=str(program))
            int8 = load_int8(program)
            card = replace(card, param_bytes=int8.stored_bytes)
        (partial / "complexity.json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        data = load_split_data(settings.data, settings.split, pm=pm, cache_dir=cache,
                               progress=progress, with_test=True)
        classes = data.test.classes
        if loaded.spec.n_classes != len(classes):
            raise AscSearchError(f"trial {number} has {loaded.spec.n_classes} outputs but the data "
                                 f"has {len(classes)} classes ({', '.join(classes)})")
        # The output order travels with the weights: column k of the logits is classes[k].
        save_checkpoint(partial / "model.pt", spec=loaded.spec, state_dict=half,
                        metadata={**loaded.metadata, "study": study.study_name,
                                  "weights_dtype": "float32" if int8 else storage,
                                  **({"int8_program": "model_int8.pt2"} if int8 else {}),
                                  "classes": list(classes)})
        shipped = int8 if int8 is not None else model
        networks = {"general": shipped, **_device_models(promoted, studies=studies, pm=pm,
                                                          folder=partial,
                                                          weights_dtype=weights_dtype)}
        # Each test clip scored by its device's model where there is one (the 2025 mode),
        # else by the general network, as the inference package will score it (an int8
        # program in float32, as it runs).
        logits = routed_logits({d: m for d, m in networks.items() if d != "general"}, shipped,
                               data.test, precision=INT8_PRECISION
                               if int8 is not None else precision_for("cpu"))
        probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        with (partial / "output.csv").open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["filename", "scene_label", *classes])
            for name, row in zip(data.test.files, probabilities, strict=True):
                writer.writerow([name, classes[int(row.argmax())],
                                 *(f"{p:.6f}" for p in row)])
        # The DCASE 2025 inference package: installable and free of asc-search; the device models
        # where the study made them, this network for every other device.
        # Every device model is the general network's architecture: each has its count.
        write_inference_package(partial / "inference", label=label, models=networks,
                                front_end=FrontEndSettings(), classes=list(classes),
                                complexity=dict.fromkeys(networks, card.to_dict()))
        if out.exists():
            out.rmdir()
        os.rename(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {"trial": number, "finalist": promoted is not None, "macs": card.macs,
            "param_bytes": card.param_bytes, "test_clips": len(data.test.files), "out": str(out),
            "package": package, "module": module}
