"""Does the search's short proxy rank candidates as full-length training would? (issue 12)

One command: ``python benchmarks/proxy_fidelity.py [--n 10] [--seed 0]``. With the default run's
settings (embedded corpus, 5 % split, ``wide_cp_mobile`` teacher 20 epochs, space ``sscp_fill``,
proxy 8 epochs, promotion 32 epochs; the cache folder's data, teacher and parents are reused when
there), ``--n`` candidates are drawn at random (so the ranking is tested over the space, not
around one optimum) and trained as search trials, with no early stopping; then every one is
trained again at the promotion length, as ``asc-search distill`` trains a finalist. The figure is
Kendall's τ between the proxy validation score and the promoted validation score. Test is never
read. Results are appended to ``--out`` (default benchmarks/proxy_fidelity.jsonl): the proxy
stage as one line, then one line per promoted candidate; a rerun promotes what is missing.
"""

from __future__ import annotations

import argparse
import itertools
import time
from datetime import date
from pathlib import Path

import optuna
import torch
from results import append_result, read_results

from asc_search.objective import SearchSettings, run_trial, train_candidate, trial_candidate
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.search_space import read_space
from asc_search.study import load_resources


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b: concordant minus discordant pairs over the pairs not tied in each list."""
    concordant = discordant = ties_x = ties_y = 0
    for (a, b), (c, d) in itertools.combinations(zip(x, y, strict=True), 2):
        dx, dy = a - c, b - d
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    n1 = concordant + discordant + ties_x
    n2 = concordant + discordant + ties_y
    return (concordant - discordant) / (n1 * n2) ** 0.5 if n1 and n2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("proxy_fidelity.jsonl"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    raw, source = read_space("sscp_fill")
    settings = SearchSettings(space=raw, space_source=source, split=5, objective="accuracy")
    resources = load_resources(settings, pm=pm, cache=cache, studies=cache / "proxy_fidelity",
                               device="cpu", progress=False)
    entries = [e for e in read_results(args.out) if (e["n"], e["seed"]) == (args.n, args.seed)]
    proxy = next((e for e in entries if e["stage"] == "proxy"), None)
    if proxy is None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=args.seed),
                                    pruner=optuna.pruners.NopPruner())
        started = time.perf_counter()
        study.optimize(lambda trial: run_trial(trial, resources), n_trials=args.n)
        proxy = {"stage": "proxy", "n": args.n, "seed": args.seed,
                 "date": date.today().isoformat(), "seconds": round(time.perf_counter() - started),
                 "trials": [{"trial": t.number, "params": t.params, "validation": t.value,
                             "macs": t.user_attrs.get("macs")} for t in study.trials]}
        append_result(args.out, proxy)
    promoted = {e["trial"] for e in entries if e["stage"] == "promoted"}
    for row in proxy["trials"]:
        if row["trial"] in promoted:
            continue
        candidate = trial_candidate(resources.space, row["params"], settings=settings, pm=pm)
        outcome = train_candidate(candidate, settings=settings, pm=pm, train=resources.train,
                                  validation=resources.validation,
                                  teacher_logits=resources.teacher_logits,
                                  precision=resources.precision, epochs=settings.promote_epochs,
                                  seed=0, parents=cache)
        append_result(args.out, {"stage": "promoted", "n": args.n, "seed": args.seed,
                                 "trial": row["trial"], "proxy_validation": row["validation"],
                                 "validation": outcome.validation.macro_accuracy,
                                 "validation_interval": list(outcome.validation.macro_interval),
                                 "seconds": round(outcome.seconds, 1)})
    rows = [e for e in read_results(args.out)
            if e["stage"] == "promoted" and (e["n"], e["seed"]) == (args.n, args.seed)]
    tau = kendall_tau([r["proxy_validation"] for r in rows], [r["validation"] for r in rows])
    print(f"Kendall tau over {len(rows)} candidates (proxy {settings.proxy_epochs} epochs against "
          f"promoted {settings.promote_epochs}): {tau:.2f}")


if __name__ == "__main__":
    main()
