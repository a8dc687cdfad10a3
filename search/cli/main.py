"""The ``asc-search`` command line.

Every command turns ``AscSearchError`` into one line on stderr and exit status 2; anything else is a
bug and keeps its traceback. Plugins (installed entry points and ``--plugin MODULE``) are loaded
before the command tree is built, so their ``asc_register_commands`` can add commands.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import pluggy
from rich.console import Console
from rich.table import Table

from asc_search import __version__
from asc_search.data.dataset import DEVICES, load_dataset
from asc_search.errors import AscSearchError
from asc_search.paths import cache_dir, keep_library_files_in
from asc_search.plugin_manager import build_plugin_manager, describe_plugins
from asc_search.progress import progress_bar


def _stdout() -> Console:
    """A console on the current stdout; wide when piped, so tables stay greppable, not wrapped."""
    return Console(width=None if sys.stdout.isatty() else 200)


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


def build_cli(pm: pluggy.PluginManager) -> click.Group:
    """Return the command tree with built-in commands and every plugin's commands."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
    @click.version_option(__version__, prog_name="asc-search")
    @click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
                  help="Load a plugin module by dotted path (repeatable).")
    @click.option("--cache", type=click.Path(path_type=Path), default=None,
                  help="Cache folder [default: $ASC_SEARCH_CACHE or ~/.cache/asc-search].")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
    @click.pass_context
    def cli(ctx: click.Context, plugins: tuple[str, ...], cache: Path | None, quiet: bool) -> None:
        """Find, prune and distil tiny acoustic-scene classifiers under DCASE budgets."""
        # Plugins were loaded by main() before the tree was built; workers need their names.
        ctx.obj = Context(pm, cache_dir(cache), quiet, plugins)

    cli.add_command(plugins_group)
    cli.add_command(data_group)
    cli.add_command(features_group)
    cli.add_command(count_command)
    from asc_search.cli.training import teachers_group, train_command

    cli.add_command(train_command)
    cli.add_command(teachers_group)
    from asc_search.cli.pruning import prune_command

    cli.add_command(prune_command)
    from asc_search.cli.search import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)
    pm.hook.asc_register_commands(cli=cli)
    return cli


# --------------------------------------------------------------------------------------------
# plugins
# --------------------------------------------------------------------------------------------


@click.group("plugins")
def plugins_group() -> None:
    """Inspect registered plugins."""


@plugins_group.command("list")
@pass_context
def plugins_list(obj: Context) -> None:
    """Show every registered plugin, where it came from and the hooks it implements."""
    table = Table("plugin", "from", "hooks")
    for info in describe_plugins(obj.pm):
        table.add_row(info.name, info.origin, ", ".join(info.hooks))
    _stdout().print(table)
    from asc_search.architecture import architectures
    from asc_search.data.source import dataset_sources
    from asc_search.plugin_manager import providers
    from asc_search.pruning.prune import importance_metrics, pruning_schedules
    from asc_search.teachers.ensemble import teachers

    # Every named thing a command line or space file can pick, with the plugin that gives it.
    named = (("data source", "asc_dataset_sources", dataset_sources),
             ("teacher", "asc_teachers", teachers),
             ("importance metric", "asc_importance_metrics", importance_metrics),
             ("pruning schedule", "asc_pruning_schedules", pruning_schedules))
    for what, hook, collect in named:
        origin = providers(obj.pm, hook)
        listing = Table(what, "description", "from")
        for name, item in collect(obj.pm).items():
            listing.add_row(name, item.description, origin.get(name, "?"))
        _stdout().print(listing)
    origin = providers(obj.pm, "asc_architectures")
    archs = Table("architecture", "description", "presets", "from")
    for name, arch in architectures(obj.pm).items():
        archs.add_row(name, arch.description, ", ".join(arch.presets), origin.get(name, "?"))
    _stdout().print(archs)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@click.group("data")
