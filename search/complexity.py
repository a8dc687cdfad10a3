"""Counting MACs and parameter bytes exactly as DCASE Task 1 counts them.

The challenge's official counter (``nessi``) is torchinfo's ``total_mult_adds`` / ``total_params`` on
the model without its front-end, input [1, 1, 256, 65]. Its rules: a convolution costs
(weight + bias elements) × output positions; any other layer with parameters (BatchNorm, Linear,
LayerNorm, …) costs its parameter count once (BatchNorm: 2·C); layers without parameters (ReLU,
pooling, adds) cost nothing; running statistics are buffers, not parameters. Raw fvcore counts
differently (BatchNorm per element, adaptive pooling, no bias), so this module traces with fvcore
and replaces its per-operator rules with the DCASE ones. Operators that carry parameters but have
no DCASE rule here (recurrent layers, say) are reported, never silently counted as zero.

thop is kept as an independent cross-check of the convolution MACs.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from asc_search.errors import AscSearchError

DCASE_INPUT_SHAPE: tuple[int, ...] = (1, 1, 256, 65)
MAX_MACS = 30_000_000
MAX_PARAM_BYTES = 128_000
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}

# Parameter-free operators: zero by the DCASE convention (torchinfo counts only parametrised layers).
_FREE_OPS = (
    "aten::relu", "aten::relu_", "aten::relu6", "aten::hardtanh", "aten::hardtanh_", "aten::gelu",
    "aten::silu", "aten::silu_", "aten::sigmoid", "aten::sigmoid_", "aten::tanh", "aten::hardswish",
    "aten::hardsigmoid", "aten::leaky_relu", "aten::elu", "aten::softmax", "aten::log_softmax",
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::cat",
    "aten::avg_pool2d", "aten::max_pool2d", "aten::adaptive_avg_pool2d", "aten::adaptive_max_pool2d",
    "aten::avg_pool1d", "aten::max_pool1d", "aten::mean", "aten::sum", "aten::amax",
    "aten::flatten", "aten::view", "aten::reshape", "aten::squeeze", "aten::unsqueeze",
    "aten::permute", "aten::transpose", "aten::contiguous", "aten::dropout", "aten::feature_dropout",
    "aten::pad", "aten::constant_pad_nd", "aten::upsample_nearest2d", "aten::chunk", "aten::split",
    "aten::slice", "aten::select", "aten::size", "aten::expand", "aten::clone", "aten::to",
    "aten::unflatten", "aten::scaled_dot_product_attention", "aten::stack", "aten::index",
)


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
    """What DCASE asks a submission to report, plus what could not be counted."""

    macs: int
    params: int
    param_bytes: int
    storage_dtype: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerCount, ...] = ()
    uncounted_ops: dict[str, int] = field(default_factory=dict)

    def fits(self, *, max_macs: int = MAX_MACS, max_param_bytes: int = MAX_PARAM_BYTES) -> bool:
        return self.macs <= max_macs and self.param_bytes <= max_param_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "storage_dtype": self.storage_dtype,
            "input_shape": list(self.input_shape),
            "uncounted_ops": dict(self.uncounted_ops),
        }


def _numel(value: torch._C.Value) -> int:
    shape = get_shape(value)
    return math.prod(shape) if shape is not None else 0


def _conv_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """(weight + bias elements) × output positions, per clip (batch excluded)."""
    out_shape = get_shape(outputs[0])
    positions = math.prod(out_shape[2:])
    return (_numel(inputs[1]) + _numel(inputs[2])) * positions


def _param_inputs(*indices: int) -> Any:
    """A handle counting the named inputs' elements once: torchinfo's rule for non-conv layers."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        del outputs
        return sum(_numel(inputs[i]) for i in indices if i < len(inputs))

    return handle


def _free(inputs: list[Any], outputs: list[Any]) -> int:
    del inputs, outputs
    return 0


