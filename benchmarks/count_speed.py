"""How long the DCASE counter and the pre-check take per candidate, against plain torchinfo.

One command: ``python benchmarks/count_speed.py [--n 40] [--threads 1]``. Samples candidates from
the shipped spaces, then in one process times building each network, counting it with
asc-search's counter (torchinfo, the official counter, plus the report of parameters outside
leaf layers: the whole pre-check before issue 32), the pre-check (``checked_complexity``: that
count, then every other registered counter, the built-in fvcore trace with the DCASE rules
written out, held to it module by module), a bare ``torchinfo.summary`` and the fvcore counter
alone; prints medians, ratios and how many counts agree. ``--threads`` sets torch's intra-op
threads (default: torch's own), since a busy machine makes two-thread timings mostly noise.
``--trials N`` also times N sampled trials per shipped space through a trial's whole pre-check
(settle the plan, which fills a budget-filling plan's budget by counting up to 17 networks, build
the final network, count it), with the plain count and with the cross-checked one, which traces
each network topology once per process (``network_topology``), from none traced, as a search
starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import optuna
import torch
import torchinfo

from asc_search import complexity
from asc_search.architecture import build_model
from asc_search.complexity import DCASE_INPUT_SHAPE, checked_complexity, count_complexity
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import settle
from asc_search.study.space import load_space

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dcase_fvcore import dcase_macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="candidates per space")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--trials", type=int, default=0,
                        help="also time a trial's whole pre-check for this many per space")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm = build_plugin_manager()
    build_s, ours_s, checked_s, official_s, fvcore_s = [], [], [], [], []
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
            checked = checked_complexity(model, pm=pm)
            checked_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            summary = torchinfo.summary(model, input_size=DCASE_INPUT_SHAPE, verbose=0)
            official_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            traced = dcase_macs(model)
            fvcore_s.append(time.perf_counter() - started)
            agree += (card.macs, card.params) == (summary.total_mult_adds, summary.total_params) \
                and traced == card.macs and checked == card
    ours, checks, official, fvcore = (statistics.median(x)
                                      for x in (ours_s, checked_s, official_s, fvcore_s))
    print(f"candidates: {len(ours_s)} (two spaces), torch threads {torch.get_num_threads()}; "
          f"counter = pre-check = torchinfo = fvcore: {agree}/{len(ours_s)}")
    print(f"build network:            median {statistics.median(build_s) * 1e3:6.1f} ms")
    print(f"asc-search DCASE counter: median {ours * 1e3:6.1f} ms (max {max(ours_s) * 1e3:.1f} ms)")
    print(f"pre-check (both counters): median {checks * 1e3:5.1f} ms "
          f"(max {max(checked_s) * 1e3:.1f} ms)")
    print(f"bare torchinfo.summary:   median {official * 1e3:6.1f} ms")
    print(f"fvcore counter alone:     median {fvcore * 1e3:6.1f} ms")
    print(f"ratio counter / torchinfo: {ours / official:.2f}; fvcore / counter: {fvcore / ours:.2f}; "
          f"pre-check / counter (the pre-check before issue 32): {checks / ours:.2f}")
    for name in ("sscp_joint", "sscp_mobile", "cp_mobile") if args.trials else ():
        plain, crossed = trial_prechecks(name, args.trials, pm=pm)
        print(f"trial pre-check, {name}: median {plain * 1e3:.0f} ms counted, "
              f"{crossed * 1e3:.0f} ms cross-checked: {crossed / plain:.2f}")


def trial_prechecks(space_name: str, n: int, *, pm) -> tuple[float, float]:
    """Median seconds of a trial's pre-check (settle, build, count) of ``n`` sampled candidates,
    with ``count_complexity`` (before issue 32) and with ``checked_complexity``."""
    space = load_space(space_name, pm=pm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    plain, crossed = [], []
    # As a search starts: no topology cross-checked yet (the loop above traced some), so every
    # first trace of a topology is in these figures.
    complexity._AGREED_TOPOLOGIES.clear()
    for _ in range(n):
        sampled = space.suggest(study.ask())
        for times, count in ((plain, count_complexity),
                             (crossed, lambda model: checked_complexity(model, pm=pm))):
            started = time.perf_counter()
            candidate = settle(sampled, pm=pm, max_macs=30_000_000, max_param_bytes=128_000)
            count(build_model(candidate.spec, pm=pm))
            times.append(time.perf_counter() - started)
    return statistics.median(plain), statistics.median(crossed)


if __name__ == "__main__":
    main()
