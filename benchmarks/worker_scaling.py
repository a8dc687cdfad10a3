"""Worker scaling: trials per hour with 1 and 2 local workers on one study, same workload.

One command: ``python benchmarks/worker_scaling.py [--candidates 8] [--workers 1 2]``.
The workload is fixed so the runs compare: the DCASE baseline and the seed's S1-S3, plus
randomly drawn candidates that fit 30 M MACs / 128 kB (seed 0), all queued in a fresh study on the
default SQLite storage, on the embedded corpus's 5 % split with the default proxy schedule. Each
run is ``asc-search run --n-jobs N`` minus promotion: N worker processes (one in-process when N is
1) share the cores (torch threads divided) and pop the queued trials until none is left. The wall
time includes starting the workers and loading the cached data and teacher logits. The first
configuration is the reference; later ones print their speed-up against it. Results are appended
to ``--out``; ``--report`` prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import optuna
from results import append_result, read_results

from asc_search.architecture import build_model
from asc_search.complexity import count_complexity
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.lifecycle import (
    WorkerJob,
    create_or_resume,
    load_resources,
    run_workers,
    seed_params,
    split_threads,
)
from asc_search.study.objective import SearchSettings
from asc_search.study.space import read_space, space_from_dict


def workload(space, settings: SearchSettings, *, pm, n: int, seed: int) -> list[dict]:
    """The seed trials, then random feasible candidates until there are ``n``."""
    chosen = list(seed_params(space).values())[:n]
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(chosen) < n:
        trial = draw.ask()
        candidate = space.suggest(trial)
        card = count_complexity(build_model(candidate.spec, pm=pm),
                                storage_dtype=settings.storage_dtype)
        if card.fits(max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes):
            chosen.append(dict(trial.params))
        draw.tell(trial, 0.0)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("worker_scaling.jsonl"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm, cache = build_plugin_manager(), cache_dir()
    folder = cache / "benchmarks" / "worker-scaling"
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'studies.db'}"
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=pm)
    settings = SearchSettings(space=raw, space_source=source, data=args.data, split=args.split)
    # Data, features and teacher logits into the cache first, as ``run`` does before its workers.
    load_resources(settings, pm=pm, cache=cache, studies=folder, device="cpu", progress=True)
    candidates = workload(space, settings, pm=pm, n=args.candidates, seed=args.seed)
    reference = None
    for workers in args.workers:
        name = f"scaling-{workers}w-{int(time.time())}"
        study = create_or_resume(name=name, storage_url=url, settings=settings,
                                 sampler="random", seed=args.seed, seed_trials=False, space=space)
        for params in candidates:
            study.enqueue_trial(params)
        jobs = [WorkerJob(study=name, storage_url=url, sampler="random", seed=args.seed + k,
                          n_trials=len(candidates), timeout=None,
                          threads=split_threads(workers) if workers > 1 else None,
                          cache=str(cache), studies=str(folder)) for k in range(workers)]
        started = time.perf_counter()
        run_workers(jobs, announce=lambda line: print(line, flush=True), pm=pm)
        seconds = time.perf_counter() - started
        trials = optuna.load_study(study_name=name, storage=url).trials
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        reference = reference or seconds
        append_result(args.out, {
            "date": time.strftime("%Y-%m-%d"), "workers": workers,
            "candidates": len(candidates), "completed": len(done),
            "trials": len(trials), "seconds": round(seconds, 1),
            "trials_per_hour": round(3600 * len(done) / seconds, 1),
            "train_seconds": round(sum(t.user_attrs.get("train_seconds", 0.0) for t in done), 1),
            "speedup_vs_first": round(reference / seconds, 2),
            "distinct_candidates": len({str(sorted(t.params.items())) for t in done}),
        })


def report(path: Path) -> str:
    lines = ["| date | workers | trials | wall s | trials / hour | sum of trial training s | "
             "speed-up vs first | distinct candidates |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in read_results(path):
        lines.append(f"| {e['date']} | {e['workers']} | {e['completed']}/{e['candidates']} | "
                     f"{e['seconds']:.0f} | "
                     f"{e['trials_per_hour']:.0f} | {e['train_seconds']:.0f} | "
                     f"{e['speedup_vs_first']:.2f}× | {e['distinct_candidates']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