_HANDLES: dict[str, Any] = {
    "aten::_convolution": _conv_macs,
    "aten::conv1d": _conv_macs,
    "aten::conv2d": _conv_macs,
    "aten::batch_norm": _param_inputs(1, 2),  # weight, bias (running stats are buffers)
    "aten::group_norm": _param_inputs(2, 3),
    "aten::layer_norm": _param_inputs(2, 3),
    "aten::instance_norm": _param_inputs(1, 2),
    "aten::linear": _param_inputs(1, 2),
    "aten::addmm": _param_inputs(0, 2),  # bias, x, weightᵀ
    "aten::prelu": _param_inputs(1),
}


def _analysis(model: nn.Module, example: torch.Tensor) -> FlopCountAnalysis:
    analysis = FlopCountAnalysis(model, example)
    analysis.set_op_handle(**_HANDLES)
    # A zero handle, not None: fvcore keeps its own default handle (e.g. for adaptive pooling)
    # when an op is merely marked ignored.
    analysis.set_op_handle(**dict.fromkeys(_FREE_OPS, _free))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_complexity(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...] = DCASE_INPUT_SHAPE,
    storage_dtype: str = "float16",
    per_layer: bool = False,
) -> ComplexityCard:
    """Count ``model`` (without front-end) on one input of ``input_shape`` the DCASE way.

    ``storage_dtype`` is the dtype the submission stores parameters in (DCASE: 16-bit, so 2 bytes
    each); it only affects ``param_bytes``. The model is traced in eval mode on a copy-free path and
    left in the mode it was in.
    """
    if storage_dtype not in DTYPE_BYTES:
        raise AscSearchError(
            f"storage dtype {storage_dtype!r}: unknown, choose one of {', '.join(DTYPE_BYTES)}"
        )
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        example = torch.zeros(input_shape, device=device)
        with torch.no_grad():
            analysis = _analysis(model, example)
            macs = int(analysis.total())
            by_module = analysis.by_module() if per_layer else {}
            uncounted = {op: n for op, n in sorted(analysis.unsupported_ops().items())}
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    layers: tuple[LayerCount, ...] = ()
    if per_layer:
        layers = tuple(
            LayerCount(name=name, kind=type(module).__name__,
                       params=sum(p.numel() for p in module.parameters(recurse=False)),
                       macs=int(by_module.get(name, 0)))
            for name, module in model.named_modules()
            if any(True for _ in module.parameters(recurse=False))
        )
    return ComplexityCard(
        macs=macs,
        params=params,
        param_bytes=params * DTYPE_BYTES[storage_dtype],
        storage_dtype=storage_dtype,
        input_shape=tuple(input_shape),
        layers=layers,
        uncounted_ops=uncounted,
    )


def thop_conv_macs(model: nn.Module, *, input_shape: tuple[int, ...] = DCASE_INPUT_SHAPE) -> int:
    """Convolution MACs according to thop, an independent counter, for cross-checking.

    thop's rule is output elements × (C_in / groups) × kernel elements; it ignores biases, so the
    bias term (bias × output positions) is added here to compare like with like.
    """
    from thop import profile
    from thop.vision.basic_hooks import count_convNd

    seen: list[float] = []

    def conv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        before = float(module.total_ops.item())
        count_convNd(module, inputs, output)
        bias = module.bias.numel() * math.prod(output.shape[2:]) if module.bias is not None else 0
        seen.append(float(module.total_ops.item()) - before + bias)

    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        profile(probe, inputs=(torch.zeros(input_shape),), verbose=False,
                custom_ops={nn.Conv1d: conv_hook, nn.Conv2d: conv_hook})
    return int(sum(seen))


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
    "DCASE_INPUT_SHAPE", "MAX_MACS", "MAX_PARAM_BYTES", "BudgetError", "ComplexityCard",
    "LayerCount", "count_complexity", "format_count", "parse_budget", "thop_conv_macs",
]
