"""The default ``asc-search run``, as a new user runs it, over seeds (issue 30).

One command: ``python benchmarks/default_run.py [--seeds 0 1 2 3 4] [--split 5]``;
``--report`` prints the table, ``--plot FILE`` draws the differences.

Each seed is the README's command, ``asc-search run --budget-macs 30M --split 5 --seed N``, in a
process of its own, from an empty cache and an empty studies folder (both made for the run and
removed after it): the corpus is written, the teachers fitted, the search, promotion and the
recommendation run exactly as for a user, so the wall time is the one a user waits. Revision 1
rows ran before ``--seed`` seeded the trainings: it was the sampler's seed alone, so the seed
trials (the hand-made references) trained the same networks at every seed (51.7 % on validation
five times) and the seeds repeated the search, not the references' training. Since then
``--seed`` seeds the trainings too (``SearchSettings.training_seed``), and revision 2 rows repeat
both; seed 0 trains as before.

Per seed the row keeps what the issue's targets read: wall time, the CPU time and peak memory of
the run's process, how many distinct sampled networks it trained (copies of a trained network
do not count), the time left the run said after each trial (revision 3; ``--report`` gives the
error of the end it said, after the first trial and once the references are timed), what it
recommended and why, and each finalist's validation and test accuracy
with its test difference from the hand-made reference, paired on the same test recordings (the
run computes it after its recommendation, as the product does). ``--report`` gives over seeds the
recommendation's and the best searched finalist's difference from the reference (mean ± sd, 95 %
t interval) and checks the target: the recommendation is never below the reference by more than
its paired test interval. Nothing here chooses on test. Rows are appended to ``--out`` and a seed
already there (same split, arguments and machine) is skipped on a rerun.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from results import append_result, machine, read_results

from asc_search.study.lifecycle import sampled_trained
from asc_search.study.promote import FINALIST_PREFIX, RECOMMENDATION_ATTR
from asc_search.study.storage import load_study, resolve_storage
from asc_search.training.evaluate import mean_sd_interval

#: 1: ``--seed`` seeded the sampler only; 2: the trainings too; 3: the same search, and the run
#: says after every trial how long it has left (``time_left_said``; same scores as 2 on one machine).
REVISION = 3
#: A trial's progress line and the time the run says it has left (``asc_search.study.run_length``).
TIME_LEFT = re.compile(r"^trial (\d+) .* · (?:about (\d+) min|(under a minute)) left$")
COMMAND = ["run", "--budget-macs", "30M"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--run-args", default="",
                        help="more arguments for asc-search run (recorded; rows with other "
                             "arguments are another experiment)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("default_run.jsonl"))
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--plot", type=Path, default=None,
                        help="with --report: also draw the differences into this PNG")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        if args.plot:
            print(f"wrote {plot(args.out, args.plot)}")
        return
    extra = shlex.split(args.run_args)
    done = {(e["seed"], e["split"], tuple(e["run_args"]), e["machine"])
            for e in read_results(args.out) if e.get("revision") == REVISION}
    for seed in args.seeds:
        if (seed, args.split, tuple(extra), machine()) in done:
            print(f"seed {seed}: already in {args.out}")
            continue
        row = run_once(seed, split=args.split, extra=extra)
        if row is not None:
            append_result(args.out, row)


def run_once(seed: int, *, split: int, extra: list[str]) -> dict[str, Any] | None:
    """One default run from empty folders; its row, or ``None`` (said) when the run failed."""
    folder = Path(tempfile.mkdtemp(prefix=f"default-run-{seed}-"))
    try:
        env = {**os.environ, "ASC_SEARCH_CACHE": str(folder / "cache"),
               "ASC_SEARCH_STUDIES": str(folder / "studies")}
        env.pop("ASC_SEARCH_STORAGE", None)
        command = [_asc_search(), *COMMAND, "--split", str(split), "--seed", str(seed), *extra]
        print(f"seed {seed}: {shlex.join(command[1:])}", flush=True)
        started = time.monotonic()
        said: list[dict[str, Any]] = []
        with subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as process:
            assert process.stdout is not None
            for line in process.stdout:  # the run's own progress, tagged with the seed
                at = time.monotonic() - started
                print(f"  [{seed} {at / 60:4.1f} min] {line}", end="", flush=True)
                if match := TIME_LEFT.match(line.strip()):
                    said.append({"at_s": round(at, 1), "trial": int(match[1]),
                                 "minutes_left": 0.5 if match[3] else int(match[2])})
            usage = _reap(process)
        wall = time.monotonic() - started
        if process.returncode != 0:
            print(f"seed {seed}: asc-search run exited with {process.returncode}; no row written")
            return None
        study = load_study("asc-search", resolve_storage(None, studies=folder / "studies"))
        return {
            "revision": REVISION, "seed": seed, "split": split, "run_args": extra,
            "date": date.today().isoformat(), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
            "load_average": round(os.getloadavg()[0], 2),
            "time_left_said": said,
            **study_outcome(study),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _reap(process: subprocess.Popen[str]) -> resource.struct_rusage:
    """Wait for the run's process and return its own resource usage (with its reaped children's).

    ``getrusage(RUSAGE_CHILDREN)`` would not do for the peak: its ``ru_maxrss`` is the largest
    of every child this process ever waited for, so from the second seed of one invocation on it
    was the largest so far, not the seed's own (the rows on record before this fix: the bf16
    EPYC's 2.3, 2.8, 3.6, 3.6, 3.6 GB, where seeds 3 and 4 may carry seed 2's). ``wait4``
    reports this child alone; the exit status goes back to ``process`` so that ``Popen`` does
    not wait again. Linux carries the forking process's peak into the child's across ``exec``,
    so the floor of the figure is this benchmark's own peak (about 0.5 GB with torch
    imported), below any run's."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage


