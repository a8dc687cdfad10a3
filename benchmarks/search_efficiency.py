"""Search efficiency: hypervolume of (validation accuracy, MACs) per trial and per CPU-minute.

One command: ``python benchmarks/search_efficiency.py [--trials 16] [--seeds 0 1 2]
[--space sscp_mobile|sscp_fill] [--minutes M [--cpu-minutes] --threads 1]``.
For each sampler (tpe, nsga2, random) and seed, a fresh Pareto study searches the space on the
embedded corpus's 5 % split under 30 M MACs / 128 kB, without the seed trials (they would be the
same for every sampler). ``sscp_mobile`` is the uniform space the search used before budget
filling; ``sscp_fill`` is the budget-filling one, given a ``macs_fraction`` dimension (0.2–1) so
that its Pareto mode can trade MACs for accuracy. ``--minutes`` gives every study the same time
instead of the same trials: wall time (run with ``--threads 1`` on an otherwise idle core, so wall
time is CPU time), or with ``--cpu-minutes`` the process's CPU time, so that studies can run beside
other work without the load changing what each gets; a study starts no trial once its time is
spent. The report then compares hypervolume at equal time, at the shortest study's end, which is
what a user with a fixed machine budget gets. Every trial's completion time is recorded (CPU
seconds since the study started, for a CPU-timed study).
After every trial the hypervolume of the feasible front is recorded,
with the reference point (chance accuracy 10 %, the MACs budget) and MACs as a fraction of the
budget, so 0.9 would be a perfect classifier at zero cost. The seconds spent on infeasible
candidates are the wall time of those trials minus their counting, which the search promises is
0: they are never trained. Results are appended as JSON lines to ``--out``; a rerun skips the
(sampler, seed) pairs already recorded. ``--report`` prints the table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
from results import append_result, read_results

from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.lifecycle import (
    WorkerJob,
    create_or_resume,
    feasible,
    load_resources,
    make_sampler,
    run_worker,
)
from asc_search.study.objective import SearchSettings, run_trial
from asc_search.study.space import read_space, space_from_dict

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
    # The product's own proxy length: a 2-epoch proxy (this option's first default) leaves every
    # candidate near chance at the product's batch, so every hypervolume ties.
    parser.add_argument("--proxy-epochs", type=int,
                        default=SearchSettings.__dataclass_fields__["proxy_epochs"].default)
    parser.add_argument("--space", default="sscp_mobile", choices=["sscp_mobile", "sscp_fill"])
    parser.add_argument("--minutes", type=float, default=None,
                        help="time per study instead of --trials (with --threads 1: CPU-minutes)")
    parser.add_argument("--cpu-minutes", action="store_true",
                        help="--minutes of this process's CPU time, not of the wall clock")
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
    budget = "trials" if args.minutes is None else \
        f"{args.minutes:g} {'CPU-min' if args.cpu_minutes else 'min'}"
    done = {(*_setting(e), e["sampler"], e["seed"]) for e in read_results(args.out)}
    raw, source = read_space(args.space)
    if args.space == "sscp_fill":
        raw = {**raw, "dimensions": {**raw["dimensions"], "macs_fraction": {
            "type": "float", "low": 0.2, "high": 1.0}}}
    space = space_from_dict(raw, source=source, pm=pm)
    # The teacher its rows were measured with: run's default until stop 28, without device
    # responses (resumed rows would otherwise pool two teachers).
    settings = SearchSettings(space=raw, space_source=source, data=args.data, split=args.split,
                              proxy_epochs=args.proxy_epochs, teacher_epochs=args.teacher_epochs,
                              teacher_device_response_p=0.0)
    for seed in args.seeds:
        for sampler in args.samplers:
            if (args.space, budget, args.proxy_epochs, sampler, seed) in done:
                continue
            # Two processes may start studies in the same second: the name says what differs.
            name = (f"{args.space}-p{args.proxy_epochs}-{sampler}-seed{seed}-"
                    f"{int(time.time())}")
            create_or_resume(name=name, storage_url=url, settings=settings, sampler=sampler,
                             seed=seed, seed_trials=False, space=space)
            # Each study trains its own parents: one study's are not free for the next.
            parents = folder / f"parents-{name}"
            resources = replace(load_resources(settings, pm=pm, cache=cache,
                                               studies=folder, device="cpu", progress=False),
                                cache=parents)
            started = time.perf_counter()
            if args.minutes and args.cpu_minutes:
                cpu_finished = cpu_timed_study(name, url, sampler=sampler, seed=seed,
                                               seconds=60 * args.minutes, resources=resources)
            else:
                cpu_finished = None
                run_worker(WorkerJob(study=name, storage_url=url, sampler=sampler, seed=seed,
                                     n_trials=None if args.minutes else args.trials,
                                     timeout=60 * args.minutes if args.minutes else None,
                                     studies=str(folder)),
                           pm=pm, announce=lambda line: print(line, flush=True),
                           resources=resources)
            shutil.rmtree(parents, ignore_errors=True)
            seconds = time.perf_counter() - started
            trials = optuna.load_study(study_name=name, storage=url).trials
            curve, points, finished = [], [], []
            for index, trial in enumerate(trials):
                if cpu_finished is not None:
                    finished.append(cpu_finished[index])
                elif trial.datetime_complete is not None:
                    finished.append(round((trial.datetime_complete - trials[0].datetime_start)
                                          .total_seconds(), 1))
                else:
                    finished.append(None)
                if feasible(trial):
                    points.append((trial.values[0], trial.user_attrs["macs"]))
                curve.append(round(hypervolume(points, max_macs=settings.max_macs), 4))
            infeasible = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
            entry = {
                "space": args.space, "budget": budget, "threads": torch.get_num_threads(),
                "sampler": sampler, "seed": seed, "trials": len(trials),
                "hypervolume": curve, "finished_seconds": finished, "feasible": len(points),
                "infeasible": len(infeasible),
                "failed": sum(t.state != optuna.trial.TrialState.COMPLETE for t in trials),
                "best_validation": max((p[0] for p in points), default=None),
                "train_seconds": round(sum(t.user_attrs.get("train_seconds", 0.0)
                                           for t in trials), 1),
                "infeasible_train_seconds": sum(t.user_attrs["train_seconds"] for t in infeasible),
                "infeasible_wall_seconds": round(sum(
                    (t.datetime_complete - t.datetime_start).total_seconds()
                    for t in infeasible), 2),
                "seconds": round(seconds, 1), "proxy_epochs": args.proxy_epochs,
                "clock": "cpu" if cpu_finished is not None else "wall",
            }
            append_result(args.out, entry)


def cpu_timed_study(name: str, url: str, *, sampler: str, seed: int, seconds: float,
                    resources: Any) -> list[float]:
    """Run trials of study ``name`` one at a time until this process has spent ``seconds`` of
    CPU time on them; return each trial's end in CPU seconds since the first started.
    A study cut off (a session's end) is not recorded and runs again whole: at most one
    study's minutes are lost.

    One sampler object serves the whole study, as in a worker's ``optimize`` loop, and is made
    as ``run_worker`` makes it for a study with no trial limit."""
    study = optuna.load_study(study_name=name, storage=url,
                              sampler=make_sampler(sampler, seed=seed))
    spent, finished = 0.0, []
    while spent < seconds:
        before = time.process_time()
        study.optimize(partial(run_trial, resources=resources), n_trials=1, catch=(Exception,),
                       gc_after_trial=True)
        spent += time.process_time() - before
        finished.append(round(spent, 1))
        print(f"{name}: trial {len(finished) - 1} done, {spent / 60:.1f} of "
              f"{seconds / 60:g} CPU-min", flush=True)
    return finished


def report(path: Path) -> str:
    """One table per setting (space, budget, proxy length): per sampler, hypervolume after N/2
    and N trials, or, for studies given equal time, at the shortest study's end."""
    entries = read_results(path)
    out = []
    for space, budget, proxy in sorted({_setting(e) for e in entries}):
        runs_of = {s: [e for e in entries if e["sampler"] == s
                       and _setting(e) == (space, budget, proxy)] for s in SAMPLERS}
        timed = budget != "trials"
        ends = [max(t for t in e["finished_seconds"] if t is not None)
                for runs in runs_of.values() for e in runs if timed]
        at = min(ends) if ends else None
        out += [f"space {space}, budget per study: {budget}, proxy {proxy} epochs"
                + (f" (hypervolume read at {at / 60:.1f} min, the shortest study's end)"
                   if at else ""),
                "| sampler | seeds | trials | hypervolume after N/2 | after N (mean ± sd) | "
                "best validation % (mean) | feasible / infeasible | training s on infeasible | "
                "wall s of infeasible trials (counting only) | minutes per study |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for sampler, runs in runs_of.items():
            if not runs:
                continue
            n = min(e["trials"] for e in runs)
            if timed:
                final = [_at_time(e, at) for e in runs]
                half = [_at_time(e, at / 2) for e in runs]
            else:
                final = [e["hypervolume"][n - 1] for e in runs]
                half = [e["hypervolume"][n // 2 - 1] for e in runs]
            spread = statistics.stdev(final) if len(final) > 1 else 0.0
            best = [e["best_validation"] for e in runs if e["best_validation"] is not None]
            out.append(
                f"| {sampler} | {len(runs)} | {n} | {statistics.mean(half):.4f} | "
                f"{statistics.mean(final):.4f} ± {spread:.4f} | "
                f"{100 * statistics.mean(best):.1f} | "
                f"{sum(e['feasible'] for e in runs)} / {sum(e['infeasible'] for e in runs)} | "
                f"{sum(e['infeasible_train_seconds'] for e in runs):.0f} | "
                f"{sum(e['infeasible_wall_seconds'] for e in runs):.1f} | "
                f"{statistics.mean(e['seconds'] for e in runs) / 60:.1f} |")
        out.append("")
    return "\n".join(out)


def _setting(entry: dict) -> tuple[str, str, int]:
    """What a row was measured under, apart from sampler and seed: the resume key and the
    report's grouping are the same tuple, so a study at another setting is neither skipped as
    done nor mixed into another table. Rows from before a field existed get its old default."""
    return (entry.get("space", "sscp_mobile"), entry.get("budget", "trials"),
            entry.get("proxy_epochs", 2))


def _at_time(entry: dict, seconds: float) -> float:
    """The hypervolume of the trials a study had finished after ``seconds``."""
    reached = [hv for hv, t in zip(entry["hypervolume"], entry["finished_seconds"], strict=True)
               if t is not None and t <= seconds]
    return max(reached, default=0.0)


if __name__ == "__main__":
    main()