def data_group() -> None:
    """Write the embedded corpus or check a TAU22-layout folder."""


@data_group.command("synth")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="New folder to write [default: the cache folder, reused when present].")
@click.option("--seed", type=int, default=0, help="Corpus seed; the same seed gives the same bytes.")
@click.option("--size", type=click.Choice(["default", "full", "small", "tiny"]), default="default",
              help="default: 8,000 training clips; full: TAU22's real counts (139,600 training "
                   "and 29,700 test clips, about 23 GB); small and tiny are for quick trials "
                   "and tests.")
@click.option("--jobs", type=int, default=-1,
              help="Worker processes (-1: one per usable core, at most 8).")
@pass_context
def data_synth(obj: Context, out: Path | None, seed: int, size: str, jobs: int) -> None:
    """Write the embedded TAU22-layout corpus (meta.csv, audio/, split lists, test, validation)."""
    from asc_search.plugins.embedded_corpus import SIZES, cached_corpus, make_plan, write_corpus

    total = len(make_plan(seed=seed, size=SIZES[size]).recordings)
    started = time.perf_counter()
    with progress_bar("rendering recordings", total=total, enabled=not obj.quiet) as advance:
        reported = 0

        def report(done: int, _total: int) -> None:
            nonlocal reported
            advance(done - reported)
            reported = done

        if out is None:
            folder = cached_corpus(obj.cache, seed=seed, size=size, progress=report)
        else:
            folder = write_corpus(out, seed=seed, size=size, n_jobs=jobs, progress=report)
    _stdout().print(f"corpus ready in {time.perf_counter() - started:.1f} s: {folder}")


@data_group.command("check")
@click.argument("folder", type=click.Path(path_type=Path), required=False)
@click.option("--lists", type=click.Path(path_type=Path), default=None,
              help="Folder holding split lists [default: FOLDER or FOLDER/split_setup].")
@click.option("--quick", is_flag=True, help="Check lists only; do not decode the audio.")
@click.option("--jobs", type=int, default=-1,
              help="Worker processes for decoding (-1: one per usable core, at most 8).")
@pass_context
def data_check(obj: Context, folder: Path | None, lists: Path | None, quick: bool, jobs: int) -> None:
    """Count clips per list × device and name every problem (default: the embedded corpus)."""
    from asc_search.data.check import check_dataset
    from asc_search.data.source import resolve_data

    root = folder if folder is not None else resolve_data(None, pm=obj.pm, cache_dir=obj.cache)
    if not root.is_dir():
        raise AscSearchError(f"{root}: data folder not found")
    total = 0 if quick else _count_present(root, lists)
    with progress_bar("decoding clips", total=total, enabled=not (quick or obj.quiet)) as advance:
        report = check_dataset(root, lists_dir=lists, decode=not quick, n_jobs=jobs,
                               progress=advance)
    if report.counts:
        table = Table("list", *DEVICES, "total", title=str(root))
        for name, counts in report.counts.items():
            table.add_row(name, *(f"{counts.get(d, 0):,}" for d in DEVICES),
                          f"{sum(counts.values()):,}")
        _stdout().print(table)
    for note in report.notes[:20]:
        _stdout().print(f"note: {note}", highlight=False)
    if len(report.notes) > 20:
        _stdout().print(f"note: … and {len(report.notes) - 20} more", highlight=False)
    for problem in report.problems[:50]:
        _stdout().print(f"problem: {problem}", highlight=False, soft_wrap=True)
    if len(report.problems) > 50:
        _stdout().print(f"problem: … and {len(report.problems) - 50} more", highlight=False)
    if report.problems:
        raise AscSearchError(f"{root}: {len(report.problems)} problem(s) found (listed above)")
    _stdout().print("no problems found")


def _count_present(root: Path, lists: Path | None) -> int:
    """How many clips the check will decode, for the progress bar's total."""
    try:
        dataset = load_dataset(root, lists_dir=lists)
    except AscSearchError:
        return 0
    listed = set(dataset.training_fold) | set(dataset.test) | set(dataset.validation or ())
    return sum(dataset.audio_path(name).is_file() for name in listed)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


