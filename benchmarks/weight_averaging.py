"""Does a weight average take training noise out of a candidate's score? (issue 30)

One command: ``python benchmarks/weight_averaging.py [--split 5] [--plans baseline S1]
[--epochs 8 32] [--decays 0 0.99 0.998] [--seeds 0 1 … 9]``; ``--report`` prints the table,
``--plot FILE`` draws every row's validation accuracy with its intervals.

Why: the search ranks candidates by one training each, and one training of the same candidate
moves by several points from seed to seed (``proxy_fidelity.py``: 2.5–3.2 points sd of a
retest difference at the proxy's 8 epochs, 1.7 at 32). Any lever that narrows that spread
sharpens every comparison the search makes; the recipe's ``ema_decay`` (the network a run
returns is a moving average of its weights over the steps) is the cheapest one, costing nothing
per step. This measures it directly, on the seed's own plans, trained exactly as the default
``asc-search run`` trains its trials (``train_candidate`` with the default settings for the
split, the product's default teachers, KD), with the decay as the study recipe's only change.

For each plan, length (``--epochs``, in the search's epoch budget: 8 is the proxy, 32 the last
rung) and seed, the plan is trained once per decay (0 is off); the seed sets initialisation,
batch order and augmentation, so rows of one seed differ only in the average. A pruned plan's
parent is trained once per decay with parent seed 0 and shared by the seeds (as within one
study), so its rows measure the fine-tune's noise, as the search sees it. Only validation is
read: this chooses a default, and test is not for choosing.

``--report`` gives per plan, length and decay the validation mean ± sd over seeds (the sd is
the training noise: two single trainings are told apart at 95 % only when they differ by more
than 1.96 · √2 · sd), the sd's 95 % interval (χ²), the ratio of the sd to the one without the
average with a bootstrap interval over seeds, and the paired difference from no average (t
interval). Rows are appended to ``--out`` and skipped on a rerun (same plan, length, decay,
seed, split, machine and corpus folder).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results import (
    add_result_options,
    append_result,
    machine,
    plot_accuracies,
    read_results,
    where_ran,
)
from seed_plans import candidates

from asc_search.data.source import resolve_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.lifecycle import load_resources
from asc_search.study.objective import evaluation_attrs, train_candidate
from asc_search.training.evaluate import mean_sd_interval

REVISION = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--plans", nargs="*", default=["baseline", "S1"])
    parser.add_argument("--epochs", type=int, nargs="*", default=[8])
    parser.add_argument("--decays", type=float, nargs="*", default=[0.0, 0.99, 0.998])
    parser.add_argument("--seeds", type=int, nargs="*", default=list(range(10)))
    add_result_options(parser, Path(__file__).with_name("weight_averaging.jsonl"))
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        if args.plot:
            print(plot(args.out, args.plot))
        return
    torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    seed_settings, plans = candidates(pm)
    # The default run's settings for the split (its batch, its recipe): its data and its
    # teachers, loaded as a search worker loads them (the same cache entries); the decay is the
    # students' setting only, added below.
    settings = replace(seed_settings, data=args.data, split=args.split, recipe={})
    folder = cache / "weight_averaging" / f"split{args.split}"
    resources = load_resources(settings, pm=pm, cache=cache, studies=folder, device="cpu",
                               progress=False)
    corpus = resolve_data(args.data, pm=pm, cache_dir=cache).name  # prepared by now: a lookup
    here = where_ran({"machine": machine(), "data": corpus})
    done = {_key(e) for e in read_results(args.out)
            if e.get("revision") == REVISION and where_ran(e) == here}
    for epochs in args.epochs:
        for seed in args.seeds:
            for name in args.plans:
                for decay in args.decays:
                    key = (name, epochs, decay, seed, args.split)
                    if key in done:
                        continue
                    trained = replace(settings, recipe={"ema_decay": decay} if decay else {})
                    started = time.process_time()
                    outcome = train_candidate(
                        plans[name], settings=trained, pm=pm, train=resources.train,
                        validation=resources.validation, teacher_logits=resources.teacher_logits,
                        precision=resources.precision, epochs=epochs, seed=seed, parents=folder,
                        parent_seed=0)
                    append_result(args.out, {
                        "revision": REVISION, "plan": name, "epochs": epochs, "decay": decay,
                        "seed": seed, "split": args.split, "data": corpus,
                        "threads": torch.get_num_threads(), "date": date.today().isoformat(),
                        "parent_trained": outcome.parent_trained,
                        "cpu_seconds": round(time.process_time() - started
                                             + outcome.restored_cpu_seconds, 1),
                        "training_macs": outcome.training_macs,
                        "validation": evaluation_attrs(outcome.validation)})


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["plan"], entry["epochs"], entry["decay"], entry["seed"], entry["split"])


def _groups(path: Path) -> dict[tuple[Any, ...], dict[float, dict[int, float]]]:
    """Validation accuracy by (where, split, plan, epochs), then decay, then seed."""
    groups: dict[tuple[Any, ...], dict[float, dict[int, float]]] = {}
    for e in read_results(path):
        if e.get("revision") != REVISION:
            continue
        group = groups.setdefault((where_ran(e), e["split"], e["plan"], e["epochs"]), {})
        group.setdefault(e["decay"], {})[e["seed"]] = e["validation"]["macro"]
    return groups


def sd_interval(values: list[float]) -> tuple[float, float]:
    """The 95 % interval of a standard deviation over ``values`` (normal data): (n − 1) s² / σ²
    is χ² with n − 1 degrees of freedom, whose quantiles come from the Wilson–Hilferty cube
    (within 1 % of the exact ones from 3 degrees of freedom up)."""
    n = len(values)
    s2 = float(np.var(values, ddof=1))
    k = n - 1

    def chi2_quantile(z: float) -> float:
        return k * (1 - 2 / (9 * k) + z * np.sqrt(2 / (9 * k))) ** 3

    return (float(np.sqrt(k * s2 / chi2_quantile(1.96))),
            float(np.sqrt(k * s2 / chi2_quantile(-1.96))))


def sd_ratio_interval(a: list[float], b: list[float], *, draws: int = 4000,
                      seed: int = 0) -> tuple[float, float, float]:
    """sd(a) / sd(b) over seeds paired by position, with a 95 % bootstrap interval that
    resamples the seeds (both arms together, as they share a seed's initialisation and order)."""
    x, y = np.asarray(a), np.asarray(b)
    if y.std(ddof=1) < 1e-9:  # no spread without the average: no ratio to give
        return float("nan"), float("nan"), float("nan")
    ratio = float(x.std(ddof=1) / y.std(ddof=1))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), size=(draws, len(x)))
    sx, sy = x[picks].std(axis=1, ddof=1), y[picks].std(axis=1, ddof=1)
    ratios = sx / np.where(sy > 1e-9, sy, np.nan)
    ratios = ratios[np.isfinite(ratios)]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return ratio, float(low), float(high)