def _asc_search() -> str:
    """The ``asc-search`` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("asc-search")
    return str(beside) if beside.exists() else shutil.which("asc-search") or "asc-search"


def study_outcome(study: Any) -> dict[str, Any]:
    """What the issue's targets read from a finished run's study: trials by kind, the
    recommendation, and every finalist's scores."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    statuses: dict[str, int] = {}
    for trial in trials:
        kind = "seed" if "seed_trial" in trial.user_attrs else "sampled"
        status = trial.user_attrs.get("status") or trial.state.name.lower()
        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1
    finalists = []
    for key, record in sorted(study.user_attrs.items()):
        if not key.startswith(FINALIST_PREFIX):
            continue
        finalists.append({
            "trial": record["trial"], "label": record["label"],
            "recommended": record["recommended"], "macs": record["macs"],
            "param_bytes": record["param_bytes"],
            "validation": _scores(record["validation"]), "test": _scores(record["test"]),
            "never_predicted": record["never_predicted"],
            **({"test_vs_reference": record["test_vs_reference"]}
               if "test_vs_reference" in record else {}),
        })
    return {
        "trials": len(trials), "statuses": statuses,
        # Every trial's parameters and proxy score: what a later look at which dimensions
        # matter reads, after the run's folder is gone.
        "trial_table": [{"number": t.number, "seed_trial": t.user_attrs.get("seed_trial"),
                         "status": t.user_attrs.get("status") or t.state.name.lower(),
                         "value": t.value if t.values is not None and len(t.values) == 1
                         else t.values, "params": t.params} for t in trials],
        "sampled_trained": sampled_trained(study),
        "completed": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
        "recommendation": study.user_attrs.get(RECOMMENDATION_ATTR),
        "finalists": finalists,
    }


def _scores(attrs: dict[str, Any]) -> dict[str, Any]:
    return {"macro": attrs["macro"], "macro_interval": attrs["macro_interval"]}


