"""Calibrate the embedded corpus: the DCASE baseline spec trained with the project's recipe.

One command: ``python benchmarks/calibrate_corpus.py [--splits 5 10 25 50 100] [--kd-seeds 0 1 2]``.
For every split it trains the baseline spec without KD; for split 5 it also fits the default
teacher ensemble and trains with and without KD for each seed in ``--kd-seeds``. Every result is
appended as one JSON line to ``--out`` (default: benchmarks/calibration.jsonl), so an interrupted
run keeps what it finished.

Epochs are scaled so every split sees a similar number of samples (the corpus's 5 % split has
only 400 clips; 150 epochs of 100 % would take 100 minutes on 2 cores): 150 / 100 / 50 / 30 / 16
epochs for 5 / 10 / 25 / 50 / 100 %, warm-up 10 % of the steps.

Results carry the ``revision`` of the training code they were measured with; a rerun skips only
runs of the current revision, and ``--report`` shows one revision (default: the current one).
Revision 1: before issue 15 (KD term summed over classes, masks after Freq-MixStyle and set to
0.0). Revision 2: CP-JKU's KD scale (mean over classes), masks set to silence before MixStyle.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from results import append_result, read_results

from asc_search.architecture import ArchSpec, build_model
from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.objective import evaluation_attrs
from asc_search.teachers.ensemble import ensemble_logits
from asc_search.training.evaluate import evaluate, mean_sd_interval
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import fit, predict

EPOCHS = {5: 150, 10: 100, 25: 50, 50: 30, 100: 16}
REVISION = 2


def run(data, recipe: TrainingRecipe, *, pm, teacher_logits=None) -> dict:
    model = build_model(ArchSpec(), pm=pm, seed=recipe.seed)
    started = time.perf_counter()
    fit(model, data.train, recipe, teacher_logits=teacher_logits, progress=False)
    seconds = time.perf_counter() - started
    out = {"seconds": round(seconds, 1), "revision": REVISION}
    for name, labelled in (("validation", data.validation), ("test", data.test)):
        result = evaluate(predict(model, labelled.features), labelled.labels, labelled.devices,
                          files=labelled.files)
        out[name] = evaluation_attrs(result)
    out["interval"] = "recordings"
    return out


def recipe_for(split: int, n_train: int, seed: int, batch: int) -> TrainingRecipe:
    epochs = EPOCHS[split]
    steps = epochs * math.ceil(n_train / batch)
    return TrainingRecipe(epochs=epochs, batch_size=batch, warmup_steps=max(1, steps // 10),
                          seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--splits", type=int, nargs="*", default=[5, 100, 10, 25, 50])
    parser.add_argument("--kd-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("calibration.jsonl"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--report", action="store_true",
                        help="print the markdown tables of --out's results and stop")
    parser.add_argument("--revision", type=int, default=REVISION,
                        help="which code revision's results --report shows")
    args = parser.parse_args()
    if args.report:
        print(report(args.out, revision=args.revision))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    # Resume: runs already recorded are not repeated.
    done = {(e["split"], e["kd"], e["seed"]) for e in read_results(args.out)
            if "kd" in e and e.get("revision", 1) == REVISION}

    def record(entry: dict) -> None:
        append_result(args.out, entry)
        if "kd" in entry:
            done.add((entry["split"], entry["kd"], entry["seed"]))

    for split in args.splits:
        data = load_split_data(args.data, split, pm=pm, cache_dir=cache, progress=False)
        recipe = recipe_for(split, len(data.train), 0, args.batch)
        if (split, False, 0) not in done:
            record({"split": split, "kd": False, "seed": 0, "epochs": recipe.epochs,
                    **run(data, recipe, pm=pm)})
        if split != 5 or not args.kd_seeds:
            continue
        started = time.perf_counter()
        ensemble = ensemble_logits(data.train, teacher_names=["wide_cp_mobile", "patchout_transformer"],
                                   pm=pm, cache_dir=cache, recipe=recipe, progress=False)
        teacher_train = evaluate(ensemble.logits, data.train.labels, data.train.devices,
                                 interval=False)
        record({"split": split, "revision": REVISION, "teachers": list(ensemble.per_teacher),
                "teacher_seconds": round(time.perf_counter() - started, 1),
                "teacher_cache_hit": ensemble.cache_hit,
                "ensemble_train_macro": round(teacher_train.macro_accuracy, 4)})
        for seed in args.kd_seeds:
            seeded = recipe.with_(seed=seed)
            if (split, False, seed) not in done:
                record({"split": split, "kd": False, "seed": seed, "epochs": seeded.epochs,
                        **run(data, seeded, pm=pm)})
            if (split, True, seed) not in done:
                record({"split": split, "kd": True, "seed": seed, "epochs": seeded.epochs,
                        **run(data, seeded, pm=pm, teacher_logits=ensemble.logits)})


def report(path: Path, *, revision: int = REVISION) -> str:
    """Markdown tables (test and validation macro accuracy per split, KD at split 5) from results,
    with each run's 95 % bootstrap interval and, over seeds, mean ± sd and a t interval."""
    entries = [e for e in read_results(path) if e.get("revision", 1) == revision]
    runs = list({(e["split"], e["kd"], e["seed"]): e for e in reversed(entries)
                 if "kd" in e}.values())  # one per run: the first recorded

    def pct(value) -> str:
        return "" if value is None else f"{100 * value:.1f}"

    def interval(scores: dict, entry: dict) -> str:
        low, high = scores.get("macro_interval", (None, None))
        if low is None:
            return ""
        return f" ({pct(low)}–{pct(high)}){'' if entry.get('interval') else 'ᶜ'}"

    lines = ["| split | KD | seed | epochs | train s | validation (95 % CI) | test (95 % CI) "
             "| test seen (a–s3) | test unseen (s4–s6) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in sorted(runs, key=lambda e: (e["split"], e["kd"], e["seed"])):
        lines.append(f"| {e['split']} % | {'yes' if e['kd'] else 'no'} | {e['seed']} | {e['epochs']} "
                     f"| {e['seconds']:.0f} | {pct(e['validation']['macro'])}"
                     f"{interval(e['validation'], e)} | {pct(e['test']['macro'])}"
                     f"{interval(e['test'], e)} | {pct(e['test']['seen'])} | "
                     f"{pct(e['test']['unseen'])} |")
    lines += ["", "Per-run intervals: 95 % bootstrap over recordings (ᶜ: over clips, runs "
              "recorded before the recording bootstrap; too narrow)."]
    kd = {(e["kd"], e["seed"]): e for e in runs if e["split"] == 5}
    seeds = sorted({seed for kd_flag, seed in kd if kd_flag and (False, seed) in kd})
    if seeds:
        lines += ["", "KD at split 5, seeds " + ", ".join(map(str, seeds)) + ": mean ± sd "
                  "(95 % t interval of the mean)", "",
                  "| | validation | test | test unseen |", "| --- | --- | --- | --- |"]

        def summary(values: list[float]) -> str:
            s = mean_sd_interval(values)
            if s["n"] < 2:
                return pct(s["mean"])
            return (f"{pct(s['mean'])} ± {pct(s['sd'])} ({pct(s['low'])}–{pct(s['high'])})")

        for flag in (False, True):
            chosen = [kd[(flag, s)] for s in seeds]
            lines.append(f"| {'with' if flag else 'without'} KD | "
                         f"{summary([e['validation']['macro'] for e in chosen])} | "
                         f"{summary([e['test']['macro'] for e in chosen])} | "
                         f"{summary([e['test']['unseen'] for e in chosen])} |")
        gains = {name: [kd[(True, s)][name]["macro"] - kd[(False, s)][name]["macro"]
                        for s in seeds] for name in ("validation", "test")}
        unseen = [kd[(True, s)]["test"]["unseen"] - kd[(False, s)]["test"]["unseen"]
                  for s in seeds]
        lines.append(f"| KD gain (paired by seed) | {summary(gains['validation'])} | "
                     f"{summary(gains['test'])} | {summary(unseen)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
