"""A second student family against SSCP-Mobile, at equal training steps, over seeds (issue 32).

One command: ``python benchmarks/family_comparison.py [--split 5] [--seeds 0 1 2]
[--students sscp cp_resnet]``; ``--report`` prints the table, ``--plot FILE`` draws it.

Within one family, width allocation moved accuracy less than training noise
(``search_vs_seed.py``); a structurally different family is the other way to give the search
something to find. Each student is its family's seed network as it fits the DCASE budgets,
unpruned: ``sscp`` is SSCP-Mobile at base 32 (the seed system's final network, preset
``seed-final``), ``cp_resnet`` the example plugin's CP-ResNet in its published DCASE 2022
configuration at the widest base that fits (``cp-resnet-dcase22-b20``; install
``examples/asc-search-example-cpresnet`` first). Both are trained by the product's own path
(``train_candidate``, as promotion trains a finalist), with ``asc-search run``'s default recipe
and default teachers (fitted once, cached, the same logits for both), for the calibration's
epochs at the split, at the product's batch: the same optimiser steps on the same clips, so
the compute differs only by each network's MACs, which every row records (training MACs) with
its CPU seconds.

Validation and test macro accuracy with 95 % intervals, and each row's test predictions, so
``--report`` gives per seed the paired test difference (cp_resnet − sscp, bootstrap over
recordings) and over seeds mean ± sd with the 95 % t interval. Nothing here chooses on test:
the comparison is the figure. Rows are appended to ``--out`` and skipped on a rerun on the
same machine and corpus folder.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from calibrate_corpus import EPOCHS
from results import (
    add_result_options,
    append_result,
    machine,
    pack_predictions,
    plot_accuracies,
    read_results,
    unpack_predictions,
    where_ran,
)

from asc_search.architecture import resolve_preset
from asc_search.errors import AscSearchError
from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.objective import SearchSettings, evaluation_attrs, train_candidate
from asc_search.study.space import Candidate
from asc_search.teachers.quality import fit_scored_ensemble
from asc_search.training.evaluate import evaluate, mean_sd_interval, paired_difference, recordings
from asc_search.training.train import precision_for, predict

REVISION = 1
#: Student name → the preset it trains (each fits 30 M MACs and 128 kB at float16).
STUDENTS = {"sscp": "seed-final", "cp_resnet": "cp-resnet-dcase22-b20"}
REFERENCE = "sscp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--students", nargs="*", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--epochs", type=int, default=None,
                        help="student epochs [default: the calibration's for the split]")
    add_result_options(parser, Path(__file__).with_name("family_comparison.jsonl"))
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        if args.plot:
            rows = [e for e in read_results(args.out) if e.get("revision") == REVISION]
            where = where_ran(rows[-1]) if rows else ""
            groups: dict[str, list[dict[str, Any]]] = {}
            for e in rows:
                if where_ran(e) == where:
                    groups.setdefault(f"{e['split']} %: {e['student']}", []).append(e)
            print(plot_accuracies(groups, args.plot,
                                  title=f"student families at equal steps ({where})"))
        return
    torch.set_num_threads(args.threads)
    epochs = args.epochs or EPOCHS[args.split]
    pm = build_plugin_manager()
    try:
        specs = {name: resolve_preset(STUDENTS[name], pm=pm) for name in args.students}
    except AscSearchError as exc:
        raise SystemExit(f"{exc}: pip install ./examples/asc-search-example-cpresnet") from None
    data = load_split_data(args.data, args.split, pm=pm, cache_dir=cache_dir(), progress=False)
    corpus = data.root.name
    here = where_ran({"machine": machine(), "data": corpus})
    done = {(e["student"], e["seed"], e["split"], e["epochs"])
            for e in read_results(args.out)
            if e.get("revision") == REVISION and where_ran(e) == here}
    settings = SearchSettings(space={}, space_source="")
    precision = precision_for("cpu")
    logits = None
    for seed in args.seeds:
        for name in args.students:
            if (name, seed, args.split, epochs) in done:
                continue
            if logits is None:  # the product's default teachers, fitted once (cached)
                logits = fit_scored_ensemble(
                    data, teacher_names=list(settings.teachers), pm=pm, cache_dir=cache_dir(),
                    recipe=settings.teacher_recipe(len(data.train)), precision=precision,
                    progress=False).ensemble.logits
            started = time.process_time()
            outcome = train_candidate(Candidate(spec=specs[name]), settings=settings, pm=pm,
                                      train=data.train, validation=data.validation,
                                      teacher_logits=logits, precision=precision,
                                      epochs=epochs, seed=seed)
            test_logits = predict(outcome.model, data.test.features, precision=precision)
            test = evaluate(test_logits, data.test.labels, data.test.devices,
                            files=data.test.files)
            append_result(args.out, {
                "revision": REVISION, "student": name, "preset": STUDENTS[name],
                "arch": specs[name].arch, "data": corpus, "data_source": args.data, "seed": seed,
                "split": args.split,
                "epochs": epochs, "threads": torch.get_num_threads(),
                "date": date.today().isoformat(), "macs": outcome.macs,
                "param_bytes": outcome.param_bytes, "training_macs": outcome.training_macs,
                "cpu_seconds": round(time.process_time() - started, 1),
                "validation": evaluation_attrs(outcome.validation),
                "test": evaluation_attrs(test),
                "test_predicted": pack_predictions(test_logits)})


def report(path: Path) -> str:
    """Per machine and corpus and split: each student's validation and test mean ± sd over
    seeds, CPU minutes and training TMACs; per seed the paired test difference from ``sscp``;
    over seeds the difference's mean ± sd and 95 % t interval."""
    rows = [e for e in read_results(path) if e.get("revision") == REVISION]
    if not rows:
        return f"{path}: no rows yet"
    lines: list[str] = []
    for where in sorted({where_ran(e) for e in rows}):
        for split in sorted({e["split"] for e in rows if where_ran(e) == where}):
            here = [e for e in rows if where_ran(e) == where and e["split"] == split]
            lines.append(f"## {where}, split {split} %")
            for name in STUDENTS:
                mine = [e for e in here if e["student"] == name]
                if not mine:
                    continue
                val = mean_sd_interval([e["validation"]["macro"] * 100 for e in mine])
                test = mean_sd_interval([e["test"]["macro"] * 100 for e in mine])
                lines.append(
                    f"{name:10s} n={len(mine)}  val {val['mean']:.1f} ± {val['sd']:.1f}  "
                    f"test {test['mean']:.1f} ± {test['sd']:.1f} (t {test['low']:.1f}…"
                    f"{test['high']:.1f})  {mine[0]['macs'] / 1e6:.1f} M MACs, "
                    f"{mine[0]['param_bytes']:,} B  "
                    f"{np.mean([e['cpu_seconds'] for e in mine]) / 60:.1f} CPU-min, "
                    f"{np.mean([e['training_macs'] for e in mine]) / 1e12:.2f} training TMACs")
            lines.extend(_paired(here))
    return "\n".join(lines)


