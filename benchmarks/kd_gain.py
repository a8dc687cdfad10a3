"""Does distillation pay? Students with and without KD from each teacher set, over seeds (issue 13).

One command: ``python benchmarks/kd_gain.py [--split 5] [--seeds 0 1 2] [--students baseline S1]
[--teacher-sets none calibration ...]``. On the embedded corpus, per split, seed, student and
teacher set, the student is trained by the product's own path (``train_candidate``, as promotion
trains a finalist) for the calibration's epochs at that split (150 at 5 %, 50 at 25 %), with KD
from the set's cached ensemble, or without KD for ``none``; everything else is the same recipe.

Students: ``baseline`` (the DCASE 2024 baseline, unpruned) and ``S1`` (the best seed plan of
``search_vs_seed.py``: 64 → 32 pruned; its parent distils from the same teachers, and every
parent is trained with the run's seed). Teacher sets (``TEACHER_SETS``; each names its teachers,
how long they train, and its fitting options), the levers issue 13 asks to measure:

- ``calibration``: ``wide_cp_mobile`` + ``patchout_transformer`` at the student's epochs, as
  ``calibrate_corpus.py`` fits them (the cache it filled serves this set);
- ``out_of_fold``: the same pair, out-of-fold logits from 4 fits each (no memorised clips);
- ``seeds``: ``wide_cp_mobile`` three times (a seed each) + ``patchout_transformer``: an
  ensemble of architectures and seeds, as the seed's four PaSSTs were;
- ``mixup``: the calibration pair trained with mixup (α 0.3), so they blend clips instead of
  memorising them;
- ``product_batch``: the calibration pair at the product's batch for the split (n // 25, 16 at
  the corpus's 5 %) instead of the published 256, which gives 400 clips two steps per epoch
  (``search_vs_seed.py`` found students undertrained at 256; the calibration's teachers are too).
- ``device_responses``: ``product_batch`` with device impulse-response augmentation (p 0.6).
- ``oof_device_responses``: ``device_responses`` with out-of-fold logits from 4 fits each.
- ``run_default``: the teachers ``asc-search run`` fits when given none (``SearchSettings``'s
  defaults: one ``wide_cp_mobile``, 20 epochs at the product's batch): does the default run's
  distillation pay for the minutes it spends on it?
- ``run_default_10``, ``run_default_40``: that teacher trained 10 or 40 epochs (the product's
  ``--teacher-epochs``), between the 20 that teach and the 150 that memorise;
- ``run_default_dr``: that teacher with device impulse-response augmentation (p 0.6);
- ``run_default_x3``: three of that teacher, seeded apart, averaged;
- ``run_default_w50``: the ``run_default`` logits distilled with ``kd_weight`` 0.5 instead of
  0.98 (a set's ``distill`` overrides the student's KD settings, not its teachers).

Students train at the product's batch for the split, as ``asc-search run`` trains them, with
``--student-augments`` naming student-side levers (``STUDENT_AUGMENTS``): ``none``, or
``device_responses`` (device impulse-response augmentation, p 0.6, for the student and its parent).

Each run records validation and test macro accuracy with 95 % intervals, the unseen devices
(s4–s6) apart, CPU seconds, and for each teacher set its fitting CPU time and the ensemble's
agreement with the training labels (a set that memorises them scores 100 %) and, when the set is
fitted in this run (not read from the cache), its validation accuracy: KD can only pass on what
the teachers know beyond the student. Runs are appended
to ``--out`` (default benchmarks/kd_gain.jsonl) and skipped on a rerun on the same machine and
corpus folder (rows name both; elsewhere they run again, see ``where_ran``); ``--report`` prints
mean ± sd over seeds and each set's gain over ``none`` (or over ``--against SET``), paired by
seed on one machine and corpus folder. Teacher fitting is
measured once per set and split (a later run reads the cache). CPU time is process time with
``--threads 1``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from datetime import date
from itertools import product
from pathlib import Path
from typing import Any

import torch
from calibrate_corpus import EPOCHS, recipe_for
from results import (
    add_result_options,
    append_result,
    machine,
    plot_accuracies,
    read_results,
    where_ran,
)
from seed_plans import candidates

from asc_search.features.experiment import load_split_data
from asc_search.paths import cache_dir
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.objective import (
    SearchSettings,
    auto_batch_size,
    evaluation_attrs,
    train_candidate,
)
from asc_search.teachers.quality import fit_scored_ensemble
from asc_search.training.evaluate import evaluate, mean_sd_interval
from asc_search.training.train import precision_for, predict

REVISION = 1
#: ``asc-search run``'s settings where the user gives none (the space plays no part here), as
#: they were until stop 28: teachers without device impulse-response augmentation. The rows named
#: ``run_default*`` were measured so; since stop 28 the default is ``run_default_dr``.
RUN_DEFAULTS = SearchSettings(space={}, space_source="", teacher_device_response_p=0.0)
STUDENTS = ("baseline", "S1")
#: Student-side levers: recipe overrides for the student (and its parent), keyed by name.
STUDENT_AUGMENTS: dict[str, dict[str, Any]] = {
    "none": {},
    # Device impulse-response augmentation at CP-JKU's probability, the built-in synthetic bank.
    "device_responses": {"device_response_p": 0.6},
}


@dataclass(frozen=True)
class TeacherSet:
    teachers: tuple[str, ...]
    folds: int = 1
    recipe: tuple[tuple[str, Any], ...] = ()  # overrides of the teachers' recipe
    #: Teachers at the product's batch for the split (n // 25) instead of the published 256.
    product_batch: bool = False
    #: The teachers and recipe of ``asc-search run``'s defaults instead of the calibration's.
    from_run: bool = False
    #: Overrides of the student's distillation (``kd_weight``, ``kd_temperature``): the same
    #: teachers and cache, distilled differently.
    distill: tuple[tuple[str, Any], ...] = ()


TEACHER_SETS = {
    "none": None,
    "calibration": TeacherSet(("wide_cp_mobile", "patchout_transformer")),
    "out_of_fold": TeacherSet(("wide_cp_mobile", "patchout_transformer"), folds=4),
    "seeds": TeacherSet(("wide_cp_mobile", "wide_cp_mobile", "wide_cp_mobile",
                         "patchout_transformer")),
    "mixup": TeacherSet(("wide_cp_mobile", "patchout_transformer"),
                        recipe=(("mixup_alpha", 0.3),)),
    "product_batch": TeacherSet(("wide_cp_mobile", "patchout_transformer"), product_batch=True),
    "device_responses": TeacherSet(("wide_cp_mobile", "patchout_transformer"), product_batch=True,
                                   recipe=(("device_response_p", 0.6),)),
    # device_responses with out-of-fold logits: the teachers above still agree 100 % with the
    # training labels (memorised, so their soft labels are the hard ones again).
    "oof_device_responses": TeacherSet(("wide_cp_mobile", "patchout_transformer"), folds=4,
                                       product_batch=True, recipe=(("device_response_p", 0.6),)),
    "run_default": TeacherSet(RUN_DEFAULTS.teachers, from_run=True),
    # How long the default teacher trains: 20 epochs teach and 150 memorise (stop 26).
    "run_default_10": TeacherSet(RUN_DEFAULTS.teachers, from_run=True, recipe=(("epochs", 10),)),
    "run_default_40": TeacherSet(RUN_DEFAULTS.teachers, from_run=True, recipe=(("epochs", 40),)),
    # The default teacher with device impulse-response augmentation (p 0.6), as its students
    # get it: the long-trained sets memorised the split with it, this one stops at 20 epochs.
    # What ``asc-search run`` fits by default since stop 28.
    "run_default_dr": TeacherSet(RUN_DEFAULTS.teachers, from_run=True,
                                 recipe=(("device_response_p", 0.6),)),
    # ...and with mixup (α 0.3), the other augmentation the issue names for teachers.
    "run_default_mixup": TeacherSet(RUN_DEFAULTS.teachers, from_run=True,
                                    recipe=(("mixup_alpha", 0.3),)),
    # Three of the default teacher, each with a seed of its own, their logits averaged: an
    # ensemble that knows more than any one member, at three times the fitting time.
    "run_default_x3": TeacherSet(RUN_DEFAULTS.teachers * 3, from_run=True),
    # The default teacher is no better on validation than its students, yet they give it 98 % of
    # the loss: the same logits with the labels weighted as much as the teacher.
    "run_default_w50": TeacherSet(RUN_DEFAULTS.teachers, from_run=True,
                                  distill=(("kd_weight", 0.5),)),
    # The same logits at another KD temperature than the recipe's 2: softer (4) spreads the
    # teacher's doubt over more classes, harder (1) is close to its arg-max.
    "run_default_t1": TeacherSet(RUN_DEFAULTS.teachers, from_run=True,
                                 distill=(("kd_temperature", 1.0),)),
    "run_default_t4": TeacherSet(RUN_DEFAULTS.teachers, from_run=True,
                                 distill=(("kd_temperature", 4.0),)),
    # Two architectures, each stopped at the default's 20 epochs: the ensemble of different
    # models the seed used, without the 150 epochs that made the calibration pair memorise.
    "run_default_mix": TeacherSet((*RUN_DEFAULTS.teachers, "patchout_transformer"),
                                  from_run=True),
}


def fitted_teachers(name: str, *, data: Any, pm: Any, split: int, out: Path,
                    done_sets: set[tuple[str, int]], corpus: str, precision: Any) -> Any:
    """The set's ensemble logits (None for ``none``), recording its fit once per split."""
    chosen = TEACHER_SETS[name]
    if chosen is None:
        return None
    if chosen.from_run:  # exactly what the product fits: the same recipe, so the same cache
        overrides = dict(chosen.recipe)
        # Epochs as ``--teacher-epochs`` sets them, so warm-up stays 10 % of the steps.
        run = replace(RUN_DEFAULTS, teacher_epochs=overrides.pop("epochs",
                                                                 RUN_DEFAULTS.teacher_epochs))
        recipe = run.teacher_recipe(len(data.train)).with_(**overrides)
    else:
        batch = auto_batch_size(len(data.train)) if chosen.product_batch else 256
        recipe = recipe_for(split, len(data.train), 0, batch).with_(**dict(chosen.recipe))
    started = time.process_time()
    scored = fit_scored_ensemble(data, teacher_names=list(chosen.teachers), pm=pm,
                                 cache_dir=cache_dir(), recipe=recipe, precision=precision,
                                 progress=False, folds=chosen.folds)
    ensemble, together = scored.ensemble, scored.qualities[-1]
    if (name, split) not in done_sets:
        # Only a fit made now has its models (the cache keeps the training logits alone).
        validation = (evaluation_attrs(together.validation) if together.validation is not None
                      else None)
        append_result(out, {"revision": REVISION, "kind": "teachers", "teacher_set": name,
                            "data": corpus,
                            "split": split, "teachers": list(ensemble.per_teacher),
                            "folds": chosen.folds, "epochs": recipe.epochs,
                            "recipe": dict(chosen.recipe), "batch_size": recipe.batch_size,
                            "cache_hit": ensemble.cache_hit,
                            "cpu_seconds": round(time.process_time() - started, 1),
                            "train_agreement": round(together.train_agreement, 4),
                            "validation": validation})
        done_sets.add((name, split))
    return ensemble.logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--students", nargs="*", default=list(STUDENTS), choices=STUDENTS)
    parser.add_argument("--teacher-sets", nargs="*", default=["none", "calibration"],
                        choices=list(TEACHER_SETS))
    parser.add_argument("--student-augments", nargs="*", default=["none"],
                        choices=list(STUDENT_AUGMENTS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="student and teacher epochs [default: the calibration's per split]")
    parser.add_argument("--against", default="none", choices=list(TEACHER_SETS),
                        help="with --report: the teacher set every gain is paired against "
                        "(run_default: does a lever beat the default teacher?)")
    add_result_options(parser, Path(__file__).with_name("kd_gain.jsonl"))
    args = parser.parse_args()
    if args.report:
        print(report(args.out, against=args.against))
        if args.plot:
            # One machine and corpus per figure (the newest row's): others do not compare.
            rows = [e for e in read_results(args.out)
                    if e.get("revision") == REVISION and e["kind"] == "student"]
            where = where_ran(rows[-1]) if rows else ""
            groups: dict[str, list[dict[str, Any]]] = {}
            for e in rows:
                if where_ran(e) == where:
                    lever = e.get("student_augment", "none")
                    name = f"{e['split']} %: {e['student']}, {e['teacher_set']}" + (
                        f", {lever}" if lever != "none" else "")
                    groups.setdefault(name, []).append(e)
            print(plot_accuracies(dict(sorted(groups.items())), args.plot,
                                  title=f"knowledge distillation and student levers ({where})"))
        return
    torch.set_num_threads(args.threads)
    if args.epochs:
        EPOCHS[args.split] = args.epochs  # a shorter check of the whole path (not a result)
    epochs = EPOCHS[args.split]
    pm = build_plugin_manager()
    data = load_split_data(args.data, args.split, pm=pm, cache_dir=cache_dir(), progress=False)
    corpus = data.root.name
    entries = [e for e in read_results(args.out) if e.get("revision") == REVISION]
    # Rows of another machine or corpus folder do not count as done here (``where_ran``), and the
    # report never pairs them.
    here = where_ran({"machine": machine(), "data": corpus})
    done = {(e["teacher_set"], e["student"], e["seed"], e["split"], e["epochs"],
             e.get("student_augment", "none")) for e in entries
            if e["kind"] == "student" and where_ran(e) == here}
    done_sets = {(e["teacher_set"], e["split"]) for e in entries
                 if e["kind"] == "teachers" and where_ran(e) == here}
    settings, plans = candidates(pm)
    base_settings = settings
    precision = precision_for("cpu")
    parents = cache_dir() / "kd_gain" / f"split{args.split}"
    for name in args.teacher_sets:
        logits = None
        for seed, augment, student in product(args.seeds, args.student_augments, args.students):
            if (name, student, seed, args.split, epochs, augment) in done:
                continue
            # Students at the product's batch for the split, with the lever's overrides.
            chosen = TEACHER_SETS[name]
            settings = replace(base_settings, recipe=dict(STUDENT_AUGMENTS[augment])
                               | dict(chosen.distill if chosen else ()))
            if logits is None and chosen is not None:
                logits = fitted_teachers(name, data=data, pm=pm, split=args.split,
                                         out=args.out, done_sets=done_sets, corpus=corpus,
                                         precision=precision)
            started = time.process_time()
            outcome = train_candidate(plans[student], settings=settings, pm=pm,
                                      train=data.train, validation=data.validation,
                                      teacher_logits=logits, precision=precision,
                                      epochs=epochs, seed=seed, parents=parents,
                                      parent_seed=seed)
            test = evaluate(predict(outcome.model, data.test.features, precision=precision),
                            data.test.labels, data.test.devices, files=data.test.files)
            append_result(args.out, {
                "revision": REVISION, "kind": "student", "teacher_set": name, "data": corpus,
                "student": student, "seed": seed, "split": args.split, "epochs": epochs,
                "student_augment": augment,
                "threads": torch.get_num_threads(), "date": date.today().isoformat(),
                "macs": outcome.macs, "param_bytes": outcome.param_bytes,
                "cpu_seconds": round(time.process_time() - started
                                     + outcome.restored_cpu_seconds, 1),
                "validation": evaluation_attrs(outcome.validation),
                "test": evaluation_attrs(test)})


def report(path: Path, *, against: str = "none") -> str:
    """Per machine and corpus, split, student, teacher set and student lever: test (all,
    unseen) mean ± sd over seeds; the gain over the ``against`` teacher set (no teachers by
    default) and over no lever, each paired by seed on the same machine and corpus; and the
    teacher sets' fitting cost, training agreement and (when recorded) validation accuracy."""
    entries = [e for e in read_results(path) if e.get("revision") == REVISION]
    runs = {(where_ran(e), e["split"], e["student"], e["teacher_set"],
             e.get("student_augment", "none"), e["seed"]): e
            for e in entries if e["kind"] == "student"}

    def summary(values: list[float]) -> str:
        g = mean_sd_interval(values)
        spread = (f" ± {100 * g['sd']:.1f} ({100 * g['low']:.1f} to {100 * g['high']:.1f})"
                  if g["n"] > 1 else "")
        return f"{100 * g['mean']:.1f}{spread}"

    def gain(key: tuple[Any, ...], reference: tuple[Any, ...], seeds: list[int]) -> str:
        paired = [s for s in seeds if (*reference, s) in runs]
        if key == reference or not paired:
            return " | "
        return " | ".join(summary([runs[(*key, s)]["test"][field]
                                   - runs[(*reference, s)]["test"][field] for s in paired])
                          for field in ("macro", "unseen"))

    lines = ["| machine, corpus | split | student | teachers | student lever | seeds | test % | "
             f"test unseen % | − {against}, paired (points) | unseen − {against} | "
             "− no lever, paired | unseen − no lever | CPU-min per run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted({k[:5] for k in runs}):
        where, split, student, name, augment = key
        seeds = sorted(k[5] for k in runs if k[:5] == key)
        mine = [runs[(*key, s)] for s in seeds]
        cells = [summary([e["test"]["macro"] for e in mine]),
                 summary([e["test"]["unseen"] for e in mine]),
                 gain(key, (where, split, student, against, augment), seeds),
                 gain(key, (where, split, student, name, "none"), seeds)]
        cpu = sum(e["cpu_seconds"] for e in mine) / len(mine) / 60
        lines.append(f"| {where} | {split} % | {student} | {name} | {augment} | {len(seeds)} | "
                     f"{' | '.join(cells)} | {cpu:.1f} |")
    fits = [e for e in entries if e["kind"] == "teachers"]
    if fits:
        lines += ["", "| machine, corpus | split | teachers | members | folds | epochs | fit CPU-min | "
                  "ensemble agreement on training clips % | ensemble validation % (95 % CI) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for e in fits:
            cost = "cached" if e["cache_hit"] else f"{e['cpu_seconds'] / 60:.1f}"
            valid = e.get("validation")
            known = (f"{100 * valid['macro']:.1f} ({100 * valid['macro_interval'][0]:.1f}–"
                     f"{100 * valid['macro_interval'][1]:.1f})" if valid else "not recorded")
            lines.append(f"| {where_ran(e)} | {e['split']} % | {e['teacher_set']} | "
                         f"{', '.join(e['teachers'])} "
                         f"| {e['folds']} | {e['epochs']} | {cost} | "
                         f"{100 * e['train_agreement']:.1f} | {known} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
