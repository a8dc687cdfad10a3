"""The DCASE 2025 inference package: an installable Python package that predicts with no asc-search.

DCASE 2025 Task 1 asks for inference code in a fixed form (CP-JKU's ``dcase2025_task1_inference``
describes it): a package named by the submission label (``<Label>_task1``) with one module per
submission (``<Label>_task1_1``) that implements ``load_model``, ``load_inputs``,
``get_model_for_device`` and ``predict(file_paths, device_ids)`` returning one logit tensor per
file and the class order. The organisers install it and run it on the evaluation set, so it may
depend on nothing of the tool that made it.

What is written here is the project's own code for that form:

- each network (the general one, and one per known device where a study has them) is saved with
  ``torch.export`` as a ``.pt2`` program, which needs the network's code no more than a
  TorchScript file would and is loaded without unpickling anything;
- the front-end's settings and the class order go in ``model.json``; the module rebuilds the very
  log-mel front-end with ``torchaudio`` (resampling, mel filters, ``log(x + offset)``, features
  rounded to 16 bits as the feature cache stored them), so its inputs are the training inputs;
- a device the package has no model for (``"unknown"``, or an unseen device) gets the general one.

``write_inference_package`` is what ``export`` calls; a test installs the result into a fresh
virtual environment and predicts with asc-search unimportable.
"""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from asc_search.errors import AscSearchError
from asc_search.features.logmel import FrontEndSettings

GENERAL = "general"
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9]+$")  # Lastname_Institution


def package_names(label: str, index: int = 1) -> tuple[str, str]:
    """(package, module) for a submission label such as ``Schmid_CPJKU``: ``Schmid_CPJKU_task1``
    and ``Schmid_CPJKU_task1_1``."""
    if not _LABEL.match(label):
        raise AscSearchError(f"submission label {label!r}: use Lastname_Institution (letters and "
                             "digits, one underscore), as DCASE forms it")
    if not 1 <= index <= 4:
        raise AscSearchError(f"submission index {index}: DCASE allows 1 to 4")
    return f"{label}_task1", f"{label}_task1_{index}"


def write_inference_package(folder: Path, *, label: str, models: dict[str, torch.nn.Module],
                            front_end: FrontEndSettings, classes: list[str],
                            complexity: dict[str, dict[str, Any]], index: int = 1) -> Path:
    """Write the package into ``folder`` (created; must not exist) and return its path.

    ``models`` maps device ids to networks taking (batch, 1, mels, frames) log-mels; it must hold
    ``"general"``. ``complexity`` is each network's DCASE count, written beside it.
    """
    if GENERAL not in models:
        raise AscSearchError("an inference package needs a general model for unknown devices")
    package, module = package_names(label, index)
    checkpoints = folder / package / "ckpts" / module
    checkpoints.mkdir(parents=True)
    example = torch.zeros(2, 1, *front_end.shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    for device, model in models.items():
        program = torch.export.export(model.float().eval().cpu(), (example,),
                                      dynamic_shapes=({0: batch},))
        with warnings.catch_warnings():
            # Weights that share storage (a pruned layer's views) are stored once, whole.
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            torch.export.save(program, checkpoints / f"{device}.pt2")
    (checkpoints / "model.json").write_text(json.dumps({
        "devices": sorted(models), "classes": list(classes), "front_end": asdict(front_end),
        "complexity": complexity}, indent=2) + "\n")
    (folder / package / "__init__.py").write_text(f'"""DCASE 2025 Task 1 submission {label}."""\n')
    (folder / package / "ckpts" / "__init__.py").write_text("")
    (folder / package / f"{module}.py").write_text(_MODULE.replace("__MODULE__", module))
    (folder / "requirements.txt").write_text("torch\ntorchaudio\nsoundfile\nnumpy\n")
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{package}"
        version = "1.0.0"
        description = "DCASE 2025 Task 1 inference package (written by asc-search export)"
        requires-python = ">=3.10"
        dependencies = ["torch", "torchaudio", "soundfile", "numpy"]

        [tool.setuptools]
        packages = ["{package}", "{package}.ckpts"]

        [tool.setuptools.package-data]
        "{package}.ckpts" = ["{module}/*"]
        """))
    (folder / "README.md").write_text(textwrap.dedent(f"""\
        # {package}

        DCASE 2025 Task 1 inference package, written by `asc-search export`.

        ```bash
        pip install .
        python -c "from {package} import {module} as m; print(m.predict(['clip.wav'], ['a']))"
        ```

        `{module}` implements `load_model`, `load_inputs`, `get_model_for_device` and `predict`
        as the task's inference API asks. Devices with a model of their own:
        {", ".join(sorted(models))}; every other device id uses `general`.
        """))
    return folder


_MODULE = '''"""DCASE 2025 Task 1 inference module __MODULE__ (written by asc-search export).

It imports torch, torchaudio, soundfile and numpy only. The networks are ``torch.export``
programs in ``ckpts/__MODULE__/``; ``model.json`` there holds the front-end settings, the class
order and each network's complexity.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor

_MODULE = "__MODULE__"
GENERAL = "general"


class DeviceModels(torch.nn.Module):
    """The submission's networks by device id, with the front-end that makes their inputs."""

    def __init__(self, models: dict, front_end: dict, classes: list) -> None:
        super().__init__()
        self.models = torch.nn.ModuleDict(models)
        self.front_end = dict(front_end)
        self.classes = list(classes)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=front_end["sample_rate"], n_fft=front_end["n_fft"],
            win_length=front_end["win_length"], hop_length=front_end["hop_length"],
            n_mels=front_end["n_mels"], f_min=front_end["f_min"], f_max=front_end["f_max"])

    def forward(self, x: Tensor) -> Tensor:
        return self.models[GENERAL](x)


