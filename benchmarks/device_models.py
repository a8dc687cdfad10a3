"""Do device-specific models pay? The DCASE 2025 mode against the general model (issue 14).

One command: ``python benchmarks/device_models.py [--split 25] [--seeds 0 1 2]
[--teachers none|calibration] [--trials 6]``. On the embedded corpus, per seed: the DCASE
baseline is trained by the product's path (``train_candidate``, the product's batch for the
split, the calibration's epochs: 50 at 25 %) as the general model; ``search_device_tuning``
then fine-tunes one model per training device from it (the tuning searched on validation routed
by device), exactly as ``asc-search run --device-specific`` does for its best finalist. The test
list is read once per seed, for both: the general model on every clip, and the device models
routed by device (unknown devices s4-s6 fall back to the general model, so their figures are
the same for both: a check of the routing).

Teachers: ``none`` (no KD, the default: no teacher ensemble is cached at 25 % yet, and fitting
one costs hours here) or ``calibration`` (the calibration's wide CP-Mobile + patchout
transformer, fitted or read from the cache), used by the general model and the device models
alike. Each finished seed is appended to ``--out`` (default benchmarks/device_models.jsonl)
and skipped on a rerun; ``--report`` prints mean ± sd over seeds and the paired difference.
CPU time is process time with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from calibrate_corpus import EPOCHS, recipe_for
from results import add_result_options, append_result, plot_accuracies, read_results
from seed_plans import candidates

from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.objective import evaluation_attrs, train_candidate
from asc_search.teachers.ensemble import ensemble_logits
from asc_search.training.device_models import (
    known_and_unknown,
    routed_evaluation,
    search_device_tuning,
)
from asc_search.training.evaluate import evaluate, mean_sd_interval
from asc_search.training.train import precision_for, predict

REVISION = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--teachers", choices=["none", "calibration"], default="none")
    parser.add_argument("--trials", type=int, default=6, help="device tunings tried per seed")
    parser.add_argument("--epochs", type=int, default=None,
                        help="general model's epochs [default: the calibration's per split]")
    add_result_options(parser, Path(__file__).with_name("device_models.jsonl"))
    args = parser.parse_args()
    if args.report:
        print(report(args.out, args.plot))
        return
    torch.set_num_threads(args.threads)
    epochs = args.epochs or EPOCHS[args.split]
    pm = build_plugin_manager()
    done = {(e["split"], e["seed"], e["teachers"], e["epochs"]) for e in read_results(args.out)
            if e.get("revision") == REVISION}
    data = load_split_data(args.data, args.split, pm=pm, cache_dir=cache_dir(), progress=False)
    precision = precision_for("cpu")
    teacher_logits, teacher_seconds = None, 0.0
    settings, plans = candidates(pm)
    settings = replace(settings, recipe={})  # the product's batch for the split
    for seed in args.seeds:
        if (args.split, seed, args.teachers, epochs) in done:
            continue
        if args.teachers == "calibration" and teacher_logits is None:
            started = time.process_time()
            teacher_logits = ensemble_logits(
                data.train, teacher_names=["wide_cp_mobile", "patchout_transformer"], pm=pm,
                cache_dir=cache_dir(), recipe=recipe_for(args.split, len(data.train), 0, 256),
                progress=False).logits
            teacher_seconds = time.process_time() - started
        started = time.process_time()
        general = train_candidate(plans["baseline"], settings=settings, pm=pm, train=data.train,
                                  validation=data.validation, teacher_logits=teacher_logits,
                                  precision=precision, epochs=epochs, seed=seed)
        general_cpu = time.process_time() - started
        recipe = settings.base_recipe(len(data.train))
        started = time.process_time()
        found = search_device_tuning(general.model, train=data.train, validation=data.validation,
                                     teacher_logits=teacher_logits, recipe=recipe,
                                     precision=precision, trials=args.trials, seed=seed,
                                     announce=lambda line: print(line, flush=True))
        device_cpu = time.process_time() - started
        # Selection is over: the test list, once, for both.
        general_test = evaluate(predict(general.model, data.test.features, precision=precision),
                                data.test.labels, data.test.devices, files=data.test.files)
        routed_test = routed_evaluation(found.models, general.model, data.test,
                                        precision=precision)
        known = sorted(found.models)
        append_result(args.out, {
            "revision": REVISION, "split": args.split, "seed": seed, "teachers": args.teachers,
            "epochs": epochs, "trials": args.trials, "date": date.today().isoformat(),
            "threads": torch.get_num_threads(), "devices": known,
            "tuning": asdict(found.tuning), "tried": found.tried,
            "general_cpu_seconds": round(general_cpu, 1),
            "device_cpu_seconds": round(device_cpu, 1),
            "teacher_cpu_seconds": round(teacher_seconds, 1),
            "general": {"validation": evaluation_attrs(general.validation),
                        "test": evaluation_attrs(general_test)
                        | known_and_unknown(general_test.per_device, known)},
            "device_specific": {"validation": evaluation_attrs(found.validation),
                                "test": evaluation_attrs(routed_test)
                                | known_and_unknown(routed_test.per_device, known)}})


def report(path: Path, plot: Path | None = None) -> str:
    """Mean ± sd over seeds of the general and the device-specific test accuracy (overall,
    known, unknown devices) and their difference paired by seed."""
    entries = [e for e in read_results(path) if e.get("revision") == REVISION]
    lines = ["| split | teachers | seeds | model | test % | known % | unknown % | "
             "CPU-min per seed |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def summary(values: list[float]) -> str:
        g = mean_sd_interval(values)
        spread = f" ± {100 * g['sd']:.1f}" if g["n"] > 1 else ""
        return f"{100 * g['mean']:.1f}{spread}"

    groups: dict[str, list[dict[str, Any]]] = {}
    for split, teachers in sorted({(e["split"], e["teachers"]) for e in entries}):
        mine = [e for e in entries if (e["split"], e["teachers"]) == (split, teachers)]
        for model, cpu in (("general", "general_cpu_seconds"),
                           ("device_specific", "device_cpu_seconds")):
            tests = [e[model]["test"] for e in mine]
            minutes = np.mean([e[cpu] for e in mine]) / 60
            lines.append(f"| {split} % | {teachers} | {len(mine)} | {model} | "
                         f"{summary([t['macro'] for t in tests])} | "
                         f"{summary([t['known'] for t in tests])} | "
                         f"{summary([t['unknown'] for t in tests])} | {minutes:.1f} |")
            groups[f"{split} %: {model}"] = [{"seed": e["seed"], "test": e[model]["test"]}
                                             for e in mine]
        difference = mean_sd_interval([e["device_specific"]["test"]["macro"]
                                       - e["general"]["test"]["macro"] for e in mine])
        lines.append(f"\ndevice-specific − general on test, paired by seed (n = "
                     f"{difference['n']}): {100 * difference['mean']:+.1f} points"
                     + (f" (95 % t {100 * difference['low']:+.1f} to "
                        f"{100 * difference['high']:+.1f})" if difference["n"] > 1
                        else " (one seed: no interval over seeds, not a finding)"))
    if plot and groups:
        plot_accuracies(groups, plot, title="device-specific models against the general one")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