def _differences(entry: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """The recommended and the best searched finalist (by validation) against the reference."""
    searched = [f for f in entry["finalists"] if "test_vs_reference" in f
                and f["label"] == "searched"]
    best = max(searched, key=lambda f: f["validation"]["macro"], default=None)
    chosen = next((f for f in entry["finalists"] if f["recommended"]), None)
    # The reference recommended is itself: no difference, and no interval to draw.
    reference = {"difference": 0.0, "low": 0.0, "high": 0.0, "is_reference": True}
    return {
        "recommended": None if chosen is None else chosen.get("test_vs_reference", reference),
        "searched": None if best is None else best["test_vs_reference"],
    }


def report(path: Path) -> str:
    """Per seed and over seeds, the figures the issue's targets name."""
    rows = sorted(read_results(path),
                  key=lambda e: (e["revision"], e["machine"], e["split"], e["seed"]))
    if not rows:
        return f"no rows in {path}"
    lines = ["| revision | machine | split | seed | wall min | CPU min | peak GB | sampled trained | "
             "recommended | recommended − ref (test, paired 95 %) | best searched − ref |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[int, str, int, tuple[str, ...]], list[dict[str, Any]]] = {}
    for entry in rows:
        groups.setdefault((entry["revision"], entry["machine"], entry["split"],
                           tuple(entry["run_args"])), []).append(entry)
        diffs = _differences(entry)
        chosen = entry["recommendation"] or {}
        lines.append(
            f"| {entry['revision']} | {entry['machine']} | {entry['split']} | {entry['seed']} | "
            f"{entry['wall_s'] / 60:.1f} | {entry['cpu_s'] / 60:.1f} | "
            f"{entry['peak_rss_mb'] / 1024:.1f} | {entry['sampled_trained']} | "
            f"{chosen.get('trial', '–')} ({chosen.get('label', 'none')}) | "
            f"{_paired(diffs['recommended'])} | {_paired(diffs['searched'])} |")
    for (revision, where, split, extra), entries in groups.items():
        lines.append(f"\nrevision {revision}, {where}, split {split}"
                     f"{', ' + shlex.join(extra) if extra else ''}, {len(entries)} seed(s):")
        walls = [e["wall_s"] / 60 for e in entries]
        lines.append(f"- wall {min(walls):.1f}–{max(walls):.1f} min (target ≤ 15); sampled "
                     f"networks trained {min(e['sampled_trained'] for e in entries)}–"
                     f"{max(e['sampled_trained'] for e in entries)} (target ≥ 6)")
        for arm in ("recommended", "searched"):
            values = [d[arm] for d in map(_differences, entries) if d[arm] is not None]
            if not values:
                continue
            summary = mean_sd_interval([v["difference"] for v in values])
            spread = (f"{100 * summary['mean']:+.1f} ± {100 * summary['sd']:.1f} (95 % t "
                      f"{100 * summary['low']:+.1f} to {100 * summary['high']:+.1f})"
                      if summary["n"] > 1 else f"{100 * summary['mean']:+.1f} (one seed)")
            lines.append(f"- {arm} − reference on test over {len(values)} seed(s): {spread}")
        said = [_said_end_error(e) for e in entries if e.get("time_left_said")]
        if said:
            first = [100 * errors[0] for errors in said]
            fourth = [100 * errors[3] for errors in said if len(errors) > 3]
            lines.append(
                f"- the end the run said (elapsed + time left) against its wall time: after the "
                f"first trial {min(first):+.0f} to {max(first):+.0f} %"
                + (f", after the fourth (the references timed) {min(fourth):+.0f} to "
                   f"{max(fourth):+.0f} %" if fourth else ""))
        below = [e["seed"] for e in entries
                 if (_differences(e)["recommended"] or {"high": 0.0})["high"] < 0]
        lines.append("- the recommendation below the reference by more than its paired test "
                     f"interval: {'seeds ' + ', '.join(map(str, below)) if below else 'never'}")
    return "\n".join(lines)


def _said_end_error(entry: dict[str, Any]) -> list[float]:
    """For each trial line, (the end it said − the run's wall time) / wall time; "about N
    min" is rounded up, so a whole minute of it is the saying's, not the estimate's."""
    return [(said["at_s"] + 60 * said["minutes_left"]) / entry["wall_s"] - 1
            for said in entry["time_left_said"]]


def _paired(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return "–"
    if diff.get("is_reference"):
        return "0 (the reference)"
    return (f"{100 * diff['difference']:+.1f} ({100 * diff['low']:+.1f} to "
            f"{100 * diff['high']:+.1f})")


def plot(path: Path, image: Path) -> Path:
    """For each experiment on file (revision, machine, split, arguments: rows pair only within
    one), each seed's recommended and best searched finalist minus the reference on test, with
    its paired 95 % interval, and the mean over seeds with its 95 % t interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiments: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in read_results(path):
        key = (e["revision"], e["machine"], e["split"], tuple(e["run_args"]))
        experiments.setdefault(key, []).append(e)
    figure, axis = plt.subplots(figsize=(3.2 + 2.6 * max(1, len(experiments)), 4.2))
    ticks, labels = [], []
    for g, (key, rows) in enumerate(experiments.items()):
        rows.sort(key=lambda e: e["seed"])
        for a, arm in enumerate(("recommended", "searched")):
            x = 2.6 * g + a
            values = [d for d in (_differences(e)[arm] for e in rows) if d is not None]
            for k, d in enumerate(values):
                offset = 0.06 * (k - (len(values) - 1) / 2)
                axis.errorbar(x + 0.35 + offset, 100 * d["difference"],
                              yerr=[[100 * (d["difference"] - d["low"])],
                                    [100 * (d["high"] - d["difference"])]],
                              fmt="o", ms=3, c="grey", elinewidth=0.8,
                              label="one seed (paired 95 % bootstrap)"
                              if g == a == k == 0 else None)
            summary = mean_sd_interval([d["difference"] for d in values]) if values else None
            if summary and summary["n"] > 1:
                axis.errorbar(x, 100 * summary["mean"],
                              yerr=[[100 * (summary["mean"] - summary["low"])],
                                    [100 * (summary["high"] - summary["mean"])]],
                              fmt="s", ms=7, c="tab:blue", capsize=4,
                              label="mean over seeds (95 % t)" if g == a == 0 else None)
            ticks.append(x + 0.15)
            labels.append(f"{arm}\n− reference")
        axis.text(2.6 * g + 0.65, -0.2, f"revision {key[0]}, {len(rows)} seed(s)\n"
                  f"{_short_machine(key[1])}, split {key[2]}", ha="center", va="top", fontsize=7,
                  transform=axis.get_xaxis_transform())
    axis.axhline(0, c="black", lw=0.8)
    axis.set_xticks(ticks, labels, fontsize=7)
    axis.set_ylabel("test macro accuracy difference (points)")
    axis.set_title("asc-search run --budget-macs 30M: what it recommends and finds, "
                   "against the hand-made reference", fontsize=9)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    figure.savefig(image, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return image


def _short_machine(machine: str) -> str:
    """``Intel(R) Xeon(R) Processor (bf16)`` → ``Xeon (bf16)``, a CPU quota on a line of its
    own: the tick labels stay readable."""
    words = [w for w in machine.replace("(R)", "").split() if w not in ("Processor", "Intel")]
    return (" ".join(words).replace("ONEDNN_MAX_CPU_ISA=", "oneDNN ")
            .replace(") (CPU quota ", ",\nquota ").replace(" cores)", ")"))


if __name__ == "__main__":
    main()
