"""Counting MACs and parameter bytes exactly as DCASE Task 1 counts them.

The challenge's official counter (``nessi``) is torchinfo's ``total_mult_adds`` / ``total_params`` on
the model without its front-end, input [1, 1, 256, 65], so this module counts with torchinfo itself
rather than re-deriving its rules: a leaf layer's MACs are its parameter count times its output
positions for a convolution (weight + bias elements × output height × width) and its parameter
count once for any other layer (BatchNorm: 2·C); layers without parameters (ReLU, pooling, adds,
parameter-free matmul, attention, upsampling) cost nothing; running statistics are buffers, not
parameters. Counting with another tracer and overriding its rules (the first version did this with
fvcore) silently kept that tracer's own cost for operators it had no override for: a toy attention
block with parameter-free matmul counted 18.8 M MACs where the challenge counts 0.51 M (508,048,
the toy block in the tests).

What the convention gives no MACs although it carries parameters is reported, never hidden:
parameters that belong to a container module rather than a leaf layer (a positional embedding
or class token used by a functional op) count as parameters and bytes but cost no MACs here,
exactly as in the official count; ``uncounted_parameters`` names them so a user can judge.

Because torchinfo sees layers and not functional calls, a network that calls ``F.conv2d`` or
``torch.matmul`` on its own weights is under-counted by it without a word. So the pre-check
(``checked_complexity``: a trial before training, a user's reference, ``asc-search count``) asks
every MAC counter the plugins register (``asc_mac_counters``; built in: this torchinfo count and
an fvcore trace with the DCASE rules written out, ``plugins/counters.py``) and refuses a
network they count differently, module by module, naming the module and its operators. The
official count stays the one reported and budgeted; the others only have to agree with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from asc_search.errors import AscSearchError
from asc_search.plugin_types import collect_named

if TYPE_CHECKING:
    import pluggy

DCASE_INPUT_SHAPE: tuple[int, ...] = (1, 1, 256, 65)
MAX_MACS = 30_000_000
MAX_PARAM_BYTES = 128_000
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


class BudgetError(AscSearchError):
    """A budget string that is not a positive amount."""


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str
    params: int
    macs: int


@dataclass(frozen=True)
class ComplexityCard:
    """What DCASE asks a submission to report, plus what the convention gives no MACs."""

    macs: int
    params: int
    param_bytes: int
    storage_dtype: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerCount, ...] = ()
    #: Parameters outside leaf layers (name → elements): counted as parameters, no MACs.
    uncounted_parameters: dict[str, int] = field(default_factory=dict)
    #: Each module's own MACs by this count (name → MACs, "" the network itself; modules that
    #: cost nothing left out): what another counter's figures are checked against.
    module_macs: dict[str, int] = field(default_factory=dict)

    def fits(self, *, max_macs: int = MAX_MACS, max_param_bytes: int = MAX_PARAM_BYTES) -> bool:
        return self.macs <= max_macs and self.param_bytes <= max_param_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "storage_dtype": self.storage_dtype,
            "input_shape": list(self.input_shape),
            "counter": "torchinfo total_mult_adds / total_params (as DCASE's nessi)",
            "uncounted_parameters": dict(self.uncounted_parameters),
        }


def count_complexity(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...] = DCASE_INPUT_SHAPE,
    storage_dtype: str = "float16",
    per_layer: bool = False,
) -> ComplexityCard:
    """Count ``model`` (without front-end) on one input of ``input_shape`` the DCASE way.

    ``storage_dtype`` is the dtype the submission stores parameters in (DCASE: 16-bit, so 2 bytes
    each); it only affects ``param_bytes``. The model is run once in eval mode on the device its
    parameters are on (torchinfo would otherwise move a CPU model to a GPU) and left in the mode
    it was in; the global random stream is left where it was.
    """
    import torchinfo

    if storage_dtype not in DTYPE_BYTES:
        raise AscSearchError(
            f"storage dtype {storage_dtype!r}: unknown, choose one of {', '.join(DTYPE_BYTES)}"
        )
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    # torchinfo feeds torch.rand: counting must not move the seeded stream training draws from.
    # It also keeps every summary (and so the model) in a module-level cache: dropped after.
    try:
        with torch.random.fork_rng(devices=[]):
            summary = torchinfo.summary(model, input_size=input_shape, device=device,
                                        mode="eval", verbose=0, depth=64)
    finally:
        model.train(was_training)
        torchinfo.torchinfo.clear_cached_forward_pass()
    macs, params = int(summary.total_mult_adds), int(summary.total_params)
    names = {id(module): name for name, module in model.named_modules()}
    uncounted: dict[str, int] = {}
    layers: list[LayerCount] = []
    module_macs: dict[str, int] = {}
    for info in summary.summary_list:
        name = names.get(id(info.module), info.var_name)
        own = {n: p.numel() for n, p in info.module.named_parameters(recurse=False)}
        if not info.is_leaf_layer:
            for param_name, count in own.items():
                uncounted[f"{name}.{param_name}" if name else param_name] = count
            continue
        if info.macs:  # what torchinfo's total adds up: every call of every leaf layer
            module_macs[name] = module_macs.get(name, 0) + int(info.macs)
        if per_layer and own and not info.is_recursive:
            layers.append(LayerCount(name=name, kind=type(info.module).__name__,
                                     params=sum(own.values()), macs=int(info.macs)))
    return ComplexityCard(
        macs=macs,
        params=params,
        param_bytes=int8_param_bytes(model) if storage_dtype == "int8"
        else params * DTYPE_BYTES[storage_dtype],
        storage_dtype=storage_dtype,
        input_shape=tuple(input_shape),
        layers=tuple(layers),
        uncounted_parameters=uncounted,
        module_macs=module_macs,
    )


# --------------------------------------------------------------------------------------------
# The pre-check: every registered counter must agree with the official count
# --------------------------------------------------------------------------------------------

#: The counter whose count is the card: what DCASE counts, reported and budgeted.
OFFICIAL_COUNTER = "torchinfo"


class NoCountingRule(AscSearchError):
    """A counter met an operator it has no DCASE rule for: it refuses rather than guess."""


class CountDisagreement(AscSearchError):
    """Two counters count a network differently: one of them does not see an operator."""


@dataclass(frozen=True)
class MacCount:
    """One counter's MACs of one network, module by module, so that a disagreement names where."""

    total: int
    #: Each module's own MACs, not its children's (name → MACs, "" the network itself; modules
    #: that cost nothing may be left out). Empty: the counter only knows the total.
    by_module: Mapping[str, int] = field(default_factory=dict)
    #: What each module ran (name → operator → MACs, operators that cost nothing included): how
    #: a disagreement names the operator.
    operators: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class MacCounter:
    """A counter plugin's offer (see ``asc_mac_counters`` in hookspecs).

    ``count(model, input_shape)`` runs ``model`` (without front-end, in eval mode, on the device
    its parameters are on) on one input of ``input_shape`` and returns its ``MacCount``; it
    raises ``NoCountingRule`` for an operator it cannot count, and leaves the model's mode and
    the global random stream as they were.
    """

    name: str
    description: str
    count: Callable[[nn.Module, tuple[int, ...]], MacCount]


