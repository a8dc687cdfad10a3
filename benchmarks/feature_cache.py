"""How much faster a training batch comes from the feature cache than from the front-end.

One command: ``python benchmarks/feature_cache.py [--data NAME|DIR] [--batch 256]``. In one
process it times (a) what the DCASE baseline does per batch (read WAVs, resample, log-mel) and
(b) gathering the same batch of random rows from the memory-mapped cache, and prints the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from asc_search.data.audio import read_clip
from asc_search.data.dataset import load_dataset
from asc_search.data.source import resolve_data
from asc_search.features.logmel import FrontEndSettings, LogMelFrontEnd, build_features
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    cache = cache_dir()
    root = resolve_data(args.data, pm=build_plugin_manager(), cache_dir=cache)
    files = load_dataset(root).split(args.split).train
    started = time.perf_counter()
    features = build_features(files, root=root, cache_dir=cache)
    build_seconds = time.perf_counter() - started
    first_state = "cache hit, cached by an earlier run" if features.cache_hit else "built"
    started = time.perf_counter()
    features = build_features(files, root=root, cache_dir=cache)
    hit_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)

    front_end = LogMelFrontEnd(FrontEndSettings())
    frontend_times = []
    for _ in range(3):
        rows = rng.choice(len(files), args.batch, replace=False)
        started = time.perf_counter()
        waves = [read_clip(root / files[r]) for r in rows]
        stacked = torch.from_numpy(np.stack([w.samples for w in waves]))
        computed = front_end(stacked, waves[0].sample_rate)
        frontend_times.append(time.perf_counter() - started)
    frontend_seconds = float(np.median(frontend_times))

    cached_times = []
    for _ in range(args.repeats):
        rows = rng.choice(len(files), args.batch, replace=False)
        started = time.perf_counter()
        batch = features.batch(rows)
        cached_times.append(time.perf_counter() - started)
    cached_seconds = float(np.median(cached_times))
    assert batch.shape[0] == computed.shape[0] == args.batch

    print(f"files: {len(files):,} ({args.data}, split {args.split}); batch {args.batch}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"first request:  {build_seconds:8.3f} s ({first_state})")
    print(f"second request: {hit_seconds:8.3f} s ({'cache hit' if features.cache_hit else 'built'})")
    a_ms, b_ms = frontend_seconds * 1e3, cached_seconds * 1e3
    print(f"(a) front-end per batch (read + resample + log-mel), median of 3: {a_ms:8.1f} ms")
    print(f"(b) cached batch gather, median of {args.repeats}:                          {b_ms:8.1f} ms")
    print(f"ratio a/b: {frontend_seconds / cached_seconds:.0f}x")


if __name__ == "__main__":
    main()
