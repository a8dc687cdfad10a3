"""The independent DCASE counter the tests cross-check torchinfo with: the engine's fvcore counter.

asc-search reports and budgets torchinfo's count, the official one. The built-in ``fvcore`` counter
(``asc_search.plugins.counters``) gets the same figures another way (a TorchScript trace, one rule
per operator) and the pre-check refuses a network the two count differently; these helpers are
how the tests and ``benchmarks/count_speed.py`` call it, so a torchinfo upgrade, or a layer it
counts differently, shows up as a disagreement in the tests too. An operator without a rule
raises ``NoCountingRule`` instead of falling back on fvcore's own FLOP formulas.
"""

from __future__ import annotations

from torch import nn

from asc_search.plugins.counters import CONVOLUTIONS, FREE_OPS, PARAMETERS_ONCE, fvcore_count

__all__ = ["CONVOLUTIONS", "FREE_OPS", "PARAMETERS_ONCE", "dcase_conv_macs", "dcase_macs"]


def dcase_macs(model: nn.Module, shape: tuple[int, ...] = (1, 1, 256, 65)) -> int:
    """MACs by the DCASE rules from an fvcore trace; an operator with no rule is an error."""
    return fvcore_count(model, shape).total


def dcase_conv_macs(model: nn.Module, shape: tuple[int, ...] = (1, 1, 256, 65)) -> int:
    """Only the convolutions' MACs, by the same trace."""
    operators = fvcore_count(model, shape).operators
    return sum(macs for ran in operators.values() for kind, macs in ran.items()
               if kind in CONVOLUTIONS)
