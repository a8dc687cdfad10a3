"""int8 storage: quantisation-aware fine-tuning, real int8 conversion, and what the result takes.

The byte budget counts parameters at their stored size, so a network kept in int8 may hold about
twice the parameters of a float16 one: for a byte-bound search that is a wider network at the
same 128 kB. Rounding every weight to 8 bits costs accuracy unless the network learns with the
rounding in place, so an int8 candidate ends its training with a quantisation-aware KD fine-tune
(``quantization_aware_fit``) and is then converted for real.

The path is PyTorch's maintained one, torchao's PT2E flow: ``torch.export`` the float network
(strict tracing, which records the source modules the quantiser matches; a dynamic batch),
``prepare_qat_pt2e`` with the ``X86InductorQuantizer`` (per-channel symmetric int8 weights,
per-tensor uint8 activations; BatchNorm kept live during QAT and folded at conversion), the
fine-tune through the product's own ``fit``, then ``convert_pt2e``. The converted program holds
each convolution's weights as an int8 constant with its per-channel scales and zero points, and
runs the quantise/dequantise steps a deployment runs: what is evaluated and exported is that
program (``Int8Network``), never the fake-quantised one.

What it takes is counted from the program itself (``stored_bytes``): every constant the graph
reads, at its own dtype, plus ``INT8_BYTES_PER_ACTIVATION`` per activation quantiser, whose scale
and zero point are written into the graph. ``asc_search.complexity.int8_param_bytes`` gives an
upper bound of that from the float network, for the pre-check and budget filling; a test holds
the two together.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asc_search.complexity import DCASE_INPUT_SHAPE, INT8_BYTES_PER_ACTIVATION
from asc_search.errors import AscSearchError
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision, TrainHistory, fit

log = logging.getLogger(__name__)

#: The share of a candidate's last fine-tune given to quantisation-aware training (at least one
#: step): the float network converges first, then learns to live with the rounding.
QAT_SHARE = 0.25
#: The QAT stage's learning rate against the recipe's: it adapts a converged network to the
#: rounding rather than training it again.
QAT_LEARNING_RATE_SCALE = 0.1


class QuantisationError(AscSearchError):
    """A network the int8 path cannot trace or convert."""


def qat_steps(steps: int) -> int:
    """How many of a last fine-tune's ``steps`` an int8 candidate spends quantisation-aware."""
    return min(steps, max(1, math.ceil(steps * QAT_SHARE)))


def fp32_precision(precision: Precision) -> Precision:
    """QAT runs in float32, contiguous, on the training device: fake quantisers are defined on
    float32 tensors."""
    return Precision(precision.device, None, False, False)


#: Where a converted int8 program is scored: on the CPU in float32, where it runs once shipped
#: (the X86 quantiser's program), whatever device trained it.
INT8_PRECISION = Precision(torch.device("cpu"), None, False, False)


class _Exported(nn.Module):
    """A traced program as a module ``fit`` and ``predict`` can drive: ``train()``/``eval()``
    switch the program's BatchNorm and dropout the way torchao says to (an exported program
    refuses the plain calls)."""

    def __init__(self, program: torch.fx.GraphModule) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> _Exported:
        from torchao.quantization.pt2e import (
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.program)
        self.training = mode
        return self


class Int8Network(_Exported):
    """The converted int8 program of a network: what an int8 candidate is scored and shipped as."""

    def train(self, mode: bool = True) -> Int8Network:
        if mode:
            raise QuantisationError("a converted int8 network cannot be trained; fine-tune its "
                                    "float network and convert again")
        return super().train(False)  # type: ignore[return-value]

    @property
    def stored_bytes(self) -> int:
        return stored_bytes(self.program)

    def save(self, path: Path) -> None:
        """Write the program as a ``torch.export`` archive (``.pt2``: no pickle inside)."""
        # Two clips: an example batch of one would fix the batch size at one.
        example = torch.zeros((2, *DCASE_INPUT_SHAPE[1:]))
        program = torch.export.export(self.program, (example,), dynamic_shapes=(_batch_dim(),))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        torch.export.save(program, partial)
        partial.replace(path)


def load_int8(path: Path) -> Int8Network:
    """An ``Int8Network`` saved by ``Int8Network.save``."""
    try:
        program = torch.export.load(path).module()
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise QuantisationError(f"{path}: not a saved int8 network ({exc})") from None
    return Int8Network(program)


def _batch_dim() -> dict[int, torch.export.Dim]:
    return {0: torch.export.Dim("batch", min=1)}


