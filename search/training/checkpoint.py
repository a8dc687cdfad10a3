"""Checkpoints that load without unpickling arbitrary objects.

A checkpoint is a ``torch.save``d dict of plain types (the spec as JSON text, tensors, numbers,
strings) read back with ``weights_only=True``: a file that needs anything else to load is refused
before any of its code could run. The ``format`` key tells our files from other people's.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asc_search.architecture import ArchSpec, SpecError
from asc_search.errors import AscSearchError

FORMAT = "asc-search-checkpoint/1"


class CheckpointError(AscSearchError):
    """A file that is not an asc-search checkpoint, or a damaged one."""


@dataclass
class Checkpoint:
    spec: ArchSpec
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, *, spec: ArchSpec, state_dict: Mapping[str, torch.Tensor],
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Write atomically (temporary file, then rename) so a crash never leaves half a checkpoint."""
    payload = {
        "format": FORMAT,
        "spec": spec.to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "metadata": dict(metadata or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def load_checkpoint(path: Path, *, label: str | None = None) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``; anything else is a one-line refusal.

    ``label`` names the file in messages when ``path`` is a temporary copy (a study artifact).
    """
    label = label or str(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        text = str(exc)
        if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
            reason = "not a tensor-only torch file; refused without unpickling it"
        else:
            reason = (text.splitlines()[0] if text else type(exc).__name__)[:160]
        raise CheckpointError(f"{label}: not an asc-search checkpoint ({reason})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{label}: not an asc-search checkpoint (no {FORMAT!r} marker)")
    try:
        spec = ArchSpec.from_json(payload["spec"])
    except (KeyError, SpecError) as exc:
        raise CheckpointError(f"{label}: checkpoint spec unreadable: {exc}") from exc
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{label}: checkpoint has no tensor state dict")
    return Checkpoint(spec=spec, state_dict=state, metadata=dict(payload.get("metadata") or {}))
