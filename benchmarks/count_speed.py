"""How long the DCASE counter takes per candidate, against plain torchinfo and the old fvcore path.

One command: ``python benchmarks/count_speed.py [--n 40]``. Samples candidates from the shipped
spaces, then in one process times building each network, counting it with asc-search's counter
(torchinfo, the official counter, plus the report of parameters outside leaf layers), a bare
``torchinfo.summary`` and the independent fvcore trace the tests cross-check with (the counter
asc-search used before); prints medians, ratios and how many counts agree.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import optuna
import torchinfo

from asc_search.architecture import build_model
from asc_search.complexity import DCASE_INPUT_SHAPE, count_complexity
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.space import load_space

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dcase_fvcore import dcase_macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="candidates per space")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm = build_plugin_manager()
    build_s, ours_s, official_s, fvcore_s = [], [], [], []
    agree = 0
    for name in ("sscp_mobile", "cp_mobile"):
        space = load_space(name, pm=pm)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(args.n):
            spec = space.suggest(study.ask()).spec
            started = time.perf_counter()
            model = build_model(spec, pm=pm)
            build_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            card = count_complexity(model)
            ours_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            summary = torchinfo.summary(model, input_size=DCASE_INPUT_SHAPE, verbose=0)
            official_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            traced = dcase_macs(model)
            fvcore_s.append(time.perf_counter() - started)
            agree += (card.macs, card.params) == (summary.total_mult_adds, summary.total_params) \
                and traced == card.macs
    ours, official, fvcore = (statistics.median(x) for x in (ours_s, official_s, fvcore_s))
    print(f"candidates: {len(ours_s)} (two spaces); counter = torchinfo = fvcore cross-check: "
          f"{agree}/{len(ours_s)}")
    print(f"build network:            median {statistics.median(build_s) * 1e3:6.1f} ms")
    print(f"asc-search DCASE counter: median {ours * 1e3:6.1f} ms (max {max(ours_s) * 1e3:.1f} ms)")
    print(f"bare torchinfo.summary:   median {official * 1e3:6.1f} ms")
    print(f"fvcore trace (old path):  median {fvcore * 1e3:6.1f} ms")
    print(f"ratio counter / torchinfo: {ours / official:.2f}; fvcore / counter: {fvcore / ours:.2f}")


if __name__ == "__main__":
    main()
