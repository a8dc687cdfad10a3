"""The benchmarks' result files: one JSON object per line, appended as each run finishes.

Appending line by line lets an interrupted benchmark keep what it finished and skip it when rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_result_options(parser: argparse.ArgumentParser, out: Path) -> None:
    """The options every resumable benchmark shares: torch threads, the results file (``out`` by
    default), and ``--report`` / ``--plot`` to print and draw what it holds."""
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--plot", type=Path, default=None,
                        help="with --report: also draw the test accuracies into this PNG")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result recorded in ``path`` (none if it does not exist yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machine() -> str:
    """The CPU that produced a row (its model name, and bf16 when it has AVX-512 BF16, which the
    product then trains in): CPU times and even bf16-against-fp32 accuracies from different
    machines must not be mixed in one comparison, so every row says where it ran. A cap on
    oneDNN's instruction set (``ONEDNN_MAX_CPU_ISA``) makes the same CPU another machine: it
    trains in fp32, at another speed, and the row says so. So does a cgroup's CPU quota: it
    slows every instruction alike, standing in for a slower machine of the same kind (how long
    the default run takes where a step costs 2.5–3.5× more), and such rows must not pool with the
    unthrottled machine's."""
    import os

    from asc_search.parallel import cpu_quota
    from asc_search.training.train import ONEDNN_ISA_LIMITS

    limit = next((f"{name}={os.environ[name]}" for name in ONEDNN_ISA_LIMITS
                  if os.environ.get(name)), None)
    described = _cpu()
    described = described if limit is None else f"{described.removesuffix(' (bf16)')} ({limit})"
    quota = cpu_quota()
    return described if quota is None else f"{described} (CPU quota {quota:.2f} cores)"


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model} (bf16)" if " avx512_bf16" in info else model


def where_ran(entry: dict[str, Any]) -> str:
    """The CPU and the corpus folder a row ran on ("unrecorded" for rows from before rows named
    them): benchmarks pair rows, and count them as done, only where both agree. bf16 and fp32
    machines train to different numbers; and the same student, seed and recipe on two machines
    of one CPU model, one reading the generator-v1 folder and one v2 (the same training and test
    clips), scored 55.2 and 53.4 % on test (stop 26): a difference as large as the seeds'
    spread."""
    return f"{entry.get('machine', 'unrecorded')}, {entry.get('data', 'corpus unrecorded')}"


def pack_predictions(logits: Any) -> str:
    """The class a model predicts for each clip (a byte per clip, base64): what a later paired
    comparison on the same clips needs (which clips it got right, which classes it names), in
    a few kilobytes per list."""
    import base64

    import numpy as np

    return base64.b64encode(np.asarray(logits).argmax(axis=1).astype(np.uint8).tobytes()).decode()


def unpack_predictions(text: str) -> Any:
    """The per-clip classes :func:`pack_predictions` stored."""
    import base64

    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).astype(np.int64)


def append_result(path: Path, entry: dict[str, Any]) -> None:
    """Print ``entry``, tagged with the :func:`machine` it ran on, and append it to ``path``."""
    entry = {**entry, "machine": entry.get("machine", machine())}
    print(json.dumps(entry), flush=True)
    with path.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")


def plot_accuracies(groups: dict[str, list[dict[str, Any]]], path: Path, *, title: str,
                    field: str = "test") -> Path:
    """Test macro accuracy per group of runs (one run per seed): each seed's accuracy with its
    95 % bootstrap interval over recordings (small, offset by seed), and the mean over seeds
    with its 95 % t interval (large). Every plotted accuracy shows its uncertainty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asc_search.training.evaluate import mean_sd_interval

    figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) + 2), 3.8))
    labelled: set[str] = set()  # each marker's legend entry once, whichever group shows it first

    def label(text: str) -> str | None:
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for x, runs in enumerate(groups.values()):
        runs = sorted(runs, key=lambda e: e["seed"])
        for k, run in enumerate(runs):
            value, (low, high) = run[field]["macro"], run[field]["macro_interval"]
            offset = 0.12 * (k - (len(runs) - 1) / 2)
            axis.errorbar(x + 0.25 + offset, 100 * value, yerr=[[100 * (value - low)],
                          [100 * (high - value)]], fmt="o", ms=3, c="grey", elinewidth=0.8,
                          label=label("one seed (95 % bootstrap)"))
        summary = mean_sd_interval([run[field]["macro"] for run in runs])
        if summary["n"] > 1:
            axis.errorbar(x, 100 * summary["mean"],
                          yerr=[[100 * (summary["mean"] - summary["low"])],
                                [100 * (summary["high"] - summary["mean"])]],
                          fmt="s", ms=7, c="tab:blue", capsize=4,
                          label=label("mean over seeds (95 % t)"))
        else:
            axis.plot(x, 100 * summary["mean"], "s", ms=7, mfc="none", c="tab:blue",
                      label=label("one seed only (no interval over seeds)"))
    axis.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right")
    axis.set_ylabel(f"{field} macro accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path
