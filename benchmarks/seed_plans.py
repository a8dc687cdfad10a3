"""The seed's three pruning plans against the DCASE baseline and the same final width trained
directly, all with KD, at equal training budgets, over several seeds.

One command: ``python benchmarks/seed_plans.py [--split 5] [--seeds 0 1 2] [--epochs 150]``.
On the embedded corpus, with the teacher ensemble that ``calibrate_corpus.py`` fits (served from
the cache when it is there), every candidate is trained by the product's own path
(``asc_search.study.objective.train_candidate``, as promotion trains a finalist) with the same budget
of optimiser steps (``--epochs`` at batch 256):

- baseline: the DCASE 2024 baseline (CP-Mobile, base 32), unpruned;
- direct: ``seed-final`` (SSCP, base 32) trained directly, unpruned;
- S1: 64 → 32, AGP steps; S2: 96 → 32, linear steps; S3: 96 → 64 → 32, AGP steps per stage.

A pruning plan divides the budget as the product does (``asc_search.study.budget``): a third for the
final fine-tune, a tenth for the fine-tunes between the 5 steps per stage, the rest for the wide
network: at 150 epochs that is 86 wide epochs for S1, close to the seed's 100 / 2 per step / 50.
Each run records validation and test macro accuracy with 95 % bootstrap intervals, seconds on
this machine and the training MACs spent. Results are appended as JSON lines to ``--out``
(default: benchmarks/seed_plans.jsonl); a rerun skips what is recorded for the current revision.
Revision 1 (before issue 15) trained the wide networks 100 epochs, 2 per intermediate step and 50
at the end with the old KD scale; ``--report --revision 1`` shows it.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import torch
from calibrate_corpus import EPOCHS, recipe_for
from results import append_result, read_results

from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.lifecycle import seed_params
from asc_search.study.objective import SearchSettings, evaluation_attrs, train_candidate
from asc_search.study.space import read_space, space_from_dict
from asc_search.teachers.ensemble import ensemble_logits
from asc_search.training.evaluate import evaluate, mean_sd_interval
from asc_search.training.train import precision_for, predict

REVISION = 2
PLANS = {"baseline": "dcase-baseline", "direct": None, "S1": "seed-S1", "S2": "seed-S2",
         "S3": "seed-S3"}


def candidates(pm) -> tuple[SearchSettings, dict]:
    """The plans as candidates of the default space; ``direct`` is S1's final network unpruned."""
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=pm)
    params = seed_params(space)
    found = {name: space.candidate(space.values_of(params[seed]))
             for name, seed in PLANS.items() if seed is not None}
    direct = dict(space.values_of(params["seed-S1"]), prune_width_ratio=1.0)
    found["direct"] = space.candidate({k: v for k, v in direct.items()
                                       if space.active(k, {**space.fixed, **direct})})
    settings = SearchSettings(space=raw, space_source=source, recipe={"batch_size": 256})
    return settings, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None,
                        help="budget per candidate [default: the calibration's for the split]")
    parser.add_argument("--plans", nargs="*", default=list(PLANS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("seed_plans.jsonl"))
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--revision", type=int, default=REVISION)
    args = parser.parse_args()
    if args.report:
        print(report(args.out, revision=args.revision))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    epochs = args.epochs or EPOCHS[args.split]
    done = {(e["plan"], e["seed"], e["split"], e["epochs"]) for e in read_results(args.out)
            if e.get("revision", 1) == REVISION}
    data = load_split_data(args.data, args.split, pm=pm, cache_dir=cache, progress=False)
    # The teachers' recipe is calibrate_corpus.py's, so its cached ensemble is reused.
    teacher_recipe = recipe_for(args.split, len(data.train), 0, 256)
    started = time.perf_counter()
    ensemble = ensemble_logits(data.train, teacher_names=["wide_cp_mobile", "patchout_transformer"],
                               pm=pm, cache_dir=cache, recipe=teacher_recipe, progress=False)
    teacher_seconds = 0.0 if ensemble.cache_hit else round(time.perf_counter() - started, 1)
    settings, plans = candidates(pm)
    precision = precision_for("cpu")
    for seed in args.seeds:
        for name in args.plans:
            if (name, seed, args.split, epochs) in done:
                continue
            outcome = train_candidate(plans[name], settings=settings, pm=pm, train=data.train,
                                      validation=data.validation, teacher_logits=ensemble.logits,
                                      precision=precision, epochs=epochs, seed=seed)
            test = evaluate(predict(outcome.model, data.test.features, precision=precision),
                            data.test.labels, data.test.devices, files=data.test.files)
            append_result(args.out, {
                "revision": REVISION, "plan": name, "seed": seed, "split": args.split,
                "epochs": epochs, "threads": torch.get_num_threads(),
                "precision": str(precision.autocast_dtype or torch.float32).removeprefix("torch."),
                "date": date.today().isoformat(),
                "macs": outcome.macs, "params": outcome.params, "budget": outcome.budget.to_dict(),
                "training_macs": outcome.training_macs, "seconds": round(outcome.seconds, 1),
                "teacher_seconds": teacher_seconds, "spec": outcome.spec.to_dict(),
                "validation": evaluation_attrs(outcome.validation),
                "test": evaluation_attrs(test), "interval": "recordings"})


def report(path: Path, *, revision: int = REVISION) -> str:
    """Per plan: mean ± sd over seeds (95 % t interval), the seeds' own bootstrap intervals."""
    entries = [e for e in read_results(path) if e.get("revision", 1) == revision]
    if revision == 1:
        return _report_revision_1(entries)

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    def summary(values: list[float]) -> str:
        s = mean_sd_interval(values)
        if s["n"] < 2:
            return pct(s["mean"])
        return f"{pct(s['mean'])} ± {pct(s['sd'])} ({pct(s['low'])}–{pct(s['high'])})"

    lines = ["| split | plan | seeds | MACs | params | validation | test | test unseen "
             "| test − baseline, paired by seed | per-seed test (95 % bootstrap) "
             "| training GMACs | CPU-min per run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = sorted({(e["split"], e["epochs"]) for e in entries})
    for split, epochs in keys:
        for plan in PLANS:
            runs = sorted((e for e in entries if (e["split"], e["epochs"], e["plan"])
                           == (split, epochs, plan)), key=lambda e: e["seed"])
            if not runs:
                continue
            per_seed = "; ".join(
                f"{e['seed']}: {pct(e['test']['macro'])} ({pct(e['test']['macro_interval'][0])}–"
                f"{pct(e['test']['macro_interval'][1])}){'' if e.get('interval') else 'ᶜ'}"
                for e in runs)
            baseline = {e["seed"]: e["test"]["macro"] for e in entries
                        if (e["split"], e["epochs"], e["plan"]) == (split, epochs, "baseline")}
            gaps = [e["test"]["macro"] - baseline[e["seed"]] for e in runs
                    if e["seed"] in baseline]
            versus = "" if plan == "baseline" or not gaps else \
                f"{summary(gaps)} (n={len(gaps)})"
            minutes = sum(e["seconds"] * e.get("threads", 1) for e in runs) / 60 / len(runs)
            lines.append(
                f"| {split} % ({epochs} ep) | {plan} | {len(runs)} | {runs[0]['macs']:,} | "
                f"{runs[0]['params']:,} | {summary([e['validation']['macro'] for e in runs])} | "
                f"{summary([e['test']['macro'] for e in runs])} | "
                f"{summary([e['test']['unseen'] for e in runs])} | {versus} | {per_seed} | "
                f"{sum(e['training_macs'] for e in runs) / len(runs) / 1e9:.0f} | {minutes:.1f} |")
    lines.append("")
    lines.append("Intervals over seeds are 95 % Student-t; per-seed intervals are 95 % bootstrap "
                 "over test recordings (ᶜ: over clips, runs recorded before the recording "
                 "bootstrap, which gives intervals too narrow).")
    return "\n".join(lines)


def _report_revision_1(entries: list[dict]) -> str:
    """The table of the first measurement (one seed, the seed's epochs, the old KD scale)."""

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    lines = ["| plan | start → final | MACs | params | wide val / test | pruned, before fine-tune "
             "val / test | final val / test | test unseen | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        final = e["final"]
        if e["plan"] == "direct":
            row = [e["plan"], f"seed-final, {e['epochs']} epochs KD", f"{e['macs']:,}",
                   f"{e['params']:,}", "", "",
                   f"{pct(final['validation']['macro'])} / {pct(final['test']['macro'])}",
                   pct(final["test"]["unseen"]), f"{e['seconds'] / 60:.1f}"]
        else:
            wide, before = e["wide"], e["before_finetune"]
            path_text = " → ".join(str(w) for w in [e["start_base"], *e["chain"]])
            row = [e["plan"], f"{path_text} ({e['schedule']}, {e['steps']} steps/stage)",
                   f"{e['macs']:,}", f"{e['params']:,}",
                   f"{pct(wide['validation']['macro'])} / {pct(wide['test']['macro'])}",
                   f"{pct(before['validation']['macro'])} / {pct(before['test']['macro'])}",
                   f"{pct(final['validation']['macro'])} / {pct(final['test']['macro'])}",
                   pct(final["test"]["unseen"]),
                   f"{(e['wide_seconds'] + e['prune_seconds']) / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
