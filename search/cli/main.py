"""The ``asc-search`` command line: the entry point, and the group put together from the
command modules (``data``, ``plugins``, ``training``, ``pruning``, ``search``) and ``count``.

Imports run one way: this module imports the command modules, they import what they share from
``asc_search.cli.shared``, and none imports another or this one.

Every command turns ``AscSearchError`` into one line on stderr and exit status 2; anything else is a
bug and keeps its traceback. Plugins (installed entry points and ``--plugin MODULE``) are loaded
before the command tree is built, so their ``asc_register_commands`` can add commands.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pluggy
from rich.table import Table

from asc_search import __version__
from asc_search.cli.data import data_group, features_group
from asc_search.cli.plugins import plugins_group
from asc_search.cli.pruning import prune_command
from asc_search.cli.search import COMMANDS
from asc_search.cli.shared import (
    Context,
    comma_separated,
    pass_context,
    spec_from_options,
    spec_options,
    stdout_console,
)
from asc_search.cli.training import teachers_group, train_command
from asc_search.errors import AscSearchError
from asc_search.parallel import respect_cpu_quota
from asc_search.paths import cache_dir, keep_library_files_in
from asc_search.plugin_manager import build_plugin_manager


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

    for command in (plugins_group, data_group, features_group, count_command, train_command,
                    teachers_group, prune_command, *COMMANDS):
        cli.add_command(command)
    # Last, so a plugin finds the built-in groups: the embedded corpus adds ``data synth``.
    pm.hook.asc_register_commands(cli=cli)
    return cli


# --------------------------------------------------------------------------------------------
# count
# --------------------------------------------------------------------------------------------


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

    from asc_search.architecture import build_model, largest_fitting_width
    from asc_search.complexity import checked_complexity, format_count, parse_budget

    if checkpoint is not None and (preset is not None or spec_file is not None):
        raise AscSearchError("give at most one of --preset, --spec, --checkpoint")
    max_macs = parse_budget(budget_macs, what="--budget-macs")
    max_bytes = parse_budget(budget_bytes, what="--budget-bytes")
    shape = comma_separated(int)(input_shape)
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
    card = checked_complexity(model, pm=obj.pm, input_shape=shape, storage_dtype=storage_dtype,
                              per_layer=layers)
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
    out = stdout_console()
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
        respect_cpu_quota()  # before torch starts its threads (plugins import it)
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
