"""Built-in channel-importance metrics and pruning schedules (Torch-Pruning underneath).

Registered through ``asc_importance_metrics`` and ``asc_pruning_schedules`` like any plugin's;
``examples/asc-search-hrank`` shows a third-party metric installed through an entry point.
"""

from __future__ import annotations

from asc_search.hookspecs import hookimpl
from asc_search.plugin_types import ImportanceMetric, PruningSchedule


def _tp():
    import torch_pruning as tp  # imported lazily: Torch-Pruning is only needed when pruning

    return tp


def one_shot(final: float, steps: int) -> list[float]:
    """Everything at the first step; later steps (if any) keep the ratio."""
    return [0.0] + [final] * steps


def linear(final: float, steps: int) -> list[float]:
    """Equal steps: the ratio grows by final / steps each time."""
    return [final * t / steps for t in range(steps + 1)]


def agp(final: float, steps: int) -> list[float]:
    """Automated gradual pruning (Zhu & Gupta): s_t = s_f + (s_i − s_f)(1 − t/n)³ with s_i = 0.

    Prunes hard early, when the network has redundancy to spare, and gently at the end.
    """
    return [final + (0.0 - final) * (1 - t / steps) ** 3 for t in range(steps + 1)]


@hookimpl
def asc_importance_metrics() -> list[ImportanceMetric]:
    return [
        ImportanceMetric("l1", "L1 norm of each channel's weights across its dependency group",
                         lambda: _tp().importance.GroupMagnitudeImportance(p=1)),
        ImportanceMetric("l2", "L2 norm of each channel's weights across its dependency group",
                         lambda: _tp().importance.GroupMagnitudeImportance(p=2)),
        ImportanceMetric("bn_scale", "|γ| of the BatchNorm after each channel (network slimming)",
                         lambda: _tp().importance.BNScaleImportance()),
        ImportanceMetric("taylor", "first-order Taylor: |weight × gradient| over a few batches",
                         lambda: _tp().importance.GroupTaylorImportance(), needs_gradients=True),
        ImportanceMetric("fpgm", "filter pruning via geometric median: redundant filters go first",
                         lambda: _tp().importance.FPGMImportance()),
        ImportanceMetric("random", "random scores: the baseline every metric must beat",
                         lambda: _tp().importance.RandomImportance()),
    ]


@hookimpl
def asc_pruning_schedules() -> list[PruningSchedule]:
    return [
        PruningSchedule("one_shot", "all at once, then fine-tune", one_shot),
        PruningSchedule("linear", "n equal steps with a fine-tune after each", linear),
        PruningSchedule("agp", "cubic AGP: large steps first, small ones last", agp),
        # Progressive = a chain of targets (PruningPlan.chain, e.g. 96 → 64 → 32) with a KD
        # fine-tune at every stage; within each stage it steps like AGP.
        PruningSchedule("progressive", "AGP steps within each stage of a width chain", agp),
    ]
