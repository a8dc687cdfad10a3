"""CP-ResNet: CP-JKU's receptive-field-regularised residual CNN, as an asc-search student family.

Sources (the architecture is rewritten here from the papers and the published configuration, not
copied):

- K. Koutini, H. Eghbal-zadeh, M. Dorfer, G. Widmer, "The Receptive Field as a Regularizer in
  Deep Convolutional Neural Networks for Acoustic Scene Classification", EUSIPCO 2019
  (arXiv:1907.01803); K. Koutini, H. Eghbal-zadeh, G. Widmer, "Receptive-Field-Regularized CNN
  Variants for Acoustic Scene Classification", DCASE 2019 Workshop (arXiv:1909.02859). Code:
  github.com/kkoutini/cpjku_dcase19 and github.com/kkoutini/cpjku_dcase20, ``models/cp_resnet.py``.
- F. Schmid, S. Masoudian, K. Koutini, G. Widmer, "Distilling Knowledge for Low-Complexity
  Convolutional Neural Networks from a Patchout Audio Transformer", DCASE 2022 Challenge
  technical report (DCASE2022_Schmid_77_t1.pdf), CP-JKU's Task 1 system under the same budgets
  as today's (128 K parameters, 30 M MACs). Code: github.com/CPJKU/cpjku_dcase22,
  ``models/cp/cp_resnet.py`` (``get_model``), ``experiments/dcase22/t1/config_updates.py``
  (named config ``cp_mini_resnet``: blocks (2, 1, 1)) and ``README.md`` (submission commands:
  ``rho=8``, ``s2_group=2``, ``cut_channels_s3=36``).

The network: a 5×5 stride-2 convolution (BN, ReLU) into three stages of basic residual blocks
(3×3 or 1×1 conv → BN → ReLU → 3×3 or 1×1 conv → BN, plus the block's input, ReLU after the
add; a 1×1 conv + BN on the shortcut where a block changes width). Stage 1 opens with a 2×2
max-pool and follows every block with a 2×1 (frequency) max-pool; stages 2 and 3 keep their
resolution. A 1×1 conv to the classes, BN and global average pooling make the logits. No
depthwise or factorised convolution anywhere: structurally unlike CP-Mobile.

**ρ (``rho``) sets the receptive field** by choosing which convolutions are 3×3 and which 1×1,
as the DCASE 2022 ``get_model`` does: counting a block's two convolutions as slots in order,
slot ``4·(stage − 1) + 2·(block − 1) + (conv − 1)`` is 3×3 when ρ reaches it and 1×1 beyond it,
except stage 1's first block, whose second convolution is always 1×1. At ρ = 8 with blocks
(2, 1, 1): stage 1 (3, 1), (3, 3); stage 2 (3, 3); stage 3 (3, 1). The rule is published for
at most two blocks per stage, so this family offers one or two.

Widths: stage k has ``round(base_channels × width_ratios[k])`` channels; the published student
is base 32 with ratios (1, 2, 2.875) (stage 3: 4 × 32 − 36 = 92). Every stage-1 block keeps its
input (the stem's) width, so the stem and stage 1 share the width ``s1``; stages 2 and 3 are
``s2`` and ``s3`` (a block's second convolution and its shortcut); each block's hidden width
(its first convolution's output) is ``b<k>.expand``, the name the engine's ``keep_expand``
ratio narrows (a basic block's hidden width plays the part an inverted bottleneck's expansion
plays in CP-Mobile). Those names are the family's width plan, and a pruned network's irregular
widths are recorded under them in ``ArchSpec.channel_overrides``.

Where this family departs from the published student, and why:

- **No grouped convolutions.** The DCASE 2022 student grouped stage 2's convolutions in two
  (``s2_group=2``). The engine prunes by removing channels from each dependency group, which
  cannot keep a grouped convolution's groups equally wide, so stage 2 is ungrouped here.
- **Storage.** The published student was quantised to int8; the engine counts parameter bytes
  at the study's storage dtype (float16 by default). Grouped as published, the same count gives
  127,684 parameters (under 128 K, as DCASE 2022 required) but 45,981,308 MACs at this
  family's input (1, 1, 256, 65): over 30 M here even so.
- **Initialisation.** Kaiming (fan-in) for every convolution, BN at γ = 1, β = 0; the published
  code adds a Fixup-style rescaling that zeroes each block's second convolution and the head.

So at the DCASE input (1, 1, 256, 65) the published width (base 32, ungrouped) counts
52,862,588 MACs and 156,356 parameters, 312,712 bytes at float16: over both budgets. It is the
preset ``cp-resnet-dcase22``, the wide parent a budget-filling plan prunes. The seed is the
published configuration at the widest base width that fits both budgets at float16, base 20
(``cp-resnet-dcase22-b20``: 21,526,568 MACs, 62,052 parameters, 124,104 bytes; the bytes bind,
base 21 counts 135,622). ``tests/test_example_family.py`` checks these figures, and an
independent fvcore count of the MACs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from asc_search.architecture import ArchSpec, SpecError, family_params

ARCH = "cp_resnet"
#: The stages the published student has; the ρ rule is written for them.
N_STAGES = 3
#: The published rule gives kernel sizes for at most this many blocks per stage.
MAX_BLOCKS = 2


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class CPResNetParams:
    """CP-ResNet's own hyperparameters (``ArchSpec.family``); defaults are the DCASE 2022
    student's (``cp_mini_resnet``, ``rho=8``, ``cut_channels_s3=36``)."""

    #: Receptive-field knob: how many of the block convolutions (in order) are 3×3.
    rho: int = 8
    #: Residual blocks per stage.
    blocks: tuple[int, ...] = (2, 1, 1)
    #: Each stage's width as a multiple of ``base_channels``.
    width_ratios: tuple[float, ...] = field(default=(1.0, 2.0, 2.875))

    def __post_init__(self) -> None:
        rho = _whole("rho", self.rho)
        if rho < 0:
            raise ValueError(f"rho must be ≥ 0, got {rho}")
        if isinstance(self.blocks, str | bytes) or not hasattr(self.blocks, "__iter__"):
            raise TypeError(f"blocks must be a list of {N_STAGES} block counts")
        blocks = tuple(_whole("blocks", b) for b in self.blocks)
        if len(blocks) != N_STAGES or not all(1 <= b <= MAX_BLOCKS for b in blocks):
            raise ValueError(f"blocks must give 1 or 2 blocks for each of the {N_STAGES} stages, "
                             f"got {list(blocks)}")
        if isinstance(self.width_ratios, str | bytes) or not hasattr(self.width_ratios, "__iter__"):
            raise TypeError(f"width_ratios must be a list of {N_STAGES} numbers")
        ratios = []
        for ratio in self.width_ratios:
            if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio > 0:
                raise ValueError(f"width_ratios must be positive numbers, got {ratio!r}")
            ratios.append(float(ratio))
        if len(ratios) != N_STAGES:
            raise ValueError(f"width_ratios must give one ratio per stage ({N_STAGES}), "
                             f"got {len(ratios)}")
        object.__setattr__(self, "rho", rho)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "width_ratios", tuple(ratios))


