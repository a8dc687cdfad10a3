"""``asc-search train`` and ``asc-search teachers fit``: one model, or one teacher set, without a search.

``train --help`` lists the whole recipe with the DCASE baseline's published settings as defaults.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from asc_search.cli.shared import (
    Context,
    data_options,
    fit_teacher_ensemble,
    option_given,
    pass_context,
    recipe_from_options,
    recipe_options,
    say_note,
    spec_from_options,
    spec_options,
    stdout_console,
    teacher_options,
)
from asc_search.errors import AscSearchError


@click.command("train")
@data_options
@spec_options
@click.option("--kd", is_flag=True, help="Distil from the teacher ensemble (fitted if not cached).")
@teacher_options
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

    recipe = recipe_from_options(values)
    spec = spec_from_options(obj, preset, spec_file, values)
    precision = precision_for(device)
    data = load_split_data(data, int(split), pm=obj.pm, cache_dir=obj.cache,
                           progress=not obj.quiet, with_test=not no_test)
    classes = data.train.classes
    if spec.n_classes != len(classes):  # the head follows the data's classes
        spec = spec.with_(n_classes=len(classes))
    model = build_model(spec, pm=obj.pm, seed=recipe.seed)
    card = count_complexity(model)
    out_console = stdout_console()
    out_console.print(f"{spec.arch}: {card.macs:,} MACs, {card.params:,} parameters "
                      f"({card.param_bytes:,} bytes at 16-bit); split {split}: "
                      f"{len(data.train):,} train / {len(data.validation):,} validation clips "
                      f"({data.files.validation_source})", highlight=False)
    teacher_logits = None
    if kd:
        result, _, note = fit_teacher_ensemble(obj, data, teacher_names, teacher_epochs,
                                               ensemble, precision, folds=teacher_folds,
                                               device_response_p=teacher_device_response_p)
        say_note(note)
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
@data_options
@teacher_options
@recipe_options
@pass_context
def teachers_fit(obj: Context, data: str | None, split: str, device: str,
                 teacher_names: tuple[str, ...], teacher_epochs: int | None, ensemble: str,
                 teacher_folds: int, teacher_device_response_p: float, **values: Any) -> None:
    """Fit the teachers on the split's training clips only and cache the ensemble logits."""
    from asc_search.features.experiment import load_split_data
    from asc_search.training.train import precision_for

    recipe = recipe_from_options(values)  # refuses a bad option before any data is read
    if teacher_epochs is None and option_given("epochs"):  # here --epochs can only mean the teachers'
        teacher_epochs = recipe.epochs
    precision = precision_for(device)
    loaded = load_split_data(data, int(split), pm=obj.pm, cache_dir=obj.cache,
                             progress=not obj.quiet, with_test=False)
    result, rows, note = fit_teacher_ensemble(obj, loaded, teacher_names, teacher_epochs,
                                              ensemble, precision, folds=teacher_folds,
                                              device_response_p=teacher_device_response_p)
    agreement = ("out-of-fold macro acc % on the training clips" if teacher_folds > 1
                 else "train macro acc %")
    table = Table("teacher", agreement, "validation macro acc % (95 % CI)",
                  title=f"teachers, split {split}"
                        + (" (cached: validation is scored when teachers are fitted)"
                           if result.cache_hit else ""))
    for row in rows:
        table.add_row(*row)
    stdout_console().print(table)
    stdout_console().print(f"ensemble logits {'cache hit' if result.cache_hit else 'fitted'}: "
                    f"{result.directory} ({len(result.files):,} clips, "
                    f"{np.asarray(result.logits).shape[1]} classes)", highlight=False)
    say_note(note)
    if len(rows) < 2 and not result.cache_hit:
        raise AscSearchError("no teacher reported")