def prepare_qat(model: nn.Module, *, device: torch.device | str = "cpu",
                input_shape: tuple[int, ...] = DCASE_INPUT_SHAPE) -> _Exported:
    """``model`` traced with fake quantisers in place, ready for quantisation-aware training on
    ``device``. The float network is copied, not changed.

    The trace is taken on the CPU, where the converted program will run, and then moved with
    ``torch.export``'s own ``move_to_device_pass``: a traced program keeps the device of every
    tensor its forward creates written into its graph, so ``.to()`` alone would leave those on
    the CPU while the weights go to the accelerator.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    float_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
    example = torch.zeros((2, *input_shape[1:]))  # two clips: BatchNorm traces in training mode
    try:
        exported = torch.export.export(float_model.train(), (example,),
                                       dynamic_shapes=(_batch_dim(),), strict=True)
    except Exception as exc:  # torch.export raises many kinds; all mean the same here
        raise QuantisationError(f"{type(model).__name__} cannot be traced for int8 "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if torch.device(device).type != "cpu":
        from torch.export.passes import move_to_device_pass

        exported = move_to_device_pass(exported, device)
    traced = exported.module()
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True))
    prepared = _Exported(prepare_qat_pt2e(traced, quantizer))
    if not any("fake_quant" in type(m).__name__.lower() or "observer" in type(m).__name__.lower()
               for m in prepared.modules()):
        raise QuantisationError(f"{type(model).__name__}: the quantiser found no layer to "
                                "quantise")
    return prepared


def program_on_cpu(prepared: _Exported) -> None:
    """Bring a prepared program trained on an accelerator back to the CPU for conversion: its
    weights, buffers and constants, and the devices written into its graph (the way back of
    ``prepare_qat``'s move, which ``torch.export`` offers only for an exported program)."""
    program, cpu = prepared.program, torch.device("cpu")
    for node in program.graph.nodes:
        if "device" in node.kwargs:
            node.kwargs = {**node.kwargs, "device": cpu}
        elif node.op == "get_attr":  # a constant the export registered as a plain attribute
            owner, _, leaf = node.target.rpartition(".")
            holder = program.get_submodule(owner) if owner else program
            value = getattr(holder, leaf)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) \
                    and leaf not in holder._buffers:
                setattr(holder, leaf, value.to(cpu))
    program.recompile()
    prepared.to(cpu)


def convert(prepared: _Exported) -> Int8Network:
    """The int8 program of a quantisation-aware trained network (its fake quantisers' scales),
    converted on the CPU, where it runs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    program_on_cpu(prepared)
    prepared.eval()
    return Int8Network(_without_unused(convert_pt2e(prepared.program)))


def _without_unused(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The program less the float weights and statistics conversion left behind unread: the
    graph reads their int8 and folded replacements, but a saved program would carry them."""
    read = {node.target for node in program.graph.nodes if node.op == "get_attr"}
    for name, _ in [*program.named_parameters(), *program.named_buffers()]:
        if name not in read:
            owner, _, leaf = name.rpartition(".")
            delattr(program.get_submodule(owner) if owner else program, leaf)
    program.delete_all_unused_submodules()
    return program


def quantization_aware_fit(model: nn.Module, train: LabelledSet, recipe: TrainingRecipe, *,
                           steps: int, teacher_logits: np.ndarray | None,
                           precision: Precision, progress: bool = False,
                           label: str = "int8 fine-tune") -> tuple[Int8Network, TrainHistory]:
    """Fine-tune ``model`` quantisation-aware for ``steps`` with KD, then convert it to int8.

    ``model`` gets the fine-tuned float weights back (so a later, longer fine-tune continues from
    them, as a float16 candidate continues from its own); the returned network is its int8
    program. The fine-tune uses the recipe at ``QAT_LEARNING_RATE_SCALE`` of its rate, no
    warm-up, in float32 on ``precision``'s device; the program is converted on the CPU and is
    scored there (``INT8_PRECISION``).
    """
    prepared = prepare_qat(model, device=precision.device)
    history = fit(prepared, train, recipe.with_(
        learning_rate=recipe.learning_rate * QAT_LEARNING_RATE_SCALE, warmup_steps=0),
        steps=steps, teacher_logits=teacher_logits, precision=fp32_precision(precision),
        progress=progress, label=label)
    program_on_cpu(prepared)
    _copy_back(prepared, model)
    return convert(prepared), history


def _copy_back(prepared: _Exported, model: nn.Module) -> None:
    """The fine-tuned weights and BatchNorm statistics into the float network (the traced
    program keeps the original names)."""
    own = model.state_dict()
    trained = {name: tensor for name, tensor in prepared.program.state_dict().items()
               if name in own and tensor.shape == own[name].shape}
    missing = sorted(set(own) - set(trained))
    if missing:
        raise QuantisationError(f"the int8 fine-tune lost track of {', '.join(missing[:3])}")
    model.load_state_dict(trained)


def stored_bytes(program: torch.fx.GraphModule) -> int:
    """What a converted program keeps: every constant its graph reads, at its own dtype (int8
    weights, float32 scales and biases, int64 zero points), plus ``INT8_BYTES_PER_ACTIVATION``
    for each activation quantiser (its scale and zero point are written into the graph)."""
    total, seen = 0, set()
    for node in program.graph.nodes:
        if node.op == "get_attr" and node.target not in seen:
            seen.add(node.target)
            value = operator.attrgetter(node.target)(program)
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        elif node.op == "call_function" and "quantize_per_tensor" in str(node.target) \
                and "dequantize" not in str(node.target):
            total += INT8_BYTES_PER_ACTIVATION
    return total
