"""``asc-search train`` and ``asc-search teachers fit``: one model, or one teacher set, without a search.

``train --help`` lists the whole recipe with the DCASE baseline's published settings as defaults.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import numpy as np
from click.core import ParameterSource
from rich.table import Table

from asc_search.cli.main import Context, _stdout, pass_context, spec_from_options, spec_options
from asc_search.errors import AscSearchError
from asc_search.teachers import (
    DEFAULT_TEACHER_DEVICE_RESPONSE_P,
    DEFAULT_TEACHER_EPOCHS,
    DEFAULT_TEACHERS,
)
from asc_search.training.recipe import TrainingRecipe

_HELP = {
    "epochs": "Training epochs.",
    "batch_size": "Clips per step.",
    "learning_rate": "AdamW peak learning rate.",
    "weight_decay": "AdamW weight decay.",
    "warmup_steps": "Linear warm-up steps before the cosine decay.",
    "roll_seconds": "Random time roll of up to ± this many seconds.",
    "mixstyle_p": "Freq-MixStyle probability per batch (0 = off).",
    "mixstyle_alpha": "Freq-MixStyle Beta(α, α).",
    "freq_mask_bins": "Frequency mask width in mel bins (0 = off).",
    "time_mask_frames": "Time mask width in frames (0 = off).",
    "mixup_alpha": "Mixup Beta(α, α) blend of clips and their targets (0 = off).",
    "device_response_p": "Device impulse-response augmentation: probability that a device-a clip "
                         "gets another device's colouring (0 = off).",
    "device_responses": "Folder of device impulse-response WAVs (MicIRP, say) [default: a "
                        "built-in bank of synthetic device responses].",
    "kd_temperature": "Distillation temperature T.",
    "kd_weight": "Weight of the distillation term (the label term gets 1 − w).",
    "seed": "Seed for initialisation, batch order and augmentation.",
}


def recipe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per TrainingRecipe field, defaulting to the published recipe."""
    for recipe_field in reversed(fields(TrainingRecipe)):
        flag = "--" + recipe_field.name.replace("_", "-")
        command = click.option(flag, recipe_field.name, type=type(recipe_field.default),
                               default=recipe_field.default, show_default=True,
                               help=_HELP.get(recipe_field.name, ""))(command)
    return command


def _recipe(values: dict[str, Any]) -> TrainingRecipe:
    recipe = TrainingRecipe(**{f.name: values.pop(f.name) for f in fields(TrainingRecipe)})
    recipe.validate()
    return recipe


def _data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--data", default=None,
                           help="Data folder or source name [default: embedded].")(command)
    command = click.option("--split", type=click.Choice(["5", "10", "25", "50", "100"]),
                           default="5", show_default=True)(command)
    command = click.option("--device", default="cpu", show_default=True,
                           help="cpu or cuda[:N].")(command)
    return command


def _teacher_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--teacher", "teacher_names", multiple=True,
                           help="Teacher NAME or NAME=OPTION (repeatable) "
                                f"[default: {', '.join(DEFAULT_TEACHERS)}].")(command)
    command = click.option("--teacher-epochs", type=int, default=None,
                           help="Teacher epochs at the search's batch for the split "
                                f"[default: {DEFAULT_TEACHER_EPOCHS}, as run].")(command)
    command = click.option("--ensemble", type=click.Choice(["mean_logits", "mean_probs"]),
                           default="mean_logits", show_default=True)(command)
    command = _teacher_device_response_option(command)
    command = click.option("--teacher-folds", type=click.IntRange(min=1), default=1,
                           show_default=True,
                           help="Out-of-fold logits from K fits per teacher (1: logits on the "
                                "clips a teacher trained on).")(command)
    return command


def _teacher_device_response_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--teacher-device-response-p", type=click.FloatRange(0, 1),
        default=DEFAULT_TEACHER_DEVICE_RESPONSE_P, show_default=True,
        help="Device impulse-response augmentation for the teachers (--device-responses gives "
             "the bank); 0: as the students.")(command)


def _given(option: str) -> bool:
    """Whether the running command's ``option`` was given, not left at its default."""
    context = click.get_current_context()
    return option in context.params and context.get_parameter_source(option) not in (
        None, ParameterSource.DEFAULT)


