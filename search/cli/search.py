"""``asc-search run`` and everything that reads a study afterwards.

``run`` is the product: ``asc-search run --budget-macs 30M --split 5`` creates (or resumes) a study,
queues the seed and baseline trials, searches, promotes the best feasible trials to full-length
distillation and writes the report. ``worker`` joins a study from another process or machine;
``distill``, ``report``, ``export``, ``dashboard`` and ``studies`` work on a finished one.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from asc_search.cli.shared import (
    Context,
    data_options,
    pass_context,
    say_note,
    stdout_console,
    teacher_device_response_option,
)
from asc_search.teachers import DEFAULT_TEACHER_EPOCHS, DEFAULT_TEACHERS

DEFAULT_STUDY = "asc-search"


def _say(line: str) -> None:
    stdout_console().print(line, highlight=False, markup=False)


def _say_validation(validation: Any) -> None:
    """What every score of the run is read on: the validation list's size, and the simulated
    unseen devices it holds (``--simulated-devices``), which no other output names."""
    from asc_search.data.dataset import SIMULATED_DEVICE_PREFIX

    simulated = [d for d in validation.devices if d.startswith(SIMULATED_DEVICE_PREFIX)]
    listed = len(validation) - len(simulated)
    line = f"validation: {listed:,} clips"
    if simulated:
        names = sorted(set(simulated), key=lambda d: int(d.removeprefix(SIMULATED_DEVICE_PREFIX)))
        line += (f", and {len(simulated):,} copies of its device-a clips on {len(names)} "
                 f"simulated unseen device{'s' if len(names) > 1 else ''} "
                 f"({names[0]}{'–' + names[-1] if len(names) > 1 else ''})")
    _say(line)


def _say_teacher_agreement(resources: Any) -> None:
    """How much of the training labels the study's teachers agree with, and a note where they
    have memorised them (``asc_search.teachers.quality``): before minutes go into students."""
    if resources.teacher_logits is None:
        return
    from asc_search.teachers.quality import label_agreement, memorised_note

    settings = resources.settings
    agreement = label_agreement(resources.train, resources.teacher_logits)
    _say(f"teachers ({', '.join(settings.teachers)}) agree with {100 * agreement:.1f} % of the "
         "training labels" + (" (out of fold)" if settings.teacher_folds > 1 else ""))
    say_note(memorised_note(agreement, folds=settings.teacher_folds))


def _say_busy_machine(n_jobs: int, device: str) -> None:
    """A note before any training on the CPU where other processes keep the cores the run's
    threads need (``asc_search.parallel.busy_machine_note``): it costs half a second of
    watching."""
    if not device.startswith("cpu"):
        return
    import torch

    from asc_search.parallel import busy_machine_note, cores_busy_elsewhere, usable_cores
    from asc_search.study.lifecycle import split_threads

    threads = n_jobs * split_threads(n_jobs) if n_jobs > 1 else torch.get_num_threads()
    say_note(busy_machine_note(threads=threads, usable=usable_cores(),
                               elsewhere=cores_busy_elsewhere()))


def _storage_options(command: Any) -> Any:
    command = click.option("--storage", default=None, metavar="URL",
                           help="Optuna storage URL [default: $ASC_SEARCH_STORAGE, else "
                                "sqlite under the studies folder].")(command)
    command = click.option("--studies", type=click.Path(path_type=Path), default=None,
                           help="Studies folder [default: $ASC_SEARCH_STUDIES or ./studies].")(
        command)
    return command


def _quiet_optuna() -> None:
    import optuna

    # Failed trials are summarised in one progress line; their tracebacks are kept in the study.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _open(name: str, storage: str | None, studies: Path | None) -> Any:
    from asc_search.paths import studies_dir
    from asc_search.study.storage import load_study, resolve_storage

    _quiet_optuna()
    return load_study(name, resolve_storage(storage, studies=studies_dir(studies)))


@click.command("run")
@data_options
@click.option("--space", default="sscp_joint", show_default=True,
              help="Shipped space name or a TOML/YAML file (sscp_joint: budget-filling plans "
                   "from shared parents and their training recipe; sscp_fill: the plans "
                   "alone; sscp_mobile: uniform plans, for --objective pareto).")
@click.option("--budget-macs", default="30M", show_default=True)
@click.option("--budget-bytes", default="128kB", show_default=True)
@click.option("--dtype", "storage_dtype", default="float16", show_default=True,
              type=click.Choice(["float32", "float16", "bfloat16", "int8"]),
              help="Parameter storage type the byte budget counts (int8: every candidate "
                   "ends quantisation-aware and is converted to a real int8 program; a space's "
                   "storage dimension chooses per candidate).")
@click.option("--trials", "n_trials", type=int, default=12, show_default=True,
              help="Trials in the study, seed trials included (a rerun tops it up); a "
                   "sampled copy of a network trained already takes no slot.")
@click.option("--timeout", type=float, default=300, show_default=True,
              help="Stop starting trials after this many seconds of search (0: no limit), "
                   "once --min-sampled sampled networks are trained.")
@click.option("--min-sampled", type=click.IntRange(min=0), default=6, show_default=True,
              help="Sampled networks the search trains before --timeout may end it: on a slow "
                   "machine the seed trials alone can take the whole timeout.")
@click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True)
@_storage_options
@click.option("--sampler", type=click.Choice(["tpe", "nsga2", "random"]), default="tpe",
              show_default=True)
@click.option("--objective", type=click.Choice(["pareto", "accuracy"]), default="accuracy",
              show_default=True,
              help="pareto: accuracy and MACs; accuracy: accuracy under the budgets, with early "
                   "stopping.")
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="none",
              show_default=True,
              help="Early stopping of poor trials (--objective accuracy; seed trials are never "
                   "stopped). Off by default: the proxy's order does not repeat between two "
                   "trainings (test-retest τ 0.00–0.28), and a pruned plan reports just after "
                   "its pruning step, so the median rule ended every sampled plan of a "
                   "default run.")
@click.option("--n-jobs", type=int, default=1, show_default=True,
              help="Worker processes on this machine, sharing the storage and the cores.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampler and of every training in the run (trials, their "
                   "parents, the finalists' rungs), so another seed repeats the whole search; "
                   "the teachers keep theirs (cached per split). A study keeps its seed. A run "
                   "repeats for its seed on the same machine; elsewhere pass --timeout 0 (how "
                   "many trials the timeout leaves depends on the machine's speed), and expect "
                   "the numbers to differ where the CPU's kernels do (AMX against AVX-512 bf16, "
                   "bf16 against fp32).")
@click.option("--seed-trials/--no-seed-trials", default=True, show_default=True,
              help="Queue the DCASE baseline and the seed's S1–S3 plans as the first trials.")
@click.option("--reference", "references", multiple=True, metavar="FILE|STUDY:TRIAL",
              help="A hand-made network of your own, queued beside the seed trials and trained "
                   "as it is (repeatable): a spec JSON file (as count --spec reads, or "
                   "{\"label\", \"spec\", \"training\"}), or a trial of another study in the "
                   "same storage. The best reference on validation is what the search must beat.")
@click.option("--proxy-epochs", type=int, default=8, show_default=True,
              help="Training budget of every trial, in epochs with KD; a pruning plan divides "
                   "it (wide network, fine-tunes between steps, final fine-tune).")
@click.option("--batch-size", type=int, default=None,
              help="Clips per step for trials, teachers and finalists [default: split size / 25, "
                   "between 16 and 256].")
@click.option("--promote", "top", type=int, default=1, show_default=True,
              help="Best searched trials to distil at full length, beside the best seed trial "
                   "(0: none).")
@click.option("--promote-epochs", type=int, default=32, show_default=True,
              help="Training budget of every finalist, in epochs with KD.")
@click.option("--promote-by", type=click.Choice(["continue", "retrain"]), default="continue",
              show_default=True,
              help="continue: the best trials go on from their own checkpoints through rungs of "
                   "doubling fine-tunes (successive halving); retrain: each finalist is trained "
                   "again from scratch on the whole budget.")
@click.option("--teacher", "teacher_names", multiple=True,
              help="Teacher NAME or NAME=OPTION (repeatable) "
                   f"[default: {', '.join(DEFAULT_TEACHERS)}]; "
                   "'none': no distillation, students learn from the labels alone.")
@click.option("--teacher-epochs", type=int, default=DEFAULT_TEACHER_EPOCHS, show_default=True)
@click.option("--teacher-folds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Out-of-fold teacher logits from K fits (1: logits on clips the teachers saw).")
@click.option("--heartbeat", type=click.IntRange(min=1), default=None,
              help="Seconds between a running trial's heartbeats, kept in the study for every "
                   "worker; a trial silent for three is taken as lost with its worker and "
                   "queued again [default: the study's, else 60].")
@click.option("--device-specific/--general-only", default=False, show_default=True,
              help="DCASE 2025 mode: the best searched finalist also gets one model per "
                   "training device (fine-tuned from it with KD on that device's clips); "
                   "unknown devices use the general model.")
@click.option("--device-trials", type=click.IntRange(min=1), default=6, show_default=True,
              help="Device fine-tune settings (epochs, learning rate, layers) tried on "
                   "validation in the device-specific mode.")
@click.option("--device-response-p", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Device impulse-response augmentation for parents, trials and finalists "
                   "(and teachers, where --teacher-device-response-p is 0): the probability "
                   "that a device-a clip gets another device's colouring (0 = off; a space may "
                   "search it instead).")
@click.option("--device-responses", "device_responses", default="", metavar="DIR",
              help="Folder of device impulse-response WAVs (MicIRP, say) [default: a built-in "
                   "bank of synthetic device responses].")
@click.option("--simulated-devices", type=click.IntRange(min=0), default=0, show_default=True,
              help="Unseen devices simulated on the validation list: its device-a clips "
                   "coloured by N device responses no training draws from, so the search, "
                   "promotion and recommendation also score what the test's unseen devices "
                   "(s4–s6) score (0 = off; DCASE's test has 3).")
@teacher_device_response_option
@pass_context
def run_command(obj: Context, data: str | None, split: str, device: str, space: str,
                budget_macs: str, budget_bytes: str, storage_dtype: str, n_trials: int,
                timeout: float, study_name: str, storage: str | None, studies: Path | None,
                min_sampled: int, sampler: str, objective: str, pruner: str, n_jobs: int,
                seed: int, seed_trials: bool, references: tuple[str, ...], proxy_epochs: int,
                batch_size: int | None, top: int,
                promote_epochs: int, promote_by: str,
                teacher_names: tuple[str, ...], teacher_epochs: int, teacher_folds: int,
                heartbeat: int | None, device_specific: bool, device_trials: int,
                device_response_p: float, device_responses: str, simulated_devices: int,
                teacher_device_response_p: float) -> None:
    """Search the space under the budgets, promote the best trials, and write the report."""
    import optuna

    from asc_search.complexity import parse_budget
    from asc_search.data.source import corpus_classes
    from asc_search.errors import AscSearchError
    from asc_search.paths import studies_dir
    from asc_search.pruning.plans import MIN_WIDTH, smallest_settled
    from asc_search.study.heartbeat import set_heartbeat
    from asc_search.study.lifecycle import (
        WorkerJob,
        check_resumable,
        create_or_resume,
        load_resources,
        run_workers,
        seed_trials_left_out,
        split_threads,
    )
    from asc_search.study.objective import SearchSettings, study_teachers
    from asc_search.study.references import read_reference
    from asc_search.study.run_length import PromotionPlan
    from asc_search.study.space import read_space, smallest_candidate, space_from_dict
    from asc_search.study.storage import mask_url, resolve_storage

    _quiet_optuna()
    if (n_jobs < 1 or n_trials < 1 or proxy_epochs < 1 or promote_epochs < 1 or top < 0
            or (batch_size or 1) < 1):
        raise AscSearchError("--n-jobs, --trials, --proxy-epochs, --promote-epochs and "
                             "--batch-size must be ≥ 1, "
                             "--promote ≥ 0")
    folder = studies_dir(studies)
    raw, source = read_space(space)
    # The classes come from the data (meta.csv); every network's head follows them, and the
    # space stored with the study says so. The ten DCASE scenes leave the space as it is.
    classes = corpus_classes(data, pm=obj.pm, cache=obj.cache)
    if len(classes) != raw.get("fixed", {}).get("n_classes", 10):
        raw = {**raw, "fixed": {**raw.get("fixed", {}), "n_classes": len(classes)}}
        _say(f"classes from the data: {', '.join(classes)} ({len(classes)})")
    parsed = space_from_dict(raw, source=source, pm=obj.pm)
    settings = SearchSettings(
        space=raw, space_source=source, data=data, split=int(split),
        max_macs=parse_budget(budget_macs, what="--budget-macs"),
        max_param_bytes=parse_budget(budget_bytes, what="--budget-bytes"),
        storage_dtype=storage_dtype, objective=objective, proxy_epochs=proxy_epochs,
        promote_epochs=promote_epochs,
        teachers=study_teachers(teacher_names), teacher_epochs=teacher_epochs,
        teacher_folds=teacher_folds, device_specific=device_specific, device_trials=device_trials,
        teacher_device_response_p=teacher_device_response_p, training_seed=seed,
        simulated_devices=simulated_devices,
        recipe={**({} if batch_size is None else {"batch_size": batch_size}),
                **({"device_response_p": device_response_p} if device_response_p > 0 else {}),
                **({"device_responses": device_responses} if device_responses else {})},
    )
    parsed = parsed.under_budgets(pm=obj.pm, max_macs=settings.max_macs,
                                  max_param_bytes=settings.max_param_bytes,
                                  storage_dtype=storage_dtype)
    if seed_trials:
        for label, why in seed_trials_left_out(parsed).items():
            _say(f"note: the hand-made reference {label} is not in space {parsed.name!r} "
                 f"({why}): it is not queued, and cannot be the reference")
    searched_recipe = {d.name for d in parsed.dimensions
                       if parsed.infos[d.name].target == "training"}
    if device_response_p > 0 and "device_response_p" in searched_recipe:
        raise AscSearchError(
            f"--device-response-p {device_response_p:g}: space {parsed.name!r} searches "
            "device_response_p per candidate, so the option would reach only the parents; "
            "leave it out, or give a space that does not search it (--space sscp_fill)")
    if (device_response_p > 0 or (settings.teachers and teacher_device_response_p > 0)
            or (device_responses and "device_response_p" in searched_recipe)):
        # a missing folder or a broken file fails here, in one line
        from asc_search.training.device_responses import check_responses

        settings.base_recipe(1)
        check_responses(device_responses)
    names = {d.name for d in parsed.dimensions}
    storages = {storage_dtype, str(parsed.fixed.get("storage", storage_dtype)),
                *(c for d in parsed.dimensions if d.name == "storage" for c in d.choices)}
    if device_specific and "int8" in storages:
        raise AscSearchError("--device-specific with int8 storage: device models are "
                             "fine-tuned and shipped as float networks; search float16 storage "
                             "for the 2025 mode, or run without --device-specific")
    if objective == "pareto" and "parent" in names and "macs_fraction" not in names:
        _say(f"note: space {parsed.name!r} fills the MACs budget with every candidate; for a "
             "Pareto front of accuracy against MACs search macs_fraction too, or use sscp_mobile")
    smallest, card = (smallest_settled(parsed, pm=obj.pm, storage_dtype=storage_dtype)
                      or smallest_candidate(parsed, pm=obj.pm, storage_dtype=storage_dtype))
    if not card.fits(max_macs=settings.max_macs, max_param_bytes=settings.max_param_bytes):
        what = (f"{smallest.plan['parent']} at {MIN_WIDTH} channels per layer"
                if "parent" in smallest.plan else f"base_channels {smallest.spec.base_channels}")
        raise AscSearchError(
            f"no network in space {parsed.name!r} fits {settings.max_macs:,} MACs and "
            f"{settings.max_param_bytes:,} bytes ({storage_dtype}): its smallest counts "
            f"{card.macs:,} MACs and {card.param_bytes:,} bytes ({what}); raise the budget or "
            "widen the space")
    url = resolve_storage(storage, studies=folder)
    if references:  # each read and counted now: a bad one is refused before any training
        settings = replace(settings, references=tuple(
            read_reference(given, pm=obj.pm, storage_url=url, max_macs=settings.max_macs,
                           max_param_bytes=settings.max_param_bytes, storage_dtype=storage_dtype,
                           fixed=raw.get("fixed", {}) | {"n_classes": len(classes)})
            for given in references))
    # Refusals first, then the data: a bad --data or teacher leaves no study behind.
    check_resumable(name=study_name, storage_url=url, settings=settings)
    _say_busy_machine(n_jobs, device)
    started = time.perf_counter()
    # Data, features and teachers once, here, so parallel workers all find them cached.
    resources = load_resources(settings, pm=obj.pm, cache=obj.cache, studies=folder,
                               device=device, progress=not obj.quiet)
    _say_validation(resources.validation)
    _say_teacher_agreement(resources)
    study = create_or_resume(name=study_name, storage_url=url, settings=settings,
                             sampler=sampler, seed=seed, seed_trials=seed_trials, space=parsed)
    if heartbeat is not None:  # workers joining later beat at the same pace
        set_heartbeat(study, heartbeat)
    waiting = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    _say(f"study {study_name} in {mask_url(url)}: {len(study.trials) - waiting} trials so far, "
         f"{waiting} queued; data and teachers ready ({time.perf_counter() - started:.0f} s)")
    jobs = [WorkerJob(study=study_name, storage_url=url, sampler=sampler,
                      seed=None if seed is None else seed + index, n_trials=n_trials,
                      timeout=timeout or None, pruner=pruner, min_sampled=min_sampled,
                      threads=split_threads(n_jobs) if n_jobs > 1 else None,
                      plugins=tuple(obj.pm_modules), cache=str(obj.cache), studies=str(folder),
                      device=device, progress=not obj.quiet and n_jobs == 1,
                      workers=n_jobs, promotion=PromotionPlan(
                          top=top, promote_by=promote_by, proxy_epochs=settings.proxy_epochs,
                          promote_epochs=settings.promote_epochs))
            for index in range(n_jobs)]
    run_workers(jobs, announce=_say, pm=obj.pm, resources=resources)
    _after_search(obj, study_name, url, folder, top, device, promote_by)
    _say(f"done in {(time.perf_counter() - started) / 60:.1f} min")


def _after_search(obj: Context, name: str, url: str, folder: Path, top: int,
                  device: str, promote_by: str) -> None:
    from asc_search.report.page import write_report
    from asc_search.study.lifecycle import best_feasible, ranked_trials
    from asc_search.study.promote import distill
    from asc_search.study.storage import load_study

    study = load_study(name, url)
    if top > 0 and not ranked_trials(study, searched_only=True):
        _say(f"no sampled trial finished training ({_sampled_outcomes(study)}): the finalists "
             "are the seed plans alone; raise --trials, --min-sampled or --timeout to compare a "
             "searched model with them")
    if top > 0 and best_feasible(study) is not None:
        distill(study, top=top, pm=obj.pm, cache=obj.cache, studies=folder, device=device,
                progress=not obj.quiet, promote_by=promote_by, announce=_say)
    elif top > 0:
        _say("no feasible trained trial to promote; the report shows what was tried")
    page = write_report(load_study(name, url), folder=folder / "reports" / name)
    _say(f"report: {page}")


def _sampled_outcomes(study: Any) -> str:
    """How the study's sampled trials ended, in words: what stood between it and a search."""
    from collections import Counter

    ended = Counter(t.user_attrs.get("status", t.state.name.lower()) for t in study.trials
                    if "seed_trial" not in t.user_attrs and t.state.name != "WAITING")
    words = {"pruned": "stopped early", "duplicate": "copies of a trained network",
             "infeasible": "over budget", "fail": "failed", "running": "still running"}
    return ", ".join(f"{n} {words.get(k, k)}" for k, n in sorted(ended.items())) or \
        "none was started before the search stopped"