@click.group("features")
def features_group() -> None:
    """Build or inspect the log-mel feature cache."""


@features_group.command("build")
@click.option("--data", default=None, help="Data folder or source name [default: embedded].")
@click.option("--split", type=click.Choice(["5", "10", "25", "50", "100"]), default="5")
@click.option("--jobs", type=int, default=-1,
              help="Worker processes (-1: one per usable core, at most 8).")
@pass_context
def features_build(obj: Context, data: str | None, split: str, jobs: int) -> None:
    """Compute (or find cached) log-mels for a split's train, validation and test lists."""
    from asc_search.data.source import resolve_data
    from asc_search.features.logmel import build_features

    root = resolve_data(data, pm=obj.pm, cache_dir=obj.cache)
    dataset = load_dataset(root)
    files = dataset.split(int(split))
    table = Table("list", "clips", "seconds", "cache", "folder")
    for name, listed in (("train", files.train), ("validation", files.validation),
                         ("test", files.test)):
        started = time.perf_counter()
        with progress_bar(f"log-mel {name}", total=len(listed), enabled=not obj.quiet) as advance:
            features = build_features(listed, root=root, cache_dir=obj.cache, n_jobs=jobs,
                                      progress=advance, stats=dataset.file_stats)
        table.add_row(name, f"{len(listed):,}", f"{time.perf_counter() - started:.2f}",
                      "hit" if features.cache_hit else "built", str(features.directory))
    _stdout().print(table)


# --------------------------------------------------------------------------------------------
# count
# --------------------------------------------------------------------------------------------


def _csv(kind: type) -> Callable[[str | None], tuple | None]:
    def parse(text: str | None) -> tuple | None:
        if text is None:
            return None
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise click.BadParameter(f"{text!r}: comma-separated {kind.__name__} values expected") from exc

    return parse


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


SPEC_FIELDS = ("arch", "base_channels", "channels_multiplier", "expansion_rate", "n_blocks",
               "stem_factorization", "factorization", "n_classes")


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
        changes["n_blocks"] = _csv(int)(changes["n_blocks"])
    if "factorization" in changes:
        changes["factorization"] = _csv(str)(changes["factorization"])
    return ArchSpec.from_dict({**spec.to_dict(), **changes}) if changes else spec


@click.command("count")
@spec_options
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A saved model (its spec, and its pruned widths if any).")
@click.option("--budget-macs", default="30M", help="MACs budget per 1 s clip.")
@click.option("--budget-bytes", default="128kB", help="Parameter memory budget.")
@click.option("--dtype", "storage_dtype", default="float16",
              type=click.Choice(["float32", "float16", "bfloat16", "int8"]),
              help="Dtype the parameters are stored in (int8: what the converted int8 "
                   "program would hold, bounded from the float network).")