def teacher_recipe_for(n_train: int, *, epochs: int | None,
                       device_response_p: float) -> TrainingRecipe:
    """The teachers' recipe, as ``asc-search run`` fits them: the search's teacher recipe
    (``SearchSettings.teacher_recipe``: batch for the split, ``epochs`` or 20 of them, 10 %
    warm-up, no distillation settings) with the recipe options given on this command line.

    So ``teachers fit`` with no options fills the very cache entry a default ``run`` reads, and a
    student that changes only ``--epochs`` or ``--kd-weight`` reuses the ensemble. Teachers no
    longer train for the student's 150 epochs: so trained, they memorise the split and cost
    students points (``asc_search.teachers``).
    """
    from asc_search.study.objective import SearchSettings

    context = click.get_current_context()
    given = {f.name: context.params[f.name] for f in fields(TrainingRecipe) if _given(f.name)}
    settings = SearchSettings(
        space={}, space_source="", recipe=given, teacher_epochs=epochs or DEFAULT_TEACHER_EPOCHS,
        teacher_device_response_p=device_response_p)
    return settings.teacher_recipe(n_train)


def _ensemble(obj: Context, data: Any, teacher_names: tuple[str, ...],
              teacher_epochs: int | None, ensemble: str, precision: Any, *,
              folds: int, device_response_p: float) -> Any:
    """Fit (or load) the ensemble; return it and one row per teacher and the ensemble: name,
    agreement with the labels on the training clips, validation macro accuracy with its 95 %
    interval (``asc_search.teachers.quality``); and the note for a set that has memorised the
    split (``memorised_note``), or None."""
    from asc_search.teachers.quality import fit_scored_ensemble, memorised_note

    scored = fit_scored_ensemble(data, teacher_names=teacher_names or DEFAULT_TEACHERS,
                                 pm=obj.pm, cache_dir=obj.cache,
                                 recipe=teacher_recipe_for(len(data.train), epochs=teacher_epochs,
                                                           device_response_p=device_response_p),
                                 precision=precision, mode=ensemble, progress=not obj.quiet,
                                 folds=folds)
    rows = []
    for quality in scored.qualities:
        valid = ""
        if quality.validation is not None:
            low, high = quality.validation.macro_interval
            valid = (f"{100 * quality.validation.macro_accuracy:.1f} "
                     f"({100 * low:.1f}–{100 * high:.1f})")
        rows.append((quality.name, f"{100 * quality.train_agreement:.1f}", valid))
    return scored.ensemble, rows, memorised_note(scored.qualities[-1].train_agreement, folds=folds)


def _say_note(note: str | None) -> None:
    if note:
        _stdout().print(note, highlight=False, markup=False)