@click.command("worker")
@click.option("--study", "study_name", required=True)
@_storage_options
@click.option("--sampler", type=click.Choice(["tpe", "nsga2", "random"]), default="tpe",
              show_default=True)
@click.option("--pruner", type=click.Choice(["median", "hyperband", "none"]), default="none",
              show_default=True)
@click.option("--trials", "n_trials", type=int, default=None,
              help="Stop when the study holds this many trials [default: no limit].")
@click.option("--timeout", type=float, default=None, help="Seconds [default: no limit].")
@click.option("--seed", type=int, default=None, help="Sampler seed [default: random].")
@click.option("--device", default="cpu", show_default=True)
@pass_context
def worker_command(obj: Context, study_name: str, storage: str | None, studies: Path | None,
                   sampler: str, pruner: str, n_trials: int | None, timeout: float | None,
                   seed: int | None, device: str) -> None:
    """Join an existing study (same settings, read from the study) and run trials on it."""
    from asc_search.paths import studies_dir
    from asc_search.study.lifecycle import WorkerJob, run_worker
    from asc_search.study.storage import mask_url, resolve_storage

    _quiet_optuna()
    folder = studies_dir(studies)
    url = resolve_storage(storage, studies=folder)
    _open(study_name, url, folder)  # one clear line if the study is not there
    _say(f"worker on study {study_name} in {mask_url(url)}")
    done = run_worker(WorkerJob(study=study_name, storage_url=url, sampler=sampler, seed=seed,
                                n_trials=n_trials, timeout=timeout, pruner=pruner,
                                studies=str(folder), cache=str(obj.cache), device=device,
                                progress=not obj.quiet),
                      pm=obj.pm, announce=_say)
    _say(f"worker finished {done} trials")