def mac_counters(pm: pluggy.PluginManager) -> dict[str, MacCounter]:
    """Every registered MAC counter by name; two with one name are an error."""
    return collect_named(pm.hook.asc_mac_counters(), what="MAC counter")


def official_count(card: ComplexityCard) -> MacCount:
    """The card's MACs as a ``MacCount``: what the official counter counts."""
    return MacCount(total=card.macs, by_module=dict(card.module_macs))


def checked_complexity(
    model: nn.Module,
    *,
    pm: pluggy.PluginManager,
    input_shape: tuple[int, ...] = DCASE_INPUT_SHAPE,
    storage_dtype: str = "float16",
    per_layer: bool = False,
) -> ComplexityCard:
    """``count_complexity``'s card, once every registered counter agrees with it: the pre-check.

    The card is the official counter's count, so that counter is not run a second time; each
    other counter must give every module the same MACs. A counter that refuses an operator
    (``NoCountingRule``) or counts differently (``CountDisagreement``) refuses the network, in
    one line naming the module, its operators and the two counts: a network torchinfo
    under-counts would otherwise be trained, budgeted and submitted on a wrong figure.
    """
    card = count_complexity(model, input_shape=input_shape, storage_dtype=storage_dtype,
                            per_layer=per_layer)
    counters = {name: counter for name, counter in mac_counters(pm).items()
                if name != OFFICIAL_COUNTER}
    # What the cross-check catches (an operator one counter sees and the other does not) is a
    # matter of which layers run which operators, not of how wide they are: a topology that
    # agreed once agrees at every width. A search's candidates share a handful of topologies,
    # so each is traced once per process (the trace costs about 2.7 official counts).
    topology = (network_topology(model), tuple(input_shape), tuple(sorted(counters.items())))
    if topology in _AGREED_TOPOLOGIES:
        return card
    official = official_count(card)
    for name, counter in counters.items():
        check_agreement(official, counter.count(model, tuple(input_shape)), other=name,
                        model=model)
    _AGREED_TOPOLOGIES.add(topology)
    return card