@click.command("train")
@_data_options
@spec_options
@click.option("--kd", is_flag=True, help="Distil from the teacher ensemble (fitted if not cached).")
@_teacher_options
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Checkpoint path [default: studies/runs/<arch>-split<N>-seed<S>[-kd].pt].")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the step: ~1.2× faster, a minute to compile; for long runs.")
@click.option("--no-test", is_flag=True, help="Evaluate on validation only.")
@recipe_options
@pass_context
def train_command(obj: Context, data: str | None, split: str, device: str, preset: str | None,
                  spec_file: Path | None, kd: bool, teacher_names: tuple[str, ...],
                  teacher_epochs: int | None, ensemble: str, teacher_folds: int,
                  teacher_device_response_p: float, out: Path | None,
                  compile_model: bool, no_test: bool, **values: Any) -> None:
    """Train one network on a split's cached features, optionally with KD, and evaluate it."""
    from asc_search.architecture import build_model
    from asc_search.complexity import count_complexity
    from asc_search.features.experiment import load_split_data
    from asc_search.paths import studies_dir
    from asc_search.training.checkpoint import save_checkpoint
    from asc_search.training.evaluate import evaluate, evaluation_table
    from asc_search.training.train import fit, precision_for, predict

    recipe = _recipe(values)
    spec = spec_from_options(obj, preset, spec_file, values)
    precision = precision_for(device)
    data = load_split_data(data, int(split), pm=obj.pm, cache_dir=obj.cache,
                           progress=not obj.quiet, with_test=not no_test)
    classes = data.train.classes
    if spec.n_classes != len(classes):  # the head follows the data's classes
        spec = spec.with_(n_classes=len(classes))
    model = build_model(spec, pm=obj.pm, seed=recipe.seed)
    card = count_complexity(model)
    out_console = _stdout()
    out_console.print(f"{spec.arch}: {card.macs:,} MACs, {card.params:,} parameters "
                      f"({card.param_bytes:,} bytes at 16-bit); split {split}: "
                      f"{len(data.train):,} train / {len(data.validation):,} validation clips "
                      f"({data.files.validation_source})", highlight=False)
    teacher_logits = None
    if kd:
        result, _, note = _ensemble(obj, data, teacher_names, teacher_epochs, ensemble,
                                    precision, folds=teacher_folds,
                                    device_response_p=teacher_device_response_p)
        _say_note(note)
        teacher_logits = result.logits
        out_console.print(f"teacher ensemble: {'cache hit' if result.cache_hit else 'fitted'} "
                          f"({', '.join(result.per_teacher)})", highlight=False)
    started = time.perf_counter()
    history = fit(model, data.train, recipe, teacher_logits=teacher_logits, precision=precision,
                  progress=not obj.quiet, label=f"{spec.arch}{' + KD' if kd else ''}",
                  compile_model=compile_model)
    seconds = time.perf_counter() - started
    results = {}
    for name, labelled in (("validation", data.validation), ("test", data.test)):
        if labelled is not None:
            logits = predict(model, labelled.features, precision=precision)
            results[name] = evaluate(logits, labelled.labels, labelled.devices,
                                     files=labelled.files, classes=labelled.classes)
    out_console.print(evaluation_table(results, title=f"{spec.arch}, split {split}"
                                                       f"{', KD' if kd else ''}, seed {recipe.seed}"))
    out_console.print(f"trained {recipe.epochs} epochs in {seconds:.0f} s "
                      f"({history.samples / seconds:.0f} samples/s); final loss {history.losses[-1]:.3f}",
                      highlight=False)
    path = out or (studies_dir() / "runs" /
                   f"{spec.arch}-split{split}-seed{recipe.seed}{'-kd' if kd else ''}.pt")
    save_checkpoint(path, spec=spec, state_dict=model.state_dict(), metadata={
        "split": int(split), "kd": kd, "recipe": recipe.to_dict(), "macs": card.macs,
        "classes": list(classes),
        "params": card.params, "seconds": seconds,
        **{f"{name}_macro_accuracy": e.macro_accuracy for name, e in results.items()},
    })
    out_console.print(f"checkpoint: {path}", highlight=False)


@click.group("teachers")
def teachers_group() -> None:
    """Fit teachers on a split and cache their ensemble logits."""


@teachers_group.command("fit")
@_data_options
@_teacher_options
@recipe_options
@pass_context
def teachers_fit(obj: Context, data: str | None, split: str, device: str,
                 teacher_names: tuple[str, ...], teacher_epochs: int | None, ensemble: str,
                 teacher_folds: int, teacher_device_response_p: float, **values: Any) -> None:
    """Fit the teachers on the split's training clips only and cache the ensemble logits."""
    from asc_search.features.experiment import load_split_data
    from asc_search.training.train import precision_for

    recipe = _recipe(values)  # refuses a bad option before any data is read
    if teacher_epochs is None and _given("epochs"):  # here --epochs can only mean the teachers'
        teacher_epochs = recipe.epochs
    precision = precision_for(device)
    loaded = load_split_data(data, int(split), pm=obj.pm, cache_dir=obj.cache,
                             progress=not obj.quiet, with_test=False)
    result, rows, note = _ensemble(obj, loaded, teacher_names, teacher_epochs, ensemble,
                                   precision, folds=teacher_folds,
                                   device_response_p=teacher_device_response_p)
    agreement = ("out-of-fold macro acc % on the training clips" if teacher_folds > 1
                 else "train macro acc %")
    table = Table("teacher", agreement, "validation macro acc % (95 % CI)",
                  title=f"teachers, split {split}"
                        + (" (cached: validation is scored when teachers are fitted)"
                           if result.cache_hit else ""))
    for row in rows:
        table.add_row(*row)
    _stdout().print(table)
    _stdout().print(f"ensemble logits {'cache hit' if result.cache_hit else 'fitted'}: "
                    f"{result.directory} ({len(result.files):,} clips, "
                    f"{np.asarray(result.logits).shape[1]} classes)", highlight=False)
    _say_note(note)
    if len(rows) < 2 and not result.cache_hit:
        raise AscSearchError("no teacher reported")
