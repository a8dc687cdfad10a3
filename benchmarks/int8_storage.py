"""Does int8 storage pay? Float16 against int8 networks filled to the same budgets (issue 14).

One command: ``python benchmarks/int8_storage.py [--split 5] [--seeds 0 1 2] [--epochs N]
[--profiles even late] [--teacher-set none|calibration]``. On the embedded corpus, per seed and
width profile, one network is filled to the budgets (30 M MACs, 128 kB) as the default space
fills a plan (``asc_search.pruning.plans``: the ``seed-s2-start`` family, 96 channels wide at
most, each layer's keep ratio scaled to the largest network that fits) once with float16 bytes
and once with int8 bytes (``asc_search.complexity.int8_param_bytes``), and each is trained from
scratch by the product's own path (``train_candidate``, unpruned) for the same epochs and recipe.
The int8 one spends the last quarter of its steps quantisation-aware and is converted; its test
score is the converted program's, its bytes the program's own count.

Width profiles (keep ratios for stem, stage 1, stage 2, stage 3, expansions):

- ``even`` (all 0.5): the MACs bind before the bytes in float16 already, so both storages get the
  same network, and the difference is what int8 rounding costs after QAT;
- ``late`` (0.2, 0.2, 0.6, 1.0, 0.5): width kept where a parameter costs few MACs; float16 is
  bound by the 128 kB, and int8 fits about a third more parameters under the same budgets.

Each run records validation and test macro accuracy with 95 % intervals, parameters, bytes, MACs
and CPU seconds. Runs are appended to ``--out`` (default benchmarks/int8_storage.jsonl) and
skipped on a rerun; ``--report`` prints mean ± sd over seeds and int8 − float16 paired by seed,
``--plot`` draws the test accuracies. CPU time is process time with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from itertools import product
from pathlib import Path
from typing import Any

import torch
from calibrate_corpus import EPOCHS, recipe_for
from results import add_result_options, append_result, plot_accuracies, read_results

from asc_search.architecture import build_model
from asc_search.complexity import count_complexity
from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.pruning.plans import candidate_of
from asc_search.study.objective import SearchSettings, evaluation_attrs, train_candidate
from asc_search.study.space import Candidate, read_space, space_from_dict
from asc_search.teachers.ensemble import ensemble_logits
from asc_search.training.evaluate import evaluate, mean_sd_interval
from asc_search.training.int8 import fp32_precision
from asc_search.training.train import precision_for, predict

REVISION = 1
STORAGES = ("float16", "int8")
PARENT = "seed-s2-start"
PROFILES: dict[str, tuple[float, float, float, float, float]] = {
    "even": (0.5, 0.5, 0.5, 0.5, 0.5),
    "late": (0.2, 0.2, 0.6, 1.0, 0.5),
}
#: The calibration's teacher pair (``calibrate_corpus.py``), for ``--teacher-set calibration``.
CALIBRATION_TEACHERS = ["wide_cp_mobile", "patchout_transformer"]


def filled(profile: str, storage: str, *, pm: Any) -> tuple[Candidate, SearchSettings]:
    """The profile's network filled to the default budgets at ``storage``, as an unpruned
    candidate (trained from scratch), and the settings of a default-space study."""
    raw, source = read_space("sscp_fill_storage")
    space = space_from_dict(raw, source=source, pm=pm)
    keep = dict(zip(("keep_stem", "keep_s1", "keep_s2", "keep_s3", "keep_expand"),
                    PROFILES[profile], strict=True))
    settled = candidate_of(space, {"parent": PARENT, **keep, "importance": "l2",
                                   "schedule": "one_shot", "prune_stages": 1,
                                   "storage": storage},
                           pm=pm, max_macs=30_000_000, max_param_bytes=128_000)
    return (Candidate(spec=settled.spec, plan={"storage": storage}),
            SearchSettings(space=raw, space_source=source))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--epochs", type=int, default=None,
                        help="training budget [default: the calibration's for the split]")
    parser.add_argument("--teacher-set", choices=["none", "calibration"], default="none")
    add_result_options(parser, Path(__file__).with_name("int8_storage.jsonl"))
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        if args.plot:
            groups: dict[str, list[dict[str, Any]]] = {}
            for e in read_results(args.out):
                if e.get("revision") == REVISION:
                    groups.setdefault(f"{e['split']} %, {e['epochs']} ep, {e['teacher_set']}: "
                                      f"{e['profile']} {e['storage']}", []).append(e)
            print(plot_accuracies(dict(sorted(groups.items())), args.plot,
                                  title="float16 against int8 at the same budgets"))
        return
    torch.set_num_threads(args.threads)
    epochs = args.epochs or EPOCHS[args.split]
    pm = build_plugin_manager()
    done = {(e["profile"], e["storage"], e["seed"], e["split"], e["epochs"], e["teacher_set"])
            for e in read_results(args.out) if e.get("revision") == REVISION}
    data = load_split_data(args.data, args.split, pm=pm, cache_dir=cache_dir(), progress=False)
    logits = None
    if args.teacher_set == "calibration":
        logits = ensemble_logits(data.train, teacher_names=CALIBRATION_TEACHERS, pm=pm,
                                 cache_dir=cache_dir(), progress=False,
                                 recipe=recipe_for(args.split, len(data.train), 0, 256)).logits
    precision = precision_for("cpu")
    for seed, profile, storage in product(args.seeds, args.profiles, STORAGES):
        if (profile, storage, seed, args.split, epochs, args.teacher_set) in done:
            continue
        candidate, settings = filled(profile, storage, pm=pm)
        card = count_complexity(build_model(candidate.spec, pm=pm), storage_dtype=storage)
        started = time.process_time()
        outcome = train_candidate(candidate, settings=settings, pm=pm, train=data.train,
                                  validation=data.validation, teacher_logits=logits,
                                  precision=precision, epochs=epochs, seed=seed)
        scored = outcome.int8 if outcome.int8 is not None else outcome.model
        test = evaluate(predict(scored, data.test.features,
                                precision=fp32_precision(precision) if outcome.int8 else precision),
                        data.test.labels, data.test.devices, files=data.test.files)
        append_result(args.out, {
            "revision": REVISION, "profile": profile, "storage": storage, "seed": seed,
            "split": args.split, "epochs": epochs, "teacher_set": args.teacher_set,
            "threads": torch.get_num_threads(), "date": date.today().isoformat(),
            "spec": candidate.spec.to_dict(), "params": outcome.params, "macs": outcome.macs,
            "param_bytes": outcome.param_bytes, "precheck_bytes": card.param_bytes,
            "cpu_seconds": round(time.process_time() - started, 1),
            "validation": evaluation_attrs(outcome.validation), "test": evaluation_attrs(test)})


def report(path: Path) -> str:
    """Per split, epochs, teachers, profile and storage: test (all, unseen) mean ± sd over seeds
    with a 95 % t interval, and int8 − float16 of the same profile, paired by seed."""
    entries = [e for e in read_results(path) if e.get("revision") == REVISION]
    runs = {(e["split"], e["epochs"], e["teacher_set"], e["profile"], e["storage"], e["seed"]): e
            for e in entries}

    def summary(values: list[float]) -> str:
        g = mean_sd_interval(values)
        spread = (f" ± {100 * g['sd']:.1f} ({100 * g['low']:.1f} to {100 * g['high']:.1f})"
                  if g["n"] > 1 else "")
        return f"{100 * g['mean']:.1f}{spread}"

    lines = ["| split | epochs | teachers | profile | storage | seeds | params | bytes | M MACs "
             "| test % | test unseen % | int8 − float16, paired (points) | CPU-min per run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted({k[:5] for k in runs}):
        seeds = sorted(k[5] for k in runs if k[:5] == key)
        mine = [runs[(*key, s)] for s in seeds]
        paired = ""
        if key[4] == "int8":
            twins = [s for s in seeds if (*key[:4], "float16", s) in runs]
            if twins:
                paired = summary([runs[(*key, s)]["test"]["macro"]
                                  - runs[(*key[:4], "float16", s)]["test"]["macro"]
                                  for s in twins])
        cpu = sum(e["cpu_seconds"] for e in mine) / len(mine) / 60
        lines.append(f"| {key[0]} % | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {len(seeds)} "
                     f"| {mine[0]['params']:,} | {mine[0]['param_bytes']:,} "
                     f"| {mine[0]['macs'] / 1e6:.1f} "
                     f"| {summary([e['test']['macro'] for e in mine])} "
                     f"| {summary([e['test']['unseen'] for e in mine])} | {paired} | {cpu:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
