"""The built-in MAC counters: the official torchinfo count, and an fvcore trace with the rules.

``torchinfo`` is what DCASE counts (``asc_search.complexity.count_complexity``): the card's figure.
It sees layers, not what they run, so a network that calls ``F.conv2d`` or ``torch.matmul`` on its
own weights is under-counted by it without a word. ``fvcore`` sees every operator a TorchScript
trace records and applies the DCASE convention to each, written out here, one rule per operator:

- a convolution costs (weight + bias elements) × its output positions (× batch), wherever it is
  called, on a layer's weights or on any others;
- a linear layer, an ``addmm`` and a normalisation cost their parameter elements once (× batch);
- a matrix product (``matmul``, ``mm``, ``bmm``, ``einsum``) costs, like a linear layer, the elements
  of the parameters behind any operand computed from parameters alone (a weight, its transpose),
  and nothing between activations (attention scores), as the official count gives them nothing;
- the operators of ``FREE_OPS`` (activations, pooling, element-wise arithmetic, reshaping, resampling)
  cost nothing: a parameter an element-wise operator applies (a positional embedding) costs no
  MACs, as in the official count, which lists it under the card's uncounted parameters.

An operator with no rule here refuses the network (``NoCountingRule``) rather than falling back on
fvcore's own FLOP formulas, which is how asc-search's first, fvcore-based counter came to count
parameter-free matmul and upsampling. The pre-check (``checked_complexity``) holds the two counts
equal module by module; on every built-in network they are (``tests/test_complexity.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from asc_search.complexity import (
    OFFICIAL_COUNTER,
    MacCount,
    MacCounter,
    NoCountingRule,
    count_complexity,
    official_count,
)
from asc_search.hookspecs import hookimpl

#: Operators whose cost is (weight + bias elements) × output positions.
CONVOLUTIONS = ("aten::_convolution", "aten::conv1d", "aten::conv2d")
#: Operators whose cost is the elements of these inputs (their parameters) once.
PARAMETERS_ONCE = {
    "aten::linear": (1, 2), "aten::addmm": (0, 2), "aten::batch_norm": (1, 2),
    "aten::layer_norm": (2, 3), "aten::group_norm": (2, 3),
}
#: Matrix products: they cost the elements of the parameters an operand is computed from alone.
PRODUCTS = ("aten::matmul", "aten::mm", "aten::bmm", "aten::einsum")
#: Parameter-free by the DCASE convention (only layers with parameters count).
FREE_OPS = (
    "aten::relu", "aten::relu_", "aten::relu6", "aten::hardtanh", "aten::hardtanh_", "aten::gelu",
    "aten::silu", "aten::silu_", "aten::sigmoid", "aten::sigmoid_", "aten::tanh", "aten::hardswish",
    "aten::hardsigmoid", "aten::leaky_relu", "aten::elu", "aten::softmax", "aten::log_softmax",
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::cat",
    "aten::avg_pool2d", "aten::max_pool2d", "aten::adaptive_avg_pool2d", "aten::adaptive_max_pool2d",
    "aten::avg_pool1d", "aten::max_pool1d", "aten::mean", "aten::sum", "aten::amax",
    "aten::flatten", "aten::view", "aten::reshape", "aten::squeeze", "aten::unsqueeze",
    "aten::permute", "aten::transpose", "aten::contiguous", "aten::dropout", "aten::feature_dropout",
    "aten::pad", "aten::constant_pad_nd", "aten::chunk", "aten::split", "aten::slice",
    "aten::select", "aten::size", "aten::expand", "aten::clone", "aten::to", "aten::unflatten",
    "aten::stack", "aten::index", "aten::scaled_dot_product_attention",
    # Ones fvcore's own formulas count although they carry no parameters:
    "aten::upsample_nearest2d", "aten::upsample_bilinear2d", "aten::grid_sampler",
)

Handle = Callable[[list[Any], list[Any]], int]


def _shape(value: Any) -> list[int] | None:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _numel(value: Any) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape is not None else 0


def _batch(outputs: list[Any]) -> int:
    """The output's first dimension: torchinfo multiplies every layer's MACs by it."""
    shape = _shape(outputs[0]) if outputs else None
    return shape[0] if shape else 1


class _Trace:
    """The rules, bound to one trace: which graph inputs are parameters, and what each module ran.

    fvcore traces ``model`` with ``torch.jit._get_trace_graph``, whose graph inputs are the model's
    input, then its state in ``state_dict`` order (each tensor once); that order tells a parameter
    from a buffer, so a product can tell a weight from an activation.
    """

    def __init__(self, model: nn.Module, n_inputs: int = 1) -> None:
        state, seen = [], set()
        for tensor in model.state_dict(keep_vars=True).values():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                state.append(tensor)
        self.n_inputs = n_inputs
        self.is_parameter = [isinstance(t, nn.Parameter) for t in state]
        self.elements = [t.numel() for t in state]
        self.origins: dict[int, frozenset[int] | None] = {}
        #: module name → operator → MACs, zero-cost operators included.
        self.operators: dict[str, dict[str, int]] = {}

    def origin(self, value: Any) -> frozenset[int] | None:
        """The parameters ``value`` is computed from alone (empty: constants and buffers only),
        or None when it depends on the network's input."""
        stack = [value]
        while stack:
            current = stack[-1]
            key = current.unique()
            if key in self.origins:
                stack.pop()
                continue
            node = current.node()
            if node.kind() == "prim::Param":
                index = current.offset() - self.n_inputs
                if index >= len(self.is_parameter):
                    raise RuntimeError("fvcore's trace has more inputs than the model has state: "
                                       "torch traces differently from what this counter expects")
                self.origins[key] = None if index < 0 else (
                    frozenset({index}) if self.is_parameter[index] else frozenset())
                stack.pop()
                continue
            pending = [u for u in node.inputs() if u.unique() not in self.origins]
            if pending:
                stack.extend(pending)
                continue
            found: frozenset[int] | None = frozenset()
            for u in node.inputs():
                upstream = self.origins[u.unique()]
                if upstream is None:
                    found = None
                    break
                found |= upstream
            self.origins[key] = found
            stack.pop()
        return self.origins[value.unique()]

    def recorded(self, kind: str, rule: Handle) -> Handle:
        """``rule`` as an fvcore handle that also notes the MACs under the module that ran it."""

        def handle(inputs: list[Any], outputs: list[Any]) -> int:
            macs = int(rule(inputs, outputs))
            scope = outputs[0].node().scopeName().rsplit("/", 1)[-1] if outputs else ""
            ran = self.operators.setdefault(scope, {})
            ran[kind] = ran.get(kind, 0) + macs
            return macs

        return handle

    def product(self, inputs: list[Any], outputs: list[Any]) -> int:
        operands: list[Any] = []
        for value in inputs:
            if value.node().kind() == "prim::ListConstruct":  # einsum's operands
                operands.extend(value.node().inputs())
            elif _shape(value) is not None:
                operands.append(value)
        weights: set[int] = set()
        for value in operands:
            weights |= self.origin(value) or set()
        return _batch(outputs) * sum(self.elements[i] for i in weights)

    def handles(self) -> dict[str, Handle]:
        rules: dict[str, Handle] = dict.fromkeys(FREE_OPS, _free)
        rules.update(dict.fromkeys(CONVOLUTIONS, _convolution))
        rules.update({kind: _parameters(*at) for kind, at in PARAMETERS_ONCE.items()})
        rules.update(dict.fromkeys(PRODUCTS, self.product))
        return {kind: self.recorded(kind, rule) for kind, rule in rules.items()}