def _paired(rows: list[dict[str, Any]]) -> list[str]:
    """Each other student minus ``REFERENCE`` on the same test clips, per seed (a paired
    bootstrap over recordings, from the rows' predictions and the split's cached labels) and
    over seeds (mean ± sd, 95 % t interval)."""
    lines = []
    by = {(e["student"], e["seed"]): e for e in rows}
    seeds = sorted({seed for student, seed in by if student == REFERENCE})
    test = load_split_data(rows[0]["data_source"], rows[0]["split"], pm=build_plugin_manager(),
                           cache_dir=cache_dir(), progress=False).test
    for name in STUDENTS:
        if name == REFERENCE:
            continue
        differences = []
        for seed in seeds:
            if (name, seed) not in by:
                continue
            mine, reference = by[(name, seed)], by[(REFERENCE, seed)]
            paired = paired_difference(
                test.labels, unpack_predictions(mine["test_predicted"]) == test.labels,
                unpack_predictions(reference["test_predicted"]) == test.labels,
                groups=recordings(test.files))
            differences.append(paired["difference"] * 100)
            text = (f"  seed {seed}: {name} − {REFERENCE} test {paired['difference'] * 100:+.1f} "
                    f"(paired 95 % {paired['low'] * 100:+.1f} … {paired['high'] * 100:+.1f})")
            lines.append(text)
        if differences:
            over = mean_sd_interval(differences)
            lines.append(f"{name} − {REFERENCE} over {over['n']} seeds: {over['mean']:+.1f} ± "
                         f"{over['sd']:.1f} (95 % t {over['low']:+.1f} … {over['high']:+.1f})")
    return lines


if __name__ == "__main__":
    main()