@click.command("distill")
@click.argument("study_name", metavar="STUDY")
@click.option("--top", type=int, default=1, show_default=True)
@click.option("--seed-plan/--no-seed-plan", default=True, show_default=True,
              help="Also promote the best seed trial (DCASE baseline or S1–S3, by validation), "
                   "the hand-made reference every finalist is compared with.")
@click.option("--promote-by", type=click.Choice(["continue", "retrain"]), default="continue",
              show_default=True,
              help="continue: successive halving from the trials' own checkpoints; retrain: "
                   "each finalist trained again from scratch.")
@_storage_options
@click.option("--device", default="cpu", show_default=True)
@pass_context
def distill_command(obj: Context, study_name: str, top: int, seed_plan: bool, promote_by: str,
                    storage: str | None, studies: Path | None, device: str) -> None:
    """Distil the top trials at full length; evaluate them on validation and test."""
    from asc_search.paths import studies_dir
    from asc_search.study.promote import distill

    study = _open(study_name, storage, studies)
    distill(study, top=top, pm=obj.pm, cache=obj.cache, studies=studies_dir(studies),
            device=device, progress=not obj.quiet, with_seed_plan=seed_plan,
            promote_by=promote_by, announce=_say)


@click.command("report")
@click.argument("study_name", metavar="STUDY")
@_storage_options
@pass_context
def report_command(obj: Context, study_name: str, storage: str | None,
                   studies: Path | None) -> None:
    """Write the study's HTML report (Pareto front, history, importances, finalists)."""
    from asc_search.paths import studies_dir
    from asc_search.report.page import write_report

    del obj
    study = _open(study_name, storage, studies)
    page = write_report(study, folder=studies_dir(studies) / "reports" / study_name)
    _say(f"report: {page}")