#: Topologies (``network_topology``) whose counts every counter agreed on, in this process.
_AGREED_TOPOLOGIES: set[tuple[Any, ...]] = set()


def network_topology(model: nn.Module) -> tuple[Any, ...]:
    """What a network runs, without its widths: every module's name and class, a convolution's
    kernel, stride, padding, dilation, bias and whether it is depthwise or grouped, and every
    parameter's name and rank. Two networks with one topology differ only in channel counts."""
    parts: list[Any] = []
    for name, module in model.named_modules():
        entry: tuple[Any, ...] = (name, type(module).__qualname__)
        if isinstance(module, nn.modules.conv._ConvNd):
            grouping = ("plain" if module.groups == 1 else
                        "depthwise" if module.groups == module.in_channels else "grouped")
            entry += (module.kernel_size, module.stride, str(module.padding), module.dilation,
                      module.bias is not None, grouping)
        parts.append(entry)
    parts.extend((name, parameter.dim()) for name, parameter in model.named_parameters())
    return tuple(parts)


def check_agreement(official: MacCount, count: MacCount, *, other: str,
                    model: nn.Module | None = None) -> None:
    """Raise ``CountDisagreement`` unless ``count`` (by counter ``other``) equals ``official``.

    Counts are integers and both counters follow one convention, so "agree" means exactly equal:
    the total, and each module's own MACs where both counters give them. The module with the
    largest gap is named, with the operators ``count`` saw there.
    """
    gaps: dict[str, int] = {}
    if official.by_module and count.by_module:
        for name in set(official.by_module) | set(count.by_module):
            gap = count.by_module.get(name, 0) - official.by_module.get(name, 0)
            if gap:
                gaps[name] = gap
    if not gaps and count.total == official.total:
        return
    if gaps:
        where = max(sorted(gaps), key=lambda name: abs(gaps[name]))
        modules = dict(model.named_modules()) if model is not None else {}
        kind = f" ({type(modules[where]).__name__})" if where in modules else ""
        place = ("the network itself" if where == "" else f"module {where!r}") + kind
        operators = _operators([count.operators.get(where, {})])
        there = (f"{count.by_module.get(where, 0):,} against "
                 f"{official.by_module.get(where, 0):,} there")
        more = gaps[where] > 0
    else:  # a counter that only knows its total
        place, operators = "the network", _operators(count.operators.values())
        there, more = "", count.total > official.total
    why = (f"{OFFICIAL_COUNTER} counts layers, not functional calls: give the weights to an nn "
           "layer (nn.Conv2d, nn.Linear) so that the official count sees them" if more else
           f"{OFFICIAL_COUNTER} counts this layer by its parameters, not by what it runs")
    raise CountDisagreement(
        f"the {other} counter and the official {OFFICIAL_COUNTER} count disagree: "
        f"{count.total:,} against {official.total:,} MACs; in {place}, operators "
        f"{operators or 'none it counts'}{': ' + there if there else ''}. {why}")


def _operators(per_module: Any) -> str:
    """``aten::_convolution (368,640 MACs), aten::relu``: those that cost MACs first."""
    merged: dict[str, int] = {}
    for operators in per_module:
        for op, macs in operators.items():
            merged[op] = merged.get(op, 0) + macs
    ordered = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{op} ({macs:,} MACs)" if macs else op for op, macs in ordered[:6])


