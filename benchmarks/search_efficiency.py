"""Search efficiency: hypervolume of (validation accuracy, MACs) after N trials, per sampler.

One command: ``python benchmarks/search_efficiency.py [--trials 16] [--seeds 0 1 2]``.
For each sampler (tpe, nsga2, random) and seed, a fresh study searches the default space on the
embedded corpus's 5 % split under 30 M MACs / 128 kB, without the seed trials (they would be the
same for every sampler). After every trial the hypervolume of the feasible front is recorded,
with the reference point (chance accuracy 10 %, the MACs budget) and MACs as a fraction of the
budget, so 0.9 would be a perfect classifier at zero cost. The seconds spent on infeasible
candidates are the wall time of those trials minus their counting, which the search promises is
0: they are never trained. Results are appended as JSON lines to ``--out``; a rerun skips the
(sampler, seed) pairs already recorded. ``--report`` prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import optuna
import torch
from results import append_result, read_results

from asc_search.objective import SearchSettings
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.search_space import read_space, space_from_dict
from asc_search.study import WorkerJob, create_or_resume, feasible, run_worker

SAMPLERS = ("tpe", "nsga2", "random")
CHANCE = 0.1


def hypervolume(points: list[tuple[float, float]], *, max_macs: float) -> float:
    """Area dominated by (accuracy, MACs) points, above chance and under the MACs budget."""
    front = sorted((macs / max_macs, acc) for acc, macs in points
                   if acc > CHANCE and macs <= max_macs)
    area, best = 0.0, CHANCE
    # Sweep from the cheapest point: each point adds the accuracy it gains over cheaper ones,
    # held from its MACs to the budget.
    for cost, acc in front:
        if acc > best:
            area += (acc - best) * (1.0 - cost)
            best = acc
    return area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="*", default=list(SAMPLERS))
    parser.add_argument("--proxy-epochs", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("search_efficiency.jsonl"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm, cache = build_plugin_manager(), cache_dir()
    folder = cache / "benchmarks" / "search-efficiency"
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'studies.db'}"
    done = {(e["sampler"], e["seed"]) for e in read_results(args.out)}
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=pm)
    settings = SearchSettings(space=raw, space_source=source, data=args.data, split=args.split,
                              proxy_epochs=args.proxy_epochs, teacher_epochs=args.teacher_epochs)
    for seed in args.seeds:
        for sampler in args.samplers:
            if (sampler, seed) in done:
                continue
            name = f"{sampler}-seed{seed}-{int(time.time())}"
            create_or_resume(name=name, storage_url=url, settings=settings, sampler=sampler,
                             seed=seed, seed_trials=False, space=space)
            started = time.perf_counter()
            run_worker(WorkerJob(study=name, storage_url=url, sampler=sampler, seed=seed,
                                 n_trials=args.trials, timeout=None, studies=str(folder)),
                       pm=pm, announce=lambda line: print(line, flush=True))
            seconds = time.perf_counter() - started
            trials = optuna.load_study(study_name=name, storage=url).trials
            curve, points = [], []
            for trial in trials:
                if feasible(trial):
                    points.append((trial.values[0], trial.user_attrs["macs"]))
                curve.append(round(hypervolume(points, max_macs=settings.max_macs), 4))
            infeasible = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
            entry = {
                "sampler": sampler, "seed": seed, "trials": len(trials),
                "hypervolume": curve, "feasible": len(points), "infeasible": len(infeasible),
                "failed": sum(t.state != optuna.trial.TrialState.COMPLETE for t in trials),
                "best_validation": max((p[0] for p in points), default=None),
                "train_seconds": round(sum(t.user_attrs.get("train_seconds", 0.0)
                                           for t in trials), 1),
                "infeasible_train_seconds": sum(t.user_attrs["train_seconds"] for t in infeasible),
                "infeasible_wall_seconds": round(sum(
                    (t.datetime_complete - t.datetime_start).total_seconds()
                    for t in infeasible), 2),
                "seconds": round(seconds, 1), "proxy_epochs": args.proxy_epochs,
            }
            append_result(args.out, entry)


def report(path: Path) -> str:
    entries = read_results(path)
    lines = ["| sampler | seeds | trials | hypervolume after N/2 | after N (mean ± sd) | "
             "best validation % (mean) | feasible / infeasible | training s on infeasible | "
             "wall s of infeasible trials (counting only) | minutes per study |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for sampler in SAMPLERS:
        runs = [e for e in entries if e["sampler"] == sampler]
        if not runs:
            continue
        n = min(e["trials"] for e in runs)
        final = [e["hypervolume"][n - 1] for e in runs]
        half = [e["hypervolume"][n // 2 - 1] for e in runs]
        spread = statistics.stdev(final) if len(final) > 1 else 0.0
        best = [e["best_validation"] for e in runs if e["best_validation"] is not None]
        lines.append(
            f"| {sampler} | {len(runs)} | {n} | {statistics.mean(half):.4f} | "
            f"{statistics.mean(final):.4f} ± {spread:.4f} | "
            f"{100 * statistics.mean(best):.1f} | "
            f"{sum(e['feasible'] for e in runs)} / {sum(e['infeasible'] for e in runs)} | "
            f"{sum(e['infeasible_train_seconds'] for e in runs):.0f} | "
            f"{sum(e['infeasible_wall_seconds'] for e in runs):.1f} | "
            f"{statistics.mean(e['seconds'] for e in runs) / 60:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