def report(path: Path) -> str:
    lines = ["| where | split | plan | epochs | decay | seeds | validation % mean ± sd | sd (95 %) "
             "| resolves (1.96·√2·sd) | sd ÷ sd without (95 % bootstrap) "
             "| − without, paired (95 % t) |", "|" + " --- |" * 11]
    for (where, split, plan, epochs), by_decay in sorted(_groups(path).items()):
        off = by_decay.get(0.0, {})
        for decay, by_seed in sorted(by_decay.items()):
            seeds = sorted(by_seed)
            values = [by_seed[s] for s in seeds]
            summary = mean_sd_interval(values)
            row = [where, f"{split} %", plan, str(epochs), f"{decay:g}", str(len(seeds)),
                   f"{100 * summary['mean']:.1f} ± {100 * summary['sd']:.1f}"]
            if len(values) > 2:
                low, high = sd_interval(values)
                row += [f"{100 * low:.1f}–{100 * high:.1f}",
                        f"{100 * 1.96 * np.sqrt(2) * summary['sd']:.1f} points"]
            else:
                row += ["–", "–"]
            paired = [s for s in seeds if s in off]
            if decay and len(paired) > 2:
                ratio, low, high = sd_ratio_interval([by_seed[s] for s in paired],
                                                     [off[s] for s in paired])
                diff = mean_sd_interval([100 * (by_seed[s] - off[s]) for s in paired])
                row += [f"{ratio:.2f} ({low:.2f}–{high:.2f})" if np.isfinite(ratio) else "–",
                        f"{diff['mean']:+.1f} ± {diff['sd']:.1f} ({diff['low']:+.1f} to "
                        f"{diff['high']:+.1f})"]
            else:
                row += ["", ""]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(path: Path, figure: Path) -> Path:
    """Each row's validation accuracy (95 % bootstrap) and each group's mean (95 % t)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(read_results(path), key=lambda e: (e["plan"], e["epochs"], e["decay"])):
        if e.get("revision") == REVISION:
            label = f"{e['plan']}, {e['epochs']} ep, ema {e['decay']:g}"
            groups.setdefault(label, []).append(e)
    return plot_accuracies(groups, figure, field="validation",
                           title="weight averaging: validation over seeds (embedded corpus)")


if __name__ == "__main__":
    main()
