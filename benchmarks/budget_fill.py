"""How much of the budget sampled candidates use, and how many break it: uniform against filling.

One command: ``python benchmarks/budget_fill.py [--n 100] [--seed 0]``. Draws ``--n`` candidates
at random (Optuna's RandomSampler, the sampler TPE starts with) from the uniform space
``sscp_mobile`` and from the budget-filling default ``sscp_fill``, settles each as a trial would
(``asc_search.pruning.plans.settle``), and counts its final network with the DCASE counter against
30 M MACs and 128,000 bytes (float16). No training: this is the pre-check every trial runs. It
records per space the share over budget, and for the feasible ones the share of the MACs budget
and of the bytes budget used (median and 10th percentile), and the seconds per candidate. Each
space's result is appended to ``--out`` (default benchmarks/budget_fill.jsonl); a rerun skips a
(space, n, seed) already there.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import numpy as np
import optuna
from results import append_result, read_results

from asc_search.architecture import build_model
from asc_search.complexity import count_complexity
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import settle
from asc_search.study.space import load_space

MACS, BYTES = 30_000_000, 128_000


def measure(space_name: str, *, n: int, seed: int, pm) -> dict:
    space = load_space(space_name, pm=pm)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    macs, param_bytes = [], []
    started = time.perf_counter()
    for _ in range(n):
        trial = study.ask()
        candidate = settle(space.suggest(trial), pm=pm, max_macs=MACS, max_param_bytes=BYTES)
        card = count_complexity(build_model(candidate.spec, pm=pm))
        macs.append(card.macs)
        param_bytes.append(card.param_bytes)
        study.tell(trial, 0.0)
    macs_used, bytes_used = np.array(macs) / MACS, np.array(param_bytes) / BYTES
    fits = (macs_used <= 1) & (bytes_used <= 1)
    return {"space": space_name, "n": n, "seed": seed, "date": date.today().isoformat(),
            "over_budget": round(float(1 - fits.mean()), 3),
            "macs_used_median": round(float(np.median(macs_used[fits])), 3),
            "macs_used_p10": round(float(np.percentile(macs_used[fits], 10)), 3),
            "bytes_used_median": round(float(np.median(bytes_used[fits])), 3),
            "larger_share_median": round(float(np.median(np.maximum(macs_used, bytes_used)[fits])),
                                         3),
            "seconds_per_candidate": round((time.perf_counter() - started) / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("budget_fill.jsonl"))
    args = parser.parse_args()
    pm = build_plugin_manager()
    done = {(e["space"], e["n"], e["seed"]) for e in read_results(args.out)}
    for space_name in ("sscp_mobile", "sscp_fill"):
        if (space_name, args.n, args.seed) not in done:
            append_result(args.out, measure(space_name, n=args.n, seed=args.seed, pm=pm))


if __name__ == "__main__":
    main()