#: What int8 storage keeps per output channel of a quantised convolution or linear layer: its
#: float32 scale, its int64 zero point (as the converted program holds them) and its float32
#: bias (a BatchNorm folded into the layer leaves one even where the layer had none).
INT8_BYTES_PER_CHANNEL = 4 + 8 + 4
#: Per activation quantiser: a float32 scale and an int32 zero point.
INT8_BYTES_PER_ACTIVATION = 8


def int8_param_bytes(model: nn.Module) -> int:
    """The bytes ``model`` takes once converted to int8 (``asc_search.training.int8``), from the
    float network alone: an upper bound of the converted program's own count, within a few
    hundred bytes of it, so that the pre-check and budget filling can use it before training.

    Convolutions and linear layers store their weights in int8 (1 byte each) plus
    ``INT8_BYTES_PER_CHANNEL`` per output channel. A BatchNorm right after a convolution of its
    width is folded into it and stores nothing; any other parameter stays float32 (4 bytes), and
    so do the running statistics of a BatchNorm that cannot be folded. Activation quantisers are
    not known before the graph is traced: two per quantised layer (its input and its output)
    bound them from above.
    """
    total, layers, previous = 0, 0, None
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves are counted
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Linear):
            out = module.out_channels if isinstance(module, nn.Conv2d | nn.Conv1d) \
                else module.out_features
            total += module.weight.numel() + out * INT8_BYTES_PER_CHANNEL
            layers += 1
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d) and isinstance(
                previous, nn.Conv2d | nn.Conv1d) and previous.out_channels == module.num_features:
            pass  # folded into the convolution before it
        else:
            total += 4 * sum(p.numel() for p in module.parameters(recurse=False))
            total += 4 * sum(b.numel() for b in module.buffers(recurse=False)
                             if b.is_floating_point())
        if any(True for _ in module.parameters(recurse=False)):
            previous = module
    return total + 2 * layers * INT8_BYTES_PER_ACTIVATION


# --------------------------------------------------------------------------------------------
# Budgets as users write them
# --------------------------------------------------------------------------------------------

_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKMG]i?)?\s*([bB])?\s*$")
_FACTORS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "ki": 1024, "Ki": 1024,
            "Mi": 1024**2, "Gi": 1024**3}


def parse_budget(text: str | int | float, *, what: str = "budget") -> int:
    """Parse ``30M``, ``30e6``, ``29.5M``, ``128kB``, ``128000``, ``125KiB`` into a positive integer.

    Decimal suffixes are SI (k = 1,000, as DCASE's "128 kB" = 128,000 bytes); ``Ki``/``Mi`` are
    binary. Anything else, zero, negative or fractional results are one-line ``BudgetError``s.
    """
    if isinstance(text, bool):
        raise BudgetError(f"{what} {text!r}: not an amount")
    if isinstance(text, int | float):
        text = repr(text)
    match = _BUDGET.match(text)
    if match is None:
        raise BudgetError(
            f"{what} {text!r}: not an amount; write e.g. 30M, 30e6, 29.5M, 128kB or 128000"
        )
    number, suffix, _bytes = match.groups()
    value = float(number) * _FACTORS[suffix or ""]
    if value <= 0:
        raise BudgetError(f"{what} {text!r}: must be positive")
    if abs(value - round(value)) > 1e-6 * max(1.0, value):
        raise BudgetError(f"{what} {text!r}: must be a whole number, got {value:g}")
    return round(value)


def format_count(value: int) -> str:
    """``29419156`` → ``29.42 M``: how the card shows MACs and parameters."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {suffix}"
    return str(value)


__all__ = [
    "DCASE_INPUT_SHAPE", "MAX_MACS", "MAX_PARAM_BYTES", "OFFICIAL_COUNTER", "BudgetError",
    "ComplexityCard", "CountDisagreement", "LayerCount", "MacCount", "MacCounter",
    "NoCountingRule", "check_agreement", "checked_complexity", "count_complexity",
    "format_count", "mac_counters", "official_count", "parse_budget",
]
