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


class _MakesATensor(torch.nn.Module):
    """A network whose forward creates a tensor on its input's device: a trace writes that
    device into its graph, where ``.to()`` does not reach."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x)) + torch.ones(1, 4, 1, 1, device=x.device)
        return self.head(y.mean((2, 3)))


def test_the_int8_program_trains_on_the_training_device_and_converts_on_the_cpu() -> None:
    """Before, the QAT program was traced on the CPU and moved with ``.to()``, which leaves a
    created tensor's device behind in the graph: a GPU fine-tune mixed devices. The ``meta``
    device stands in for an accelerator here: nothing may stay on the CPU while it trains."""
    from asc_search.training.int8 import convert, prepare_qat

    prepared = prepare_qat(_MakesATensor(), device="meta", input_shape=(1, 1, 32, 16))
    assert {t.device.type for t in [*prepared.parameters(), *prepared.buffers()]} == {"meta"}
    assert prepared.train()(torch.zeros(3, 1, 32, 16, device="meta")).shape == (3, 10)

    # The way back: meta tensors hold no values to bring back, so a CPU program is given the
    # graph a program trained on an accelerator has (its created tensor's device) and must
    # convert to a program that runs on the CPU.
    prepared = prepare_qat(_MakesATensor(), input_shape=(1, 1, 32, 16))
    with torch.no_grad():
        prepared.train()(torch.randn(4, 1, 32, 16))
    for node in prepared.program.graph.nodes:
        if "device" in node.kwargs:
            node.kwargs = {**node.kwargs, "device": torch.device("meta")}
    prepared.program.recompile()
    converted = convert(prepared)
    assert {node.kwargs["device"] for node in converted.program.graph.nodes
            if "device" in node.kwargs} == {torch.device("cpu")}
    assert converted(torch.randn(2, 1, 32, 16)).shape == (2, 10)
