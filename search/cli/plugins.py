"""``asc-search plugins list``: what each registered plugin gives, and which plugin gives a name.

A name on the command line or in a space file (a teacher, a metric, an architecture) may come from
any plugin, built in or installed; this listing is where a user finds out which.
"""

from __future__ import annotations

import click
from rich.table import Table

from asc_search.cli.shared import Context, pass_context, stdout_console
from asc_search.plugin_manager import describe_plugins


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
    stdout_console().print(table)
    from asc_search.architecture import architectures
    from asc_search.complexity import mac_counters
    from asc_search.data.source import dataset_sources
    from asc_search.plugin_manager import providers
    from asc_search.pruning.prune import importance_metrics, pruning_schedules
    from asc_search.teachers.ensemble import teachers

    # Every named thing a command line or space file can pick, with the plugin that gives it.
    named = (("data source", "asc_dataset_sources", dataset_sources),
             ("teacher", "asc_teachers", teachers),
             ("importance metric", "asc_importance_metrics", importance_metrics),
             ("pruning schedule", "asc_pruning_schedules", pruning_schedules),
             ("MAC counter", "asc_mac_counters", mac_counters))
    for what, hook, collect in named:
        origin = providers(obj.pm, hook)
        listing = Table(what, "description", "from")
        for name, item in collect(obj.pm).items():
            listing.add_row(name, item.description, origin.get(name, "?"))
        stdout_console().print(listing)
    origin = providers(obj.pm, "asc_architectures")
    archs = Table("architecture", "description", "presets", "from")
    for name, arch in architectures(obj.pm).items():
        archs.add_row(name, arch.description, ", ".join(arch.presets), origin.get(name, "?"))
    stdout_console().print(archs)
