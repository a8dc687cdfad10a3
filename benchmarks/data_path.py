"""The training data path against the model's step, and what a training process holds in memory.

One command: ``python benchmarks/data_path.py [--data NAME|DIR] [--split 5] [--batches 40]``.
In one process, on one split's cached training features (built first if needed), batch 256:

(a) gather: random rows read from the cache the way ``fit`` reads them (through the map, whose
    pages are given back above ``MAPPED_BYTES_KEPT``), and the same rows read with ``pread``
    (an alternative: no resident growth at all, but a system call per row);
(b) gather + augment + mixup with a full recipe: device responses (p 0.6), roll, frequency and
    time masks, Freq-MixStyle, mixup; everything ``fit`` does before the model;
(c) the DCASE baseline's training step (forward, backward, AdamW) at asc-search's precision on a
    batch already in memory;
(d) resident set: how much the process's file-backed resident set grows over one pass over
    every row, read as ``fit`` reads them (a map's touched pages count in the process; at
    TAU22's split 100 that would be the whole 4.65 GB file without the give-back).

Prints (c)/(b): the issue's target is ≥ 20, a data path fast enough to feed a GPU 20 times faster
than this CPU's step. Appends one row per run to ``data_path.jsonl``, tagged with the machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from results import add_result_options, append_result

from asc_search.architecture import ArchSpec, build_model
from asc_search.data.dataset import load_dataset
from asc_search.data.source import resolve_data
from asc_search.features.logmel import (
    MAPPED_BYTES_KEPT,
    READ_BETWEEN_RELEASES,
    FrontEndSettings,
    build_features,
)
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.training.augment import augment
from asc_search.training.device_responses import device_responses, eligible_rows
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import labelled_set, precision_for

BATCH = 256
RECIPE = TrainingRecipe(device_response_p=0.6, roll_seconds=0.1, freq_mask_bins=48,
                        time_mask_frames=20, mixstyle_p=0.4, mixstyle_alpha=0.3, mixup_alpha=0.3)


def resident_file_mb() -> float:
    """The process's file-backed resident set (mapped cache pages among them)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(work, batches: int) -> float:
    """Seconds per call, the first call (warm-up) not counted."""
    work()
    started = time.perf_counter()
    for _ in range(batches):
        work()
    return (time.perf_counter() - started) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    add_result_options(parser, Path(__file__).with_name("data_path.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    root = resolve_data(args.data, pm=pm, cache_dir=cache)
    dataset = load_dataset(root)
    files = dataset.split(args.split).train
    features = build_features(files, root=root, cache_dir=cache, stats=dataset.file_stats)
    train = labelled_set(dataset, features)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    settings = FrontEndSettings()
    responses = device_responses(RECIPE.device_responses, settings)
    eligible = eligible_rows(train.devices)
    fps = settings.sample_rate / settings.hop_length

    def rows() -> np.ndarray:
        return rng.choice(len(train), size=min(BATCH, len(train)), replace=False)

    def gather() -> None:
        features.batch(rows())

    def gather_pread() -> None:
        picked = np.sort(rows())
        out = np.empty((len(picked), *features.array.shape[1:]), dtype=features.array.dtype)
        row_bytes = out[0].nbytes
        with open(features.directory / "features.npy", "rb") as handle:
            for k, row in enumerate(picked):
                os.preadv(handle.fileno(), [out[k]], features.array.offset + int(row) * row_bytes)

    def data_path() -> None:
        picked = rows()
        x = augment(features.batch(picked), RECIPE, generator=generator, frames_per_second=fps,
                    silence=settings.silence, responses=responses,
                    eligible=eligible[torch.from_numpy(picked)])
        blend = float(rng.beta(RECIPE.mixup_alpha, RECIPE.mixup_alpha))
        x = blend * x + (1 - blend) * x[torch.from_numpy(rng.permutation(len(picked)))]

    precision = precision_for("cpu")
    model = build_model(ArchSpec(), pm=pm).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.005, weight_decay=1e-4)
    x = features.batch(rows()).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(train.labels[:len(x)])
    model.train()

    def step() -> None:
        with precision.autocast():
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = {"gather": timed(gather, args.batches),
               "gather_pread": timed(gather_pread, args.batches),
               "data_path": timed(data_path, args.batches),
               "model_step": timed(step, max(5, args.batches // 4))}
    every = np.arange(len(train))
    before = resident_file_mb()
    for start in range(0, len(every), BATCH):
        features.batch(every[start:start + BATCH])
    grown = resident_file_mb() - before
    row = {"data": args.data, "split": args.split, "clips": len(train),
           "array_mb": round(features.array.shape[0] * int(np.prod(features.array.shape[1:]))
                             * features.array.dtype.itemsize / 2**20, 1),
           "threads": args.threads, "batch": BATCH,
           "ms_per_batch": {k: round(v * 1000, 2) for k, v in seconds.items()},
           "step_over_data_path": round(seconds["model_step"] / seconds["data_path"], 1),
           "mapped_bytes_kept_mb": MAPPED_BYTES_KEPT / 2**20,
           "read_between_releases_mb": READ_BETWEEN_RELEASES / 2**20,
           "file_rss_growth_mb": round(grown, 1),
           # Timings are only comparable on an idle machine: the load says whether it was.
           "load_average": round(os.getloadavg()[0], 2), "cores": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d")}
    append_result(args.out, row)
    print(f"model step / data path: {row['step_over_data_path']}× (target ≥ 20)")


if __name__ == "__main__":
    main()