@click.command("export")
@click.argument("study_name", metavar="STUDY")
@click.option("--trial", "number", type=int, default=None,
              help="The trial to export [default: the study's recommended model, chosen on "
                   "validation when the study was promoted].")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--label", default="Asc_Search", show_default=True,
              help="DCASE submission label (Lastname_Institution): names the inference package "
                   "<label>_task1 and its module <label>_task1_1.")
@_storage_options
@pass_context
def export_command(obj: Context, study_name: str, number: int | None, out: Path,
                   storage: str | None, studies: Path | None, label: str) -> None:
    """Write a trial's 16-bit weights, spec, complexity card, DCASE output.csv and the DCASE 2025
    inference package (by default the study's recommended model)."""
    from asc_search.errors import AscSearchError
    from asc_search.paths import studies_dir
    from asc_search.report.export import export_trial
    from asc_search.study.promote import recommendation

    study = _open(study_name, storage, studies)
    if number is None:
        chosen = recommendation(study)
        if chosen is None:
            raise AscSearchError(f"study {study_name!r} has no recommended model yet (its "
                                 "finalists were not promoted): give --trial N, or run "
                                 f"asc-search distill {study_name}")
        number = chosen.trial
        _say(chosen.headline())
    summary = export_trial(study, number=number, out=out, pm=obj.pm, cache=obj.cache,
                           studies=studies_dir(studies), progress=not obj.quiet, label=label)
    _say(f"exported trial {number} ({'finalist' if summary['finalist'] else 'search'} network,"
         f" {summary['macs']:,} MACs, {summary['param_bytes']:,} B) to {out}; inference package "
         f"{summary['package']} in {out / 'inference'} (pip install it; "
         f"{summary['module']}.predict)")