def load_model(model_file_path: Optional[str] = None) -> torch.nn.Module:
    """The networks of this submission; ``model_file_path`` names another checkpoint folder
    (one ``<device>.pt2`` per device and a ``model.json``) instead of the packaged one."""
    folder = Path(model_file_path) if model_file_path else \\
        Path(str(resources.files(__package__) / "ckpts" / _MODULE))
    meta = json.loads((folder / "model.json").read_text())
    models = {device: torch.export.load(str(folder / f"{device}.pt2")).module()
              for device in meta["devices"]}
    return DeviceModels(models, meta["front_end"], meta["classes"])


def load_inputs(file_paths: List[str], device_ids: List[str],
                model: torch.nn.Module) -> List[Tensor]:
    """One (1, mels, frames) log-mel tensor per file: mono, resampled, cut or padded to the
    clip length, ``log(mel + offset)``, rounded to 16 bits as training stored them."""
    settings = model.front_end
    rate = settings["sample_rate"]
    length = round(rate * settings["clip_seconds"])
    inputs = []
    for path in file_paths:
        samples, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
        audio = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))
        if source_rate != rate:
            audio = torchaudio.functional.resample(audio, source_rate, rate)
        audio = torch.nn.functional.pad(audio, (0, max(0, length - audio.shape[-1])))[:length]
        with torch.no_grad():
            features = (model.mel(audio) + settings["log_offset"]).log()
        inputs.append(features.to(getattr(torch, settings["dtype"])).float().unsqueeze(0))
    return inputs


def get_model_for_device(model: torch.nn.Module, device_id: str) -> torch.nn.Module:
    """The network for ``device_id``: its own where the submission has one, else the general."""
    return model.models[device_id] if device_id in model.models else model.models[GENERAL]


def predict(file_paths: List[str], device_ids: List[str],
            model_file_path: Optional[str] = None) -> Tuple[List[Tensor], List[str]]:
    """Logits (one tensor of n_classes per file, in input order) and the class order."""
    if len(file_paths) != len(device_ids):
        raise ValueError(f"{len(file_paths)} files but {len(device_ids)} device ids")
    model = load_model(model_file_path)
    inputs = load_inputs(file_paths, device_ids, model)
    logits: List[Tensor] = [torch.empty(0)] * len(file_paths)
    by_device: dict = {}
    for position, device in enumerate(device_ids):
        by_device.setdefault(device, []).append(position)
    with torch.no_grad():
        for device, positions in by_device.items():
            network = get_model_for_device(model, device)
            for start in range(0, len(positions), 256):
                chunk = positions[start:start + 256]
                out = network(torch.stack([inputs[p] for p in chunk]))
                for position, row in zip(chunk, out):
                    logits[position] = row
    return logits, list(model.classes)
'''
