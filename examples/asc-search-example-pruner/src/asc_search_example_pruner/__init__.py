"""An example asc-search plugin: one importance metric and one pruning schedule.

Hook implementations are plain functions marked with ``hookimpl``; asc-search finds this module
through the ``asc_search`` entry point declared in pyproject.toml.
"""

from __future__ import annotations

import torch
from torch import nn

from asc_search.hookspecs import hookimpl
from asc_search.plugin_types import ImportanceMetric, PruningSchedule


class L1TimesBNScale:
    """Score = L1 norm of a channel's output weights × |γ| of the BatchNorm right after them.

    Torch-Pruning calls an importance with a dependency group; every member that removes output
    channels of a conv or BatchNorm contributes, and the group's scores are averaged.
    """

    def __call__(self, group) -> torch.Tensor | None:
        import torch_pruning as tp

        weight_norms, bn_scales = [], []
        for dependency, indices in group:
            layer, handler = dependency.target.module, dependency.handler
            if isinstance(layer, nn.Conv2d) and handler in (tp.prune_conv_out_channels,
                                                            tp.prune_depthwise_conv_out_channels):
                weight_norms.append(layer.weight.detach().flatten(1)[indices].abs().sum(dim=1))
            elif isinstance(layer, nn.BatchNorm2d) and handler == tp.prune_batchnorm_out_channels:
                bn_scales.append(layer.weight.detach()[indices].abs())
        if not weight_norms and not bn_scales:
            return None  # nothing in this group that scores channels: Torch-Pruning skips it
        score = torch.stack(weight_norms).mean(0) if weight_norms else 1.0
        return score * (torch.stack(bn_scales).mean(0) if bn_scales else 1.0)


def geometric(final: float, steps: int) -> list[float]:
    """Keep the same fraction of the remaining channels at every step."""
    keep = (1.0 - final) ** (1.0 / steps)
    return [1.0 - keep**t for t in range(steps)] + [final]


@hookimpl
def asc_importance_metrics():
    return [ImportanceMetric("l1_bn", "L1 weight norm × BatchNorm |γ| (example plugin)",
                             L1TimesBNScale)]


@hookimpl
def asc_pruning_schedules():
    return [PruningSchedule("geometric", "the same fraction of what is left at every step "
                            "(example plugin)", geometric)]