@click.option("--input-shape", default="1,1,256,65", help="Model input (front-end excluded).")
@click.option("--layers", is_flag=True, help="Add a per-layer table.")
@click.option("--largest", is_flag=True, help="Also find the widest base_channels that fits.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_context
def count_command(obj: Context, preset: str | None, spec_file: Path | None,
                  checkpoint: Path | None, budget_macs: str, budget_bytes: str, storage_dtype: str,
                  input_shape: str, layers: bool, largest: bool, as_json: bool,
                  **fields: Any) -> None:  # fields: the spec flags of spec_options
    """Print the DCASE complexity card (MACs, parameters, bytes, pass/fail) of a network."""
    import json

    from asc_search.architecture import build_model
    from asc_search.complexity import count_complexity, format_count, parse_budget
    from asc_search.study.space import largest_fitting_width

    if checkpoint is not None and (preset is not None or spec_file is not None):
        raise AscSearchError("give at most one of --preset, --spec, --checkpoint")
    max_macs = parse_budget(budget_macs, what="--budget-macs")
    max_bytes = parse_budget(budget_bytes, what="--budget-bytes")
    shape = _csv(int)(input_shape)
    state = None
    if checkpoint is not None:
        from asc_search.training.checkpoint import load_checkpoint

        if any(v is not None for v in fields.values()):
            raise AscSearchError("a checkpoint's architecture is fixed; drop the spec flags")
        loaded = load_checkpoint(checkpoint)
        spec, state = loaded.spec, loaded.state_dict
    else:
        spec = spec_from_options(obj, preset, spec_file, fields)
    model = build_model(spec, pm=obj.pm)
    if state is not None:
        from asc_search.training.checkpoint import CheckpointError

        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{checkpoint}: weights do not fit its spec "
                                  f"({str(exc).splitlines()[0]})") from exc
    card = count_complexity(model, input_shape=shape, storage_dtype=storage_dtype, per_layer=layers)
    widest = (largest_fitting_width(spec, pm=obj.pm, max_macs=max_macs, max_param_bytes=max_bytes,
                                    storage_dtype=storage_dtype) if largest else None)
    fits_macs, fits_bytes = card.macs <= max_macs, card.param_bytes <= max_bytes
    if as_json:
        payload = {**card.to_dict(), "budget_macs": max_macs, "budget_bytes": max_bytes,
                   "fits": fits_macs and fits_bytes, "spec": spec.to_dict()}
        if layers:
            payload["layers"] = [vars(layer) for layer in card.layers]
        if largest:
            payload["largest_fitting_base_channels"] = widest
        click.echo(json.dumps(payload, indent=2))
        return
    table = Table("", "value", "budget", "", title=f"DCASE complexity card: {spec.arch}")
    table.add_row("MACs", f"{card.macs:,} ({format_count(card.macs)})", f"{max_macs:,}",
                  "pass" if fits_macs else "FAIL")
    table.add_row("parameters", f"{card.params:,}", "", "")
    table.add_row(f"bytes ({storage_dtype})", f"{card.param_bytes:,}", f"{max_bytes:,}",
                  "pass" if fits_bytes else "FAIL")
    out = _stdout()
    out.print(table)
    out.print(f"spec: {spec.to_json()}", highlight=False, soft_wrap=True)
    if largest:
        out.print(f"widest base_channels that fits: {widest}" if widest else
                  "no base_channels fits these budgets")
    if card.uncounted_parameters:
        out.print("parameters outside leaf layers (counted as parameters, no MACs, as in the "
                  "official count): " + ", ".join(f"{name} ({n:,})" for name, n in
                                                  card.uncounted_parameters.items()))
    if layers:
        per_layer = Table("layer", "type", "params", "MACs")
        for layer in card.layers:
            per_layer.add_row(layer.name, layer.kind, f"{layer.params:,}", f"{layer.macs:,}")
        out.print(per_layer)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def _option_values(argv: Sequence[str], option: str) -> list[str]:
    """Pick ``OPTION X`` / ``OPTION=X`` out of argv before click parses it (plugins and the
    cache folder are needed before the command tree exists)."""
    found, args = [], list(argv)
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith(f"{option}="):
            found.append(arg.split("=", 1)[1])
    return found


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: load plugins, build the tree, run, map errors to one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Our own notes (a cache rebuilt) at INFO; libraries' chatter only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("asc_search").setLevel(logging.INFO)
    try:
        # Before any plugin imports matplotlib or torch's compiler: their files go to the cache.
        cache = _option_values(args, "--cache")
        keep_library_files_in(cache_dir(cache[-1] if cache else None))
        pm = build_plugin_manager(extra_modules=_option_values(args, "--plugin"))
        build_cli(pm).main(args=args, prog_name="asc-search", standalone_mode=False)
    except AscSearchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # a mistyped option or value: one line, and where to look
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
