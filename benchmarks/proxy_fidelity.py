"""Does the search's short proxy rank candidates as full-length training would? (issue 12)

One command: ``python benchmarks/proxy_fidelity.py [--n 10] [--seed 0]``. With the default run's
settings (embedded corpus, 5 % split, ``wide_cp_mobile`` teacher 20 epochs, space ``sscp_fill``,
proxy 8 epochs, promotion 32 epochs; the cache folder's data, teacher and parents are reused when
there), ``--n`` candidates are drawn at random (so the ranking is tested over the space, not
around one optimum) and trained as search trials, with no early stopping; then every one is
trained again at the promotion length. ``--promote-by retrain`` trains each from scratch (a
parent at the promotion length, pruning, fine-tune: how ``distill`` promoted before rungs);
``--promote-by continue`` continues every one from its own search checkpoint through the
promotion rungs (16, then 32 epochs, as ``distill`` now promotes, with no candidate dropped), so
τ is read at each rung. The figure is Kendall's τ between the proxy validation score and the
promoted validation score. Test is never read. Results are appended to ``--out`` (default
benchmarks/proxy_fidelity.jsonl): the proxy stage as one line, then one line per promoted
candidate; a rerun promotes what is missing (continue mode: the proxy study and its checkpoints
are kept in the cache folder, so a rerun resumes within the proxy stage too). In continue mode
``--n`` counts trained candidates: a random draw of a network already trained is a duplicate,
has no checkpoint of its own and is not a candidate, so the stage draws until ``--n`` trained
(a rerun tops up a stage that fell short, and appends the proxy line again).

``--repeat K [--repeat-epochs E]`` measures the proxy itself, test against retest: the stage's
candidates are trained again as search trials, for E epochs (default: the proxy's), with the
same parents (the parent seed is the study's) but pruning and fine-tune seeds of their own
(K × 1000 + trial), one line each (stage ``repeat``; a rerun skips the candidates done). τ
between two runs of the same proxy says how much of its ranking is the candidates' and how much
the training's noise: no score correlates with the promoted one better than with itself.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from results import append_result, read_results

from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.lifecycle import load_resources
from asc_search.study.objective import SearchSettings, run_trial, train_candidate, trial_candidate
from asc_search.study.promote import climb_rungs, rung_epochs
from asc_search.study.space import read_space


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


def tau_ceiling(a: list[float], a_intervals: list[list[float]], b: list[float],
                b_intervals: list[list[float]]) -> float:
    """The Kendall τ two score lists could reach if each were a perfect measure of the same
    ranking except for its validation noise: the attenuation of the correlation by each list's
    reliability (1 − noise variance / observed variance; the noise variance of a score from its
    95 % bootstrap interval over recordings), turned into τ by Greiner's relation
    τ = (2/π)·arcsin(ρ) for normal scores. A proxy whose τ is near it ranks as well as the
    validation list can tell; to reach a target above it, the list, not the proxy, must change."""
    def reliability(scores: list[float], intervals: list[list[float]]) -> float:
        observed = statistics.variance(scores)
        noise = statistics.mean(((high - low) / (2 * 1.96)) ** 2 for low, high in intervals)
        return max(0.0, 1.0 - noise / observed) if observed > 0 else 0.0

    rho = math.sqrt(reliability(a, a_intervals) * reliability(b, b_intervals))
    return 2 / math.pi * math.asin(rho)


def chosen_by_rungs(rows: list[dict[str, Any]], width: int) -> dict[str, Any]:
    """The candidate promotion would finish with if ``width`` candidates entered its first rung
    (the proxy's best ``width``; ``distill`` admits 2 at the default settings) and only the best
    of them at the first rung went on, read from rows that climbed every rung."""
    entered = sorted(rows, key=lambda r: -r["proxy_validation"])[:width]
    return max(entered, key=lambda r: r["rungs"][0]["validation"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--promote-by", choices=["retrain", "continue"], default="retrain")
    parser.add_argument("--repeat", type=int, default=None, metavar="K",
                        help="train the stage's candidates again with seeds K × 1000 + trial")
    parser.add_argument("--repeat-epochs", type=int, default=None, metavar="E",
                        help="budget of --repeat's trials [default: the proxy's]")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("proxy_fidelity.jsonl"))
    parser.add_argument("--resolution", action="store_true",
                        help="print, from --out alone, the smallest difference each length "
                        "resolves (test-retest pairs), and stop")
    args = parser.parse_args()
    if args.resolution:
        entries = [e for e in read_results(args.out) if (e["n"], e["seed"]) == (args.n, args.seed)]
        print("\n".join(resolution(entries)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    raw, source = read_space("sscp_fill")
    # The teacher its rows were measured with: run's default until stop 28, without device
    # responses (resumed rows would otherwise pool two teachers).
    settings = SearchSettings(space=raw, space_source=source, split=5, objective="accuracy",
                              teacher_device_response_p=0.0)
    folder = cache / "proxy_fidelity"
    resources = load_resources(settings, pm=pm, cache=cache, studies=folder,
                               device="cpu", progress=False)
    entries = [e for e in read_results(args.out) if (e["n"], e["seed"]) == (args.n, args.seed)
               and e.get("promote_by", "retrain") == args.promote_by]
    # The last proxy row is the stage's record: continue mode appends a new one when it tops
    # the stage up to ``--n`` trained candidates.
    proxy = next((e for e in reversed(entries) if e["stage"] == "proxy"), None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Continue mode keeps the study (its trials' checkpoints) beside the artifacts.
    storage = f"sqlite:///{folder}/study-n{args.n}-seed{args.seed}.db" \
        if args.promote_by == "continue" else None
    if args.promote_by == "continue":
        folder.mkdir(parents=True, exist_ok=True)
    if proxy is None or (args.promote_by == "continue" and _trained(proxy) < args.n):
        # Continue mode: a proxy stage cut short resumes with the trials it finished (the
        # sampler's seed moves on with them, so the draws that follow are new ones), and goes
        # on until ``--n`` candidates trained: a draw of a network already trained is a
        # duplicate, which is not trained and not a candidate.
        name = f"proxy-{args.n}-{args.seed}" if storage else \
            f"proxy-{args.n}-{args.seed}-{time.time():.0f}"
        study = optuna.create_study(direction="maximize", storage=storage, study_name=name,
                                    load_if_exists=True, pruner=optuna.pruners.NopPruner())
        finished = [t for t in study.trials if t.state.is_finished()]
        for lost in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(lost._trial_id,
                                                  state=optuna.trial.TrialState.FAIL)
        study.sampler = optuna.samplers.RandomSampler(seed=args.seed + 1000 * len(finished))
        started, earlier = time.perf_counter(), proxy["seconds"] if proxy else 0
        # Draws are capped so that a space of few distinct networks cannot loop for ever.
        while (missing := args.n - _counted(study, args.promote_by)) > 0 \
                and len(study.trials) < 3 * args.n:
            study.optimize(lambda trial: run_trial(trial, resources), n_trials=missing)
        proxy = {"stage": "proxy", "n": args.n, "seed": args.seed,
                 "promote_by": args.promote_by, "study": study.study_name,
                 "date": date.today().isoformat(),
                 "seconds": earlier + round(time.perf_counter() - started),
                 "trials": [{"trial": t.number, "params": t.params, "validation": t.value,
                             "validation_interval": t.user_attrs.get("validation", {})
                             .get("macro_interval"),
                             "macs": t.user_attrs.get("macs"),
                             "status": t.user_attrs.get("status")} for t in study.trials
                            if t.state != optuna.trial.TrialState.FAIL]}
        append_result(args.out, proxy)
    promoted = {e["trial"] for e in entries if e["stage"] == "promoted"}
    if args.repeat is not None:
        _repeat(args, proxy, entries, resources=resources, cache=cache)
    if args.promote_by == "continue":
        _continue_all(args, proxy, promoted, resources=resources, storage=storage)
    for row in proxy["trials"] if args.promote_by == "retrain" else []:
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
            if e["stage"] == "promoted" and (e["n"], e["seed"]) == (args.n, args.seed)
            and e.get("promote_by", "retrain") == args.promote_by]
    tau = kendall_tau([r["proxy_validation"] for r in rows], [r["validation"] for r in rows])
    print(f"Kendall tau over {len(rows)} candidates (proxy {settings.proxy_epochs} epochs against "
          f"promoted {settings.promote_epochs}, promoted by {args.promote_by}): {tau:.2f}")
    for rung in sorted({r["rung"] for row in rows for r in row.get("rungs", [])})[:-1]:
        at = [next(r["validation"] for r in row["rungs"] if r["rung"] == rung) for row in rows]
        print(f"  at rung {rung}: tau {kendall_tau([r['proxy_validation'] for r in rows], at):.2f}"
              f" with the proxy, {kendall_tau(at, [r['validation'] for r in rows]):.2f} with "
              "the last rung")
    # The proxy's intervals: in the proxy row, or (rows written before it kept them) in the
    # study a continue-mode stage keeps.
    intervals = {t["trial"]: t.get("validation_interval") for t in proxy["trials"]}
    if storage and not all(intervals.get(r["trial"]) for r in rows):
        kept = optuna.load_study(study_name=proxy["study"], storage=storage)
        intervals = {t.number: t.user_attrs.get("validation", {}).get("macro_interval")
                     for t in kept.trials}
    if len(rows) > 2 and all(intervals.get(r["trial"]) for r in rows):
        ceiling = tau_ceiling([r["proxy_validation"] for r in rows],
                              [intervals[r["trial"]] for r in rows],
                              [r["validation"] for r in rows],
                              [r["validation_interval"] for r in rows])
        print(f"  noise ceiling: a proxy and a promoted score as noisy as these (their 95 % "
              f"intervals) and otherwise in perfect agreement would give tau about {ceiling:.2f}")
    _report_repeats(entries=[e for e in read_results(args.out)
                             if (e["n"], e["seed"]) == (args.n, args.seed)
                             and e.get("promote_by", "retrain") == args.promote_by],
                    proxy=proxy, promoted=rows, proxy_epochs=settings.proxy_epochs)
    if args.promote_by == "continue" and rows and all(r.get("rungs") for r in rows):
        # What a wider first rung would buy: the finalist's last-rung score against the best of
        # all candidates (regret), for each number of proxy-ranked entrants.
        best = max(r["validation"] for r in rows)
        first = rows[0]["rungs"][0]["epochs"] - settings.proxy_epochs
        for width in sorted({1, 2, 4, len(rows)}):
            pick = chosen_by_rungs(rows, width)
            print(f"  {width} entering the first rung: finalist trial {pick['trial']}, "
                  f"{100 * pick['validation']:.1f} % at the last rung, "
                  f"{100 * (best - pick['validation']):.1f} points below the best candidate; "
                  f"first rung {width} × {first} epochs")


def _repeat(args: argparse.Namespace, proxy: dict, entries: list[dict], *, resources: Any,
            cache: Path) -> None:
    """The stage's trained candidates trained again as search trials (see ``--repeat``)."""
    settings = resources.settings
    epochs = args.repeat_epochs or settings.proxy_epochs
    done = {e["trial"] for e in entries if e["stage"] == "repeat"
            and (e["repeat"], e["epochs"]) == (args.repeat, epochs)}
    for row in proxy["trials"]:
        if row.get("status", "trained") != "trained" or row["validation"] is None \
                or row["trial"] in done:
            continue
        candidate = trial_candidate(resources.space, row["params"], settings=settings,
                                    pm=resources.pm)
        outcome = train_candidate(candidate, settings=settings, pm=resources.pm,
                                  train=resources.train, validation=resources.validation,
                                  teacher_logits=resources.teacher_logits,
                                  precision=resources.precision, epochs=epochs,
                                  seed=args.repeat * 1000 + row["trial"], parents=cache)
        append_result(args.out, {"stage": "repeat", "n": args.n, "seed": args.seed,
                                 "promote_by": args.promote_by, "repeat": args.repeat,
                                 "epochs": epochs, "trial": row["trial"],
                                 "validation": outcome.validation.macro_accuracy,
                                 "validation_interval": list(outcome.validation.macro_interval),
                                 "seconds": round(outcome.seconds, 1)})


def _report_repeats(*, entries: list[dict], proxy: dict, promoted: list[dict],
                    proxy_epochs: int) -> None:
    """τ of every repeat with the stage's proxy (same budget), with the promoted scores, and
    with every other repeat of the same budget."""
    first = {t["trial"]: t["validation"] for t in proxy["trials"] if t["validation"] is not None}
    final = {r["trial"]: r["validation"] for r in promoted}
    runs: dict[tuple[int, int], dict[int, float]] = {}
    for e in entries:
        if e["stage"] == "repeat":
            runs.setdefault((e["repeat"], e["epochs"]), {})[e["trial"]] = e["validation"]

    def tau(a: dict[int, float], b: dict[int, float]) -> float:
        shared = sorted(set(a) & set(b))
        return kendall_tau([a[t] for t in shared], [b[t] for t in shared])

    for (repeat, epochs), again in sorted(runs.items()):
        line = (f"  repeat {repeat} ({epochs} epochs, {len(again)} candidates): tau "
                f"{tau(again, final):.2f} with the promoted score")
        if epochs == proxy_epochs:
            line += f", {tau(again, first):.2f} with the first run of the proxy (test-retest)"
        print(line)
    for ((r1, e1), a), ((r2, e2), b) in itertools.combinations(sorted(runs.items()), 2):
        if e1 == e2:
            print(f"  repeats {r1} and {r2} ({e1} epochs): tau {tau(a, b):.2f} (test-retest)")


#: The lengths of the stage's runs: the default run's proxy and promotion budgets.
PROXY_EPOCHS, PROMOTE_EPOCHS = SearchSettings.proxy_epochs, SearchSettings.promote_epochs


def measurements(entries: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[int, float]]:
    """Every measurement of the candidates in ``entries`` (one ``--n``/``--seed`` stage): by
    (promotion mode, run, epochs), each candidate's validation score. Runs are the proxy, each
    ``--repeat`` and the promoted scores; a candidate's score in two runs of the same length is a
    test-retest pair (other training seeds, or another lineage for the promoted ones)."""
    runs: dict[tuple[str, str, int], dict[int, float]] = {}
    for e in entries:
        mode = e.get("promote_by", "retrain")
        if e["stage"] == "proxy":
            runs[mode, "proxy", PROXY_EPOCHS] = {
                t["trial"]: t["validation"] for t in e["trials"]
                if t["validation"] is not None and t.get("status", "trained") == "trained"}
        elif e["stage"] == "repeat":
            runs.setdefault((mode, f"repeat {e['repeat']}", e["epochs"]), {})[e["trial"]] = \
                e["validation"]
        elif e["stage"] == "promoted":
            runs.setdefault((mode, "promoted", PROMOTE_EPOCHS), {})[e["trial"]] = e["validation"]
    return runs


def resolution(entries: list[dict[str, Any]]) -> list[str]:
    """The smallest difference one training of each of two candidates resolves, per length.

    For every test-retest pair of runs of the same length, d = the same candidate's score in the
    one minus the other: its spread is the training noise of a *difference* of two single
    measurements (var d = 2σ², as for two different candidates measured once each), so two
    candidates whose scores differ by less than 1.96 · sd(d) are not told apart at 95 %. The
    validation list's own noise is part of it (the same clips score both runs).
    """
    runs = measurements(entries)
    lines = []
    for (a, first), (b, second) in itertools.combinations(sorted(runs.items()), 2):
        shared = sorted(set(first) & set(second))
        if a[2] != b[2] or len(shared) < 5:
            continue
        d = np.array([first[t] - second[t] for t in shared])
        lines.append(f"  {a[2]} epochs, {a[1]} ({a[0]}) against {b[1]} ({b[0]}), "
                     f"{len(shared)} candidates: sd of the retest difference "
                     f"{100 * d.std(ddof=1):.1f} points; differences below "
                     f"{196 * d.std(ddof=1):.1f} points are not resolved at 95 %; mean shift "
                     f"{100 * d.mean():+.1f}")
    return lines


def _counted(study: optuna.Study, promote_by: str) -> int:
    """Trials that count towards ``--n``: every finished one when retraining (as the first
    measurement counted them), trained ones when continuing (a duplicate has no checkpoint)."""
    finished = [t for t in study.trials if t.state.is_finished()
                and t.state != optuna.trial.TrialState.FAIL]
    if promote_by == "retrain":
        return len(finished)
    return sum(t.user_attrs.get("status") == "trained" for t in finished)


def _trained(proxy: dict) -> int:
    """Trained candidates in a proxy row (rows before ``status`` was kept: those scored)."""
    return sum(row.get("status", "trained" if row["validation"] is not None else None)
               == "trained" for row in proxy["trials"])


def _continue_all(args: argparse.Namespace, proxy: dict, promoted: set[int], *,
                  resources: Any, storage: str | None) -> None:
    """Every proxy trial climbs every rung from its own checkpoint (none is dropped)."""
    settings = resources.settings
    study = optuna.load_study(study_name=proxy["study"], storage=storage)
    pending = [t for t in study.trials if t.number not in promoted
               and t.user_attrs.get("status") == "trained"]
    rungs = rung_epochs(settings.proxy_epochs, settings.promote_epochs)
    for trial in pending:  # one at a time, each appended when it reaches the top rung
        started = time.perf_counter()
        climbed = climb_rungs([trial], top=1, resources=resources, rungs=rungs)[0]
        append_result(args.out, {"stage": "promoted", "n": args.n, "seed": args.seed,
                                 "promote_by": "continue", "trial": trial.number,
                                 "proxy_validation": trial.value,
                                 "validation": climbed.validation.macro_accuracy,
                                 "validation_interval": list(climbed.validation.macro_interval),
                                 "rungs": climbed.rungs,
                                 "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
