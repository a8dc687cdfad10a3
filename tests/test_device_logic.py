"""The training device's logic, checked on the CPU: everything follows ``--device``.

No test here needs a GPU. What only a GPU can show (no host sync per step, the speed of the
resident data path) is measured by running the product there (benchmarks/README.md)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from asc_search.data.dataset import load_dataset
from asc_search.features.logmel import build_features
from asc_search.training.batches import DeviceBatches

ENGINE = Path(__file__).resolve().parents[1] / "search"
#: The only moves to the CPU the training and pruning loops may make, and why.
ALLOWED_HOST_MOVES = {
    "pruning/prune.py": 1,  # the pruned network, once at the end: counted, saved, exported
    "training/train.py": 1,  # predict(): the logits handed back to the caller
}
LOOP_MODULES = ("pruning/prune.py", "training/train.py", "training/batches.py",
                "training/augment.py", "training/device_responses.py")


def test_the_training_and_pruning_loops_make_no_stray_moves_to_the_cpu() -> None:
    """Before, pruning moved the network to the CPU at every step and scored Taylor gradients
    there, so a GPU run shuttled the model to and fro between its fine-tunes."""
    pattern = re.compile(r"""\.cpu\(\)|\.to\(\s*["']cpu["']""")
    for name in LOOP_MODULES:
        found = len(pattern.findall((ENGINE / name).read_text()))
        assert found == ALLOWED_HOST_MOVES.get(name, 0), f"{name}: {found} move(s) to the CPU"


def test_resident_batches_equal_the_cache_rows(tiny_corpus: Path, tmp_path: Path) -> None:
    files = list(load_dataset(tiny_corpus).split(100).train[:40])
    features = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    resident = DeviceBatches(features, torch.device("cpu"), resident=True)
    streamed = DeviceBatches(features, torch.device("cpu"))
    assert resident.resident and not streamed.resident
    rows = np.array([7, 2, 7, 30, 39])
    torch.testing.assert_close(resident(rows, torch.from_numpy(rows)), features.batch(rows))
    torch.testing.assert_close(streamed(rows, torch.from_numpy(rows)), features.batch(rows))