@click.command("dashboard")
@_storage_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
def dashboard_command(storage: str | None, studies: Path | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the studies (needs ``pip install optuna-dashboard``)."""
    from asc_search.errors import AscSearchError
    from asc_search.paths import studies_dir
    from asc_search.study.storage import artifact_store, mask_url, open_storage, resolve_storage

    try:
        import optuna_dashboard
    except ImportError:
        raise AscSearchError("optuna-dashboard is not installed: pip install optuna-dashboard "
                             "(or asc-search[dashboard])") from None
    folder = studies_dir(studies)
    url = resolve_storage(storage, studies=folder)
    _say(f"dashboard for {mask_url(url)} on http://{host}:{port}")
    optuna_dashboard.run_server(open_storage(url), host=host, port=port,
                                artifact_store=artifact_store(folder))


@click.group("studies")
def studies_group() -> None:
    """List and inspect studies (plain Optuna storages)."""


@studies_group.command("list")
@_storage_options
def studies_list(storage: str | None, studies: Path | None) -> None:
    """Every study in the storage: trials, feasible trials, best validation accuracy."""
    import optuna

    from asc_search.paths import studies_dir
    from asc_search.study.storage import mask_url, open_storage, resolve_storage

    _quiet_optuna()
    url = resolve_storage(storage, studies=studies_dir(studies))
    summaries = optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)
    table = Table("study", "trials", "objectives", "created", title=f"studies in {mask_url(url)}")
    for summary in summaries:
        table.add_row(summary.study_name, str(summary.n_trials),
                      ", ".join(d.name.lower() for d in summary.directions),
                      f"{summary.datetime_start:%Y-%m-%d %H:%M}" if summary.datetime_start else "")
    stdout_console().print(table)


@studies_group.command("show")
@click.argument("study_name", metavar="STUDY")
@click.option("--failed", is_flag=True, help="Print the stored traceback of every failed trial.")
@_storage_options
def studies_show(study_name: str, failed: bool, storage: str | None,
                 studies: Path | None) -> None:
    """One row per trial: spec summary, plan, MACs, bytes, validation accuracy, state, duration."""
    study = _open(study_name, storage, studies)
    trials = study.get_trials(deepcopy=False)
    stdout_console().print(_trial_table(study, trials, title=f"study {study_name}"))
    _print_finalists(study)
    if failed:
        from asc_search.study.heartbeat import lost_trials, retried_as

        lost, retries = lost_trials(study), retried_as(trials)
        for trial in trials:
            if trial.state.name != "FAIL":
                continue
            if trial.number in lost:
                again = (f"queued again as trial {retries[trial.number]}"
                         if trial.number in retries else "not queued again")
                record = lost[trial.number]
                _say(f"--- trial {trial.number} was lost: its worker ({record['worker']}) "
                     f"{record['why']}; {again}")
            else:
                _say(f"--- trial {trial.number} failed:")
                _say(trial.user_attrs.get("traceback", "(no traceback stored)").rstrip())


@studies_group.command("pareto")
@click.argument("study_name", metavar="STUDY")
@_storage_options
def studies_pareto(study_name: str, storage: str | None, studies: Path | None) -> None:
    """The feasible Pareto-optimal trials (validation accuracy vs MACs), best first."""
    from asc_search.study.lifecycle import pareto_trials

    study = _open(study_name, storage, studies)
    stdout_console().print(_trial_table(study, pareto_trials(study),
                                        title=f"Pareto front of {study_name} (feasible trials)"))


def _trial_table(study: Any, trials: list[Any], *, title: str) -> Table:
    from asc_search.study.heartbeat import lost_trials

    lost = lost_trials(study)
    table = Table("trial", "seed", "spec", "plan", "MACs", "bytes", "val %", "state", "seconds",
                  title=title)
    for trial in trials:
        attrs = trial.user_attrs
        spec = attrs.get("spec", {})
        plan = attrs.get("plan", {})
        spec_text = (f"{spec.get('arch', '?')} w{spec.get('base_channels', '?')} "
                     f"×{spec.get('channels_multiplier', 0):.2f} e{spec.get('expansion_rate', 0):.2f}"
                     f" {spec.get('n_blocks', '')} {'/'.join(f[:3] for f in spec.get('factorization', []))}"
                     if spec else "")
        if spec.get("channel_overrides"):  # a pruned network: its base is stage 1's width
            spec_text = spec_text.replace(f"w{spec['base_channels']}",
                                          f"w{spec['channel_overrides'].get('s1', '?')}*", 1)
        ratio = float(plan.get("prune_width_ratio", 1.0))
        how = (f"{plan.get('importance', '')} {plan.get('schedule', '')} "
               f"{plan.get('prune_steps', '')}×{plan.get('prune_stages', 1)}")
        if attrs.get("status") == "duplicate":
            plan_text = f"{plan.get('parent', '')} as is: trial {attrs['duplicate_of']}"
        elif "parent" in plan and not attrs.get("budget", {}).get("pruning_steps", 1):
            plan_text = f"{plan['parent']} as is, no pruning"
        elif "parent" in plan:
            scale = plan.get("fill_scale")
            plan_text = f"{plan['parent']} " + (f"fill ×{scale:.2f} " if scale else "") + how
        else:
            plan_text = (f"×{ratio:g} {how}" if ratio > 1 else "no pruning") \
                if plan or spec else ""
        state = attrs.get("status", trial.state.name.lower())
        if trial.state.name != "COMPLETE":
            state = "lost" if trial.number in lost else trial.state.name.lower()
        value = f"{100 * trial.values[0]:.1f}" if trial.values and state == "trained" else ""
        seconds = (f"{(trial.datetime_complete - trial.datetime_start).total_seconds():.0f}"
                   if trial.datetime_complete and trial.datetime_start else "")
        table.add_row(str(trial.number), attrs.get("seed_trial", ""), spec_text, plan_text,
                      f"{attrs['macs']:,}" if "macs" in attrs else "",
                      f"{attrs['param_bytes']:,}" if "param_bytes" in attrs else "", value,
                      state, seconds)
    return table


def _print_finalists(study: Any) -> None:
    from asc_search.study.promote import finalists, recommendation

    promoted = finalists(study)
    if not promoted:
        return
    chosen = recommendation(study)
    if chosen is not None:
        _say(chosen.headline())
    table = Table("trial", "kind", "MACs", "bytes", "val %", "test %", "test unseen %",
                  title="finalists (full-length distillation)")
    for number, record in sorted(promoted.items()):
        unseen = record["test"]["unseen"]
        table.add_row(str(number), record["label"], f"{record['macs']:,}",
                      f"{record['param_bytes']:,}", f"{100 * record['validation']['macro']:.1f}",
                      f"{100 * record['test']['macro']:.1f}",
                      "" if unseen is None else f"{100 * unseen:.1f}")
    stdout_console().print(table)


@click.group("parents")
def parents_group() -> None:
    """Trained wide networks that pruning plans start from, shared through the cache."""


@parents_group.command("list")
@pass_context
def parents_list(obj: Context) -> None:
    """Every cached parent: its network, training length, seed and cost."""
    from asc_search.parents.store import cached_parents

    found = cached_parents(obj.cache)
    if not found:
        _say(f"no cached parents in {obj.cache}")
        return
    table = Table("key", "network", "base", "steps", "seed", "clips", "train s", "size",
                  "created", box=None)
    for info in found:
        table.add_row(info.key, info.spec.arch, str(info.spec.base_channels), str(info.steps),
                      str(info.seed), str(info.train_clips), f"{info.seconds:.0f}",
                      f"{info.size_bytes / 1e6:.1f} MB", info.created)
    stdout_console().print(table)


@parents_group.command("build")
@click.argument("study_name", metavar="STUDY")
@_storage_options
@click.option("--promotion/--search", default=False, show_default=True,
              help="Build at the study's promotion budget instead of its search budget.")
@click.option("--device", default="cpu", show_default=True)
@pass_context
def parents_build(obj: Context, study_name: str, storage: str | None, studies: Path | None,
                  promotion: bool, device: str) -> None:
    """Train the parents of a study's queued and finished pruning plans that are not cached yet,
    so that workers started after this find them built."""
    import optuna

    from asc_search.parents.store import trained_parent
    from asc_search.paths import studies_dir
    from asc_search.study.lifecycle import load_resources, settings_of
    from asc_search.study.objective import (
        REFERENCE_ATTR,
        candidate_budget,
        parent_recipe,
        trial_candidate,
    )

    study = _open(study_name, storage, studies)
    settings = settings_of(study)
    loaded = load_resources(settings, pm=obj.pm, cache=obj.cache, studies=studies_dir(studies),
                            device=device, progress=not obj.quiet)
    epochs = settings.promote_epochs if promotion else settings.proxy_epochs
    wanted: dict[str, tuple] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING:
            params = trial.system_attrs.get("fixed_params", {})
        elif trial.user_attrs.get("status") == "trained":
            params = trial.params
        else:
            continue
        candidate = trial_candidate(loaded.space, params, settings=settings, pm=obj.pm,
                                    seed_trial="seed_trial" in trial.user_attrs,
                                    reference=trial.user_attrs.get(REFERENCE_ATTR))
        wide, targets, recipe, budget = candidate_budget(
            candidate, settings=settings, n_train=len(loaded.train), epochs=epochs, seed=0,
            pm=obj.pm)
        if targets:
            # A parent is its network, its steps and its recipe (the cache's key): plans of
            # another final_share train the same network for other steps.
            shared = parent_recipe(recipe, candidate, settings=settings,
                                   n_train=len(loaded.train))
            key = (wide.to_json(), budget.wide, json.dumps(shared.to_dict(), sort_keys=True))
            wanted.setdefault(key, (wide, shared, budget.wide, trial.number))
    if not wanted:
        _say(f"study {study_name} has no pruning plan queued or trained: no parents to build")
        return
    for wide, recipe, steps, number in wanted.values():
        started = time.perf_counter()
        _, hit, _ = trained_parent(wide, pm=obj.pm, recipe=recipe, steps=steps, train=loaded.train,
                                teacher_logits=loaded.teacher_logits, precision=loaded.precision,
                                cache=obj.cache, progress=not obj.quiet)
        state = "cached already" if hit else f"trained in {time.perf_counter() - started:.0f} s"
        _say(f"parent of trial {number}: {wide.arch} base {wide.base_channels}, {steps} steps "
             f"({state})")


COMMANDS = (run_command, worker_command, distill_command, report_command, export_command,
            dashboard_command, studies_group, parents_group)