def _convolution(inputs: list[Any], outputs: list[Any]) -> int:
    """(weight + bias elements) × output positions, batch included (torchinfo's rule)."""
    shape = _shape(outputs[0]) or []
    return (_numel(inputs[1]) + _numel(inputs[2])) * math.prod(shape[:1] + shape[2:])


def _parameters(*at: int) -> Handle:
    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        return _batch(outputs) * sum(_numel(inputs[i]) for i in at if i < len(inputs))

    return handle


def _free(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def fvcore_count(model: nn.Module, input_shape: Sequence[int]) -> MacCount:
    """MACs by the DCASE rules from an fvcore trace of ``model`` on zeros of ``input_shape``."""
    from fvcore.nn import FlopCountAnalysis

    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    trace = _Trace(model)
    analysis = FlopCountAnalysis(model, torch.zeros(tuple(input_shape), device=device))
    analysis.set_op_handle(**trace.handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            total = int(analysis.total())
            unknown = analysis.unsupported_ops()
    finally:
        model.train(was_training)
    if unknown:
        raise _no_rule(sorted(unknown), analysis, model)
    by_module = {name: sum(ran.values()) for name, ran in trace.operators.items()}
    return MacCount(total=total, by_module={k: v for k, v in by_module.items() if v},
                    operators=trace.operators)


def _no_rule(kinds: Iterable[str], analysis: Any, model: nn.Module) -> NoCountingRule:
    """Name the first operator without a rule and the innermost module that ran it."""
    kind = next(iter(kinds))
    modules = dict(model.named_modules())
    where = max((name for name in modules if kind in analysis.unsupported_ops(name)),
                key=lambda name: (name.count(".") + bool(name), name), default="")
    place = "the network itself" if where == "" else f"module {where!r}"
    return NoCountingRule(
        f"the fvcore counter has no DCASE rule for operator {kind} (in {place}, "
        f"{type(modules[where]).__name__}), so it cannot check the official count of this "
        "network; a counter never guesses an operator's MACs")


def torchinfo_count(model: nn.Module, input_shape: Sequence[int]) -> MacCount:
    """The official count (``count_complexity``) by module."""
    return official_count(count_complexity(model, input_shape=tuple(input_shape)))


@hookimpl
def asc_mac_counters() -> list[MacCounter]:
    return [
        MacCounter(OFFICIAL_COUNTER, "torchinfo total_mult_adds, as DCASE's nessi: the official "
                   "count, reported and budgeted", torchinfo_count),
        MacCounter("fvcore", "an fvcore trace with the DCASE rules written out per operator; "
                   "refuses an operator it has no rule for", fvcore_count),
    ]
