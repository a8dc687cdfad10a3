"""What sharing trained parents saves: the seed's three plans at the search budget, with and without
a parents cache.

One command: ``python benchmarks/parent_reuse.py [--split 5] [--epochs 8] [--threads 1]``. On the
embedded corpus, with the default run's teacher (``wide_cp_mobile``, 20 epochs, from the cache
when it is there), S1 (64 → 32), S2 (96 → 32) and S3 (96 → 64 → 32) are trained through
``train_candidate`` as search trials train them, in one process, twice:

- reference: no parents cache, so every plan trains its own wide network;
- shared: a fresh parents cache, so S3 loads the 96-wide parent S2 trained.

Records seconds, training MACs and validation accuracy per plan and prints the totals and their
ratio. A mode's three plans are appended to ``--out`` together when the mode finishes (a shared
run cut off after S2 would leave S3 a fresh cache on resuming), and a rerun skips the modes that
are there. The two runs give S2 the same
parent, so their validation scores must agree; S3's must too (the parent is the same network).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from results import append_result, read_results

from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.lifecycle import seed_params
from asc_search.study.objective import SearchSettings, train_candidate
from asc_search.study.space import read_space, space_from_dict
from asc_search.teachers.ensemble import ensemble_logits
from asc_search.training.train import precision_for

PLANS = ("seed-S1", "seed-S2", "seed-S3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8, help="the search budget per plan")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("parent_reuse.jsonl"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(args.threads)
    pm, cache = build_plugin_manager(), cache_dir()
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=pm)
    settings = SearchSettings(space=raw, space_source=source, split=args.split,
                              proxy_epochs=args.epochs)
    data = load_split_data("embedded", args.split, pm=pm, cache_dir=cache, progress=False)
    ensemble = ensemble_logits(data.train, teacher_names=settings.teachers, pm=pm,
                               cache_dir=cache, recipe=settings.teacher_recipe(len(data.train)),
                               progress=False)
    params = seed_params(space)
    done = {e["mode"] for e in read_results(args.out)
            if (e["split"], e["epochs"]) == (args.split, args.epochs)}
    precision = precision_for("cpu")
    for mode in ("reference", "shared"):
        if mode in done:
            continue
        finished = []
        with tempfile.TemporaryDirectory(dir=cache) as parents:
            for plan in PLANS:
                outcome = train_candidate(
                    space.candidate(space.values_of(params[plan])), settings=settings, pm=pm,
                    train=data.train, validation=data.validation,
                    teacher_logits=ensemble.logits, precision=precision, epochs=args.epochs,
                    seed=1, parents=Path(parents) if mode == "shared" else None)
                finished.append({
                    "mode": mode, "plan": plan, "split": args.split, "epochs": args.epochs,
                    "threads": args.threads, "seconds": round(outcome.seconds, 1),
                    "training_macs": outcome.training_macs,
                    "parent_trained": outcome.parent_trained,
                    "validation": round(outcome.validation.macro_accuracy, 4)})
        for entry in finished:
            append_result(args.out, entry)


def report(path: Path) -> str:
    entries = read_results(path)
    lines = ["| mode | plan | parent | seconds | training GMACs | validation % |",
             "| --- | --- | --- | --- | --- | --- |"]
    totals: dict[str, tuple[float, int]] = {}
    for e in entries:
        parent = "trained" if e["parent_trained"] else "loaded from the cache"
        lines.append(f"| {e['mode']} | {e['plan']} | {parent} | {e['seconds']:.1f} | "
                     f"{e['training_macs'] / 1e9:.0f} | {100 * e['validation']:.1f} |")
        seconds, macs = totals.get(e["mode"], (0.0, 0))
        totals[e["mode"]] = (seconds + e["seconds"], macs + e["training_macs"])
    for mode, (seconds, macs) in totals.items():
        lines.append(f"| {mode}, all three | | | {seconds:.1f} | {macs / 1e9:.0f} | |")
    if {"reference", "shared"} <= totals.keys():
        ratio = totals["shared"][0] / totals["reference"][0]
        lines.append(f"\nshared / reference seconds: {ratio:.2f}; training MACs: "
                     f"{totals['shared'][1] / totals['reference'][1]:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
