"""An independent DCASE counter for cross-checking: an fvcore trace with the rules written out.

asc-search counts with torchinfo, the official counter. This module gets the same figures another
way (a TorchScript trace, one rule per operator) so that a torchinfo upgrade, or a layer it counts
differently, shows up as a disagreement in the tests. Operators without a rule here raise instead
of falling back on fvcore's own FLOP formulas, which is how the first, fvcore-based counter came to
count parameter-free matmul.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

# Parameter-free: zero MACs by the DCASE convention (only layers with parameters count).
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
    # The ones fvcore's defaults count although they carry no parameters:
    "aten::matmul", "aten::bmm", "aten::einsum", "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d", "aten::grid_sampler",
)


def _numel(value: Any) -> int:
    shape = get_shape(value)
    return math.prod(shape) if shape is not None else 0


def _conv(inputs: list[Any], outputs: list[Any]) -> int:
    """(weight + bias elements) × output positions."""
    return (_numel(inputs[1]) + _numel(inputs[2])) * math.prod(get_shape(outputs[0])[2:])


def _params(*indices: int) -> Any:
    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        return sum(_numel(inputs[i]) for i in indices if i < len(inputs))

    return handle


def _free(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


RULES = {
    "aten::_convolution": _conv, "aten::conv1d": _conv, "aten::conv2d": _conv,
    "aten::batch_norm": _params(1, 2), "aten::layer_norm": _params(2, 3),
    "aten::group_norm": _params(2, 3), "aten::linear": _params(1, 2), "aten::addmm": _params(0, 2),
}


def dcase_macs(model: nn.Module, shape: tuple[int, ...] = (1, 1, 256, 65)) -> int:
    """MACs by the DCASE rules from an fvcore trace; an operator with no rule is an error."""
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(shape))
    analysis.set_op_handle(**RULES)
    analysis.set_op_handle(**dict.fromkeys(FREE_OPS, _free))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        total = int(analysis.total())
        unknown = analysis.unsupported_ops()
    if unknown:
        raise AssertionError(f"no DCASE rule in the cross-check for {dict(unknown)}")
    return total


def dcase_conv_macs(model: nn.Module, shape: tuple[int, ...] = (1, 1, 256, 65)) -> int:
    """Only the convolutions' MACs, by the same trace."""
    analysis = FlopCountAnalysis(model.eval(), torch.zeros(shape))
    analysis.set_op_handle(**{op: (_conv if op in ("aten::_convolution", "aten::conv1d",
                                                  "aten::conv2d") else _free)
                              for op in (*RULES, *FREE_OPS)})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        return int(analysis.total())