def kernel_sizes(params: CPResNetParams) -> list[list[tuple[int, int]]]:
    """Per stage, per block, the (first, second) convolution's kernel size under ρ."""

    def size(stage: int, block: int, conv: int) -> int:
        if (stage, block, conv) == (1, 1, 2):
            return 1
        return 3 if params.rho >= 4 * (stage - 1) + 2 * (block - 1) + (conv - 1) else 1

    return [[(size(stage, block, 1), size(stage, block, 2)) for block in range(1, n + 1)]
            for stage, n in enumerate(params.blocks, start=1)]


@dataclass(frozen=True)
class BlockPlan:
    name: str  # global block name: b1, b2, …
    stage: int
    input: str  # width name of the block's input
    output: str  # width name of the block's output (its stage's)
    kernels: tuple[int, int]
    projected: bool  # a 1×1 conv on the shortcut (the block changes width)


@dataclass(frozen=True)
class NetworkPlan:
    widths: dict[str, int]
    blocks: tuple[BlockPlan, ...]


def plan_network(spec: ArchSpec) -> NetworkPlan:
    """Every width and block of ``spec``'s network, before any module exists.

    A shortcut is projected where the nominal widths differ, so a pruned network keeps the
    shortcuts it was trained with; an identity shortcut needs its two widths equal."""
    params = family_params(spec, CPResNetParams)
    if spec.base_channels < 1 or spec.n_classes < 1 or spec.in_channels < 1:
        raise SpecError(f"{ARCH}: base_channels, n_classes and in_channels must be ≥ 1")
    nominal = {f"s{k}": max(1, round(spec.base_channels * ratio))
               for k, ratio in enumerate(params.width_ratios, start=1)}
    blocks: list[BlockPlan] = []
    previous = "s1"  # the stem's output
    for stage, kernels in enumerate(kernel_sizes(params), start=1):
        for pair in kernels:
            name = f"b{len(blocks) + 1}"
            output = f"s{stage}"
            nominal[f"{name}.expand"] = nominal[output]
            blocks.append(BlockPlan(name, stage, previous, output, pair,
                                    nominal[previous] != nominal[output]))
            previous = output
    unknown = sorted(set(spec.channel_overrides) - set(nominal))
    if unknown:
        raise SpecError(f"{ARCH}: channel_overrides name unknown width(s) {', '.join(unknown)} "
                        f"(known: {', '.join(nominal)})")
    bad = sorted(k for k, v in spec.channel_overrides.items() if v < 1)
    if bad:
        raise SpecError(f"{ARCH}: channel_overrides must be ≥ 1 ({', '.join(bad)})")
    widths = {**nominal, **spec.channel_overrides}
    for block in blocks:
        if not block.projected and widths[block.input] != widths[block.output]:
            raise SpecError(f"{ARCH}: {block.name}'s identity shortcut needs {block.input} and "
                            f"{block.output} equally wide, got {widths[block.input]} and "
                            f"{widths[block.output]}")
    return NetworkPlan(widths=widths, blocks=tuple(blocks))


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1,
             padding: int | None = None) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return (nn.Conv2d(cin, cout, kernel, stride=stride,
                      padding=kernel // 2 if padding is None else padding, bias=False),
            nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv → BN → ReLU → conv → BN, plus the (projected) input, then ReLU."""

    def __init__(self, cin: int, hidden: int, cout: int, kernels: tuple[int, int],
                 projected: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, hidden, kernels[0])
        self.conv2, self.bn2 = _conv_bn(hidden, cout, kernels[1])
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1)) if projected else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.shortcut(x))


class CPResNet(nn.Module):
    """The network a CP-ResNet spec describes: (B, 1, mels, frames) log-mels → (B, classes)."""

    def __init__(self, spec: ArchSpec, plan: NetworkPlan) -> None:
        super().__init__()
        widths = plan.widths
        # 5×5, stride 2, padding 1: the published input convolution, padding included.
        self.stem = nn.Sequential(*_conv_bn(spec.in_channels, widths["s1"], 5, stride=2,
                                            padding=1), nn.ReLU())
        self.stages = nn.Sequential()
        for stage in range(1, N_STAGES + 1):
            layers = nn.Sequential()
            if stage == 1:
                layers.add_module("pool0", nn.MaxPool2d(2, 2))
            for block in (b for b in plan.blocks if b.stage == stage):
                layers.add_module(block.name, BasicBlock(
                    widths[block.input], widths[f"{block.name}.expand"], widths[block.output],
                    block.kernels, block.projected))
                if stage == 1:  # frequency-only pooling after every stage-1 block
                    layers.add_module(f"pool_{block.name}", nn.MaxPool2d((2, 1), (2, 1)))
            self.stages.add_module(f"s{stage}", layers)
        self.head = nn.Sequential(nn.Conv2d(widths[f"s{N_STAGES}"], spec.n_classes, 1, bias=False),
                                  nn.BatchNorm2d(spec.n_classes), nn.AdaptiveAvgPool2d((1, 1)))
        self.apply(_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x))).flatten(1)


def _initialise(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build(spec: ArchSpec) -> nn.Module:
    """``Architecture.build``: the network, or a ``SpecError`` naming what cannot be built."""
    return CPResNet(spec, plan_network(spec))


def widths(spec: ArchSpec) -> Mapping[str, int]:
    """``Architecture.widths``: every named width of ``spec``'s network, overrides applied."""
    return dict(plan_network(spec).widths)


def width_layers(model: nn.Module) -> dict[nn.Module, str]:
    """``Architecture.width_layers``: each convolution → the width it produces (the stem and
    every block's second convolution and shortcut: their stage's; a block's first: its
    hidden width). The class head is not listed: it keeps all its outputs."""
    if not isinstance(model, CPResNet):
        raise SpecError(f"a {type(model).__name__} is not a CP-ResNet network")
    layers: dict[nn.Module, str] = {model.stem[0]: "s1"}
    for stage_name, stage in model.stages.named_children():
        for name, block in stage.named_children():
            if not isinstance(block, BasicBlock):
                continue
            layers[block.conv1] = f"{name}.expand"
            layers[block.conv2] = stage_name
            if isinstance(block.shortcut, nn.Sequential):
                layers[block.shortcut[0]] = stage_name
    return layers
