"""Every hook asc-search offers, in one file, grouped by the stage of the data's journey.

A plugin is any module or object with functions named like these, marked with
``asc_search.hookimpl``. Built-in features register through exactly these hooks (see the
``plugins/`` folder, registered by entry point), so a third-party plugin has the same powers as
the core. Implementations may accept any subset of the declared arguments. Each hook is
documented here and in docs/plugins.md; ``tests/test_hookspecs.py`` fails when a hook lacks
either, or lacks a test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from asc_search.architecture import Architecture
    from asc_search.complexity import MacCounter
    from asc_search.plugin_types import (
        DatasetSource,
        DimensionInfo,
        ImportanceMetric,
        PruningSchedule,
        Teacher,
    )

PROJECT = "asc_search"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_register_commands(cli: click.Group) -> None:
    """Add commands to the ``asc-search`` command line.

    Called once while the command line is built, after built-in commands exist. ``cli`` is the
    top-level ``click.Group``; add commands with ``@cli.command()`` or ``cli.add_command(...)``.
    Return value is ignored. A plugin loaded with ``--plugin`` is registered before this is called,
    so ad-hoc plugins can add commands too.
    """


# ---------------------------------------------------------------------------------------------
# Dataset: where the audio comes from
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_dataset_sources() -> list[DatasetSource]:
    """Return named data sources that ``--data NAME`` can use instead of a folder path.

    Each ``asc_search.plugin_types.DatasetSource`` has a ``name``, a one-line ``description`` and a
    ``prepare(cache_dir)`` callable returning a folder in the TAU Urban Acoustic Scenes 2022
    Mobile layout (``meta.csv``, ``audio/``, split lists). ``prepare`` is called only when the source
    is used and must be idempotent: the built-in ``embedded`` corpus writes itself into the cache
    folder on first use and returns the same folder afterwards. Every returned folder is read by the
    same TAU22 loader, so sources never need their own reader. Names must be unique across plugins.
    """
    return []


# ---------------------------------------------------------------------------------------------
# Architectures: what a candidate network is
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_architectures() -> list[Architecture]:
    """Return architectures that a spec's ``arch`` field can name.

    Each ``asc_search.architecture.Architecture`` has a ``name``, a one-line ``description``, a
    ``build(spec)`` callable returning an ``nn.Module`` that maps log-mels (B, 1, mels, frames) to
    logits (B, classes), and optional named ``presets`` (``ArchSpec`` objects, e.g. the DCASE
    baseline). ``build`` must be deterministic in the spec (weights aside) and raise
    ``asc_search.architecture.SpecError`` for a spec it cannot build. The network must not contain
    the front-end: complexity is counted on the model alone, as DCASE counts it. Names (and preset
    names) must be unique across plugins.
    """
    return []


# ---------------------------------------------------------------------------------------------
# Complexity: how a candidate's MACs are counted before it is trained
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_mac_counters() -> list[MacCounter]:
    """Return MAC counters that the pre-check holds the official count to.

    Each ``asc_search.complexity.MacCounter`` has a ``name``, a one-line ``description`` and
    ``count(model, input_shape)`` returning a ``MacCount`` (its total and each module's own MACs,
    with the operators each module ran). Before a candidate is trained (a trial, a user's
    reference, ``asc-search count``) every registered counter counts it, and a network any of them
    counts differently from the official ``torchinfo`` count, module by module, is refused in one
    line naming the module and its operators; the official count stays the one reported and
    budgeted. A counter raises ``asc_search.complexity.NoCountingRule`` for an operator it cannot
    count (which refuses the network too) and leaves the model's mode and the random stream as
    they were. Built in: ``torchinfo`` and ``fvcore``. Names must be unique across plugins.
    """
    return []


# ---------------------------------------------------------------------------------------------
# Teachers: who distils knowledge into the students
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_teachers() -> list[Teacher]:
    """Return teachers that ``--teacher NAME[=OPTION]`` can name.

    Each ``asc_search.plugin_types.Teacher`` has a ``name``, a ``description``, ``settings`` that change
    its output (part of the cache key), an optional ``fingerprint(option)`` for files an option
    points at, and ``fit(context)`` returning a ``TeacherFit`` whose ``logits`` (N, classes) are
    row-aligned with ``context.train``. The context holds only the split's training clips (features,
    labels, devices), the recipe, the precision and a private ``workdir`` in the cache: a teacher
    must learn from nothing else. Logits are cached per (split file list, teacher set, settings,
    recipe) and averaged into the ensemble every student distils from.
    """
    return []


# ---------------------------------------------------------------------------------------------
# Pruning: which channels go, and how fast
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_importance_metrics() -> list[ImportanceMetric]:
    """Return channel-importance metrics a pruning plan can name.

    Each ``asc_search.plugin_types.ImportanceMetric`` has a ``name``, a ``description``, ``make()``
    returning a Torch-Pruning importance (a callable taking a dependency group and returning one
    score per channel; low scores are pruned first) and ``needs_gradients``: when true the engine
    fills ``.grad`` from a few training batches before every pruning step. Names must be unique.
    """
    return []


@hookspec
def asc_pruning_schedules() -> list[PruningSchedule]:
    """Return pruning schedules a plan can name.

    Each ``asc_search.plugin_types.PruningSchedule`` has a ``name``, a ``description`` and
    ``ratios(final_ratio, steps)`` returning the cumulative channel ratio removed after each step:
    ``steps + 1`` values starting at 0, never decreasing, ending at ``final_ratio``. The engine
    checks this and fine-tunes with KD after every step. Names must be unique.
    """
    return []


# ---------------------------------------------------------------------------------------------
# Search spaces: which dimensions a space file may search
# ---------------------------------------------------------------------------------------------


@hookspec
def asc_space_dimensions() -> list[DimensionInfo]:
    """Return dimension names that search-space files may declare.

    Each ``asc_search.plugin_types.DimensionInfo`` has a ``name`` (the key under ``[dimensions]``), a
    ``target`` saying what it shapes (``"spec"``: an ``ArchSpec`` field or, with an ``apply``
    callable, part of one; ``"plan"``: the pruning plan; ``"training"``: the training recipe), a
    one-line ``description``, and optionally ``allowed(pm)`` returning the values a categorical
    choice may take (e.g. registered metric names), so a misspelt choice fails when the space is
    loaded rather than inside a trial. A space naming an unregistered dimension is refused. Names
    must be unique across plugins.
    """
    return []


def documented_hooks() -> dict[str, Any]:
    """Map each hook name declared here to its function, for docs and the self-check tests."""
    return {
        name: obj
        for name, obj in globals().items()
        if name.startswith("asc_") and callable(obj)
    }
