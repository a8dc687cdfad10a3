"""What every ``asc-search`` command shares: its context, its console, its options, its teachers.

The command modules (``data``, ``plugins``, ``training``, ``pruning``, ``search``) import from here
and never from each other, and ``main`` only puts their commands together, so imports run one way:
``main`` → command modules → ``shared``. An option two commands give (``--data``, ``--teacher``,
the recipe flags, the spec flags) is written once here, so the commands cannot drift apart in its
name, default or help; the same goes for how a command prints and how it fits the teacher ensemble
it distils from (``train --kd``, ``prune --kd``, ``teachers fit`` fill and read one cache entry).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pluggy
from click.core import ParameterSource
from rich.console import Console

from asc_search.errors import AscSearchError
from asc_search.teachers import (
    DEFAULT_TEACHER_DEVICE_RESPONSE_P,
    DEFAULT_TEACHER_EPOCHS,
    DEFAULT_TEACHERS,
)
from asc_search.training.recipe import TrainingRecipe

# --------------------------------------------------------------------------------------------
# context and output
# --------------------------------------------------------------------------------------------


class Context:
    """What every command needs: the plugin manager and the cache folder."""

    def __init__(self, pm: pluggy.PluginManager, cache: Path, quiet: bool,
                 plugin_modules: Sequence[str] = ()) -> None:
        self.pm = pm
        self.cache = cache
        self.quiet = quiet
        #: ``--plugin`` modules, so worker processes load the same plugins.
        self.pm_modules = tuple(plugin_modules)


pass_context = click.make_pass_decorator(Context)


def stdout_console() -> Console:
    """A console on the current stdout; wide when piped, so tables stay greppable, not wrapped.

    Made afresh on every call, not once per process: a test's captured stdout, or a redirected
    one, is the one written to.
    """
    return Console(width=None if sys.stdout.isatty() else 200)


def say_note(note: str | None) -> None:
    """Print a note (a teacher set that has memorised its split, say) as it is, if there is one:
    no markup or highlighting, since notes quote paths and option names."""
    if note:
        stdout_console().print(note, highlight=False, markup=False)


def comma_separated(kind: type) -> Callable[[str | None], tuple | None]:
    """A parser for ``1,2,3``-style option values into a tuple of ``kind`` (None stays None).

    A bad part is a click usage error, so the command line names the option in one line.
    """

    def parse(text: str | None) -> tuple | None:
        if text is None:
            return None
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise click.BadParameter(f"{text!r}: comma-separated {kind.__name__} values expected") from exc

    return parse


def option_given(option: str) -> bool:
    """Whether the running command's ``option`` was given, not left at its default."""
    context = click.get_current_context()
    return option in context.params and context.get_parameter_source(option) not in (
        None, ParameterSource.DEFAULT)


# --------------------------------------------------------------------------------------------
# architecture spec
# --------------------------------------------------------------------------------------------


def spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that pick an architecture spec: a preset, a JSON file, and field overrides."""
    options = [
        click.option("--preset", default=None, help="A named spec, e.g. dcase-baseline, seed-final."),
        click.option("--spec", "spec_file", type=click.Path(path_type=Path), default=None,
                     help="A spec JSON file."),
        click.option("--arch", default=None, help="Architecture plugin (cp_mobile, sscp_mobile, …)."),
        click.option("--base-channels", type=int, default=None),
        click.option("--channels-multiplier", type=float, default=None),
        click.option("--expansion-rate", type=float, default=None),
        click.option("--n-blocks", default=None, help="Blocks per stage, e.g. 3,2,1."),
        click.option("--stem-factorization", default=None, help="plain, sequential or parallel."),
        click.option("--factorization", default=None, help="Per stage, e.g. plain,sequential,parallel."),
        click.option("--n-classes", type=int, default=None),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def spec_from_options(obj: Context, preset: str | None, spec_file: Path | None,
                      fields: dict[str, Any]) -> Any:
    """Resolve --preset / --spec plus field flags into one ArchSpec (default: the DCASE baseline)."""
    from asc_search.architecture import ArchSpec, resolve_preset

    if preset is not None and spec_file is not None:
        raise AscSearchError("give at most one of --preset, --spec, --checkpoint")
    if spec_file is not None:
        spec = ArchSpec.from_file(spec_file)
    elif preset is not None:
        spec = resolve_preset(preset, pm=obj.pm)
    else:
        spec = ArchSpec()
    changes = {k: v for k, v in fields.items() if v is not None}
    if "n_blocks" in changes:
        changes["n_blocks"] = comma_separated(int)(changes["n_blocks"])
    if "factorization" in changes:
        changes["factorization"] = comma_separated(str)(changes["factorization"])
    return ArchSpec.from_dict({**spec.to_dict(), **changes}) if changes else spec


# --------------------------------------------------------------------------------------------
# training recipe and data
# --------------------------------------------------------------------------------------------

_RECIPE_HELP = {
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
    "ema_decay": "Return an exponential moving average of the weights over the steps, with "
                 "this decay (0 = off; it ramps up as (1 + n) / (10 + n), so it matters only "
                 "in runs of about a thousand steps and more).",
    "seed": "Seed for initialisation, batch order and augmentation.",
}


def recipe_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per TrainingRecipe field, defaulting to the published recipe."""
    for recipe_field in reversed(fields(TrainingRecipe)):
        flag = "--" + recipe_field.name.replace("_", "-")
        command = click.option(flag, recipe_field.name, type=type(recipe_field.default),
                               default=recipe_field.default, show_default=True,
                               help=_RECIPE_HELP.get(recipe_field.name, ""))(command)
    return command


def recipe_from_options(values: dict[str, Any]) -> TrainingRecipe:
    """Take the ``recipe_options`` values out of a command's keyword arguments (the rest stay,
    for ``spec_from_options``) and return the recipe, refused in one line if it cannot train."""
    recipe = TrainingRecipe(**{f.name: values.pop(f.name) for f in fields(TrainingRecipe)})
    recipe.validate()
    return recipe


def data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--data``, ``--split`` and ``--device``: where the clips come from and where they train."""
    command = click.option("--data", default=None,
                           help="Data folder or source name [default: embedded].")(command)
    command = click.option("--split", type=click.Choice(["5", "10", "25", "50", "100"]),
                           default="5", show_default=True)(command)
    command = click.option("--device", default="cpu", show_default=True,
                           help="cpu or cuda[:N].")(command)
    return command


# --------------------------------------------------------------------------------------------
# teachers
# --------------------------------------------------------------------------------------------


def teacher_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a teacher ensemble fitted outside a study (``train``, ``prune``,
    ``teachers fit``); ``run`` keeps its own, whose defaults are the study's."""
    command = click.option("--teacher", "teacher_names", multiple=True,
                           help="Teacher NAME or NAME=OPTION (repeatable) "
                                f"[default: {', '.join(DEFAULT_TEACHERS)}].")(command)
    command = click.option("--teacher-epochs", type=int, default=None,
                           help="Teacher epochs at the search's batch for the split "
                                f"[default: {DEFAULT_TEACHER_EPOCHS}, as run].")(command)
    command = click.option("--ensemble", type=click.Choice(["mean_logits", "mean_probs"]),
                           default="mean_logits", show_default=True)(command)
    command = teacher_device_response_option(command)
    command = click.option("--teacher-folds", type=click.IntRange(min=1), default=1,
                           show_default=True,
                           help="Out-of-fold logits from K fits per teacher (1: logits on the "
                                "clips a teacher trained on).")(command)
    return command


def teacher_device_response_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--teacher-device-response-p``, which ``run`` shares with the commands outside a study, so
    both fit the same teachers from the same option."""
    return click.option(
        "--teacher-device-response-p", type=click.FloatRange(0, 1),
        default=DEFAULT_TEACHER_DEVICE_RESPONSE_P, show_default=True,
        help="Device impulse-response augmentation for the teachers (--device-responses gives "
             "the bank); 0: as the students.")(command)


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
    given = {f.name: context.params[f.name] for f in fields(TrainingRecipe)
             if option_given(f.name)}
    settings = SearchSettings(
        space={}, space_source="", recipe=given, teacher_epochs=epochs or DEFAULT_TEACHER_EPOCHS,
        teacher_device_response_p=device_response_p)
    return settings.teacher_recipe(n_train)


def fit_teacher_ensemble(obj: Context, data: Any, teacher_names: tuple[str, ...],
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
