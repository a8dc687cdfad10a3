"""CP-Mobile and SSCP-Mobile: the DCASE 2024 baseline network and its spatially separable seed.

CP-Mobile (the DCASE 2024 baseline): a stem of two 3×3 stride-2 conv-BN-ReLU layers
(1 → base/4 → base channels), stages of inverted bottleneck blocks (1×1 expand → depthwise 3×3
carrying the stride → 1×1 project, BN after each, ReLU after the first two, a residual add with ReLU
after it when in = out channels, average-pooled when strided), and a head of a 1×1 conv to the
classes, BN and global average pooling. Stage widths are make_divisible(base · multiplier^stage, 8).

SSCP-Mobile (the seed system) replaces 3×3 kernels by 1×3 and 3×1: per stage for the depthwise
convolutions and for the stem, either sequentially (1×3 → 3×1) or as the parallel sum of a 3×1 and a
1×3 branch (the authors' DCASE 2025 form). ``plain`` keeps the 3×3.

Layer names are stable (``stem1``, ``stem2``, ``s1``…, ``b1.expand``…) because pruned networks store
their irregular widths under these names in ``ArchSpec.channel_overrides``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asc_search.architecture import FACTORIZATIONS, Architecture, ArchSpec, SpecError
from asc_search.hookspecs import hookimpl


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor``, never more than 10 % below ``value`` (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn(cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int], *,
             groups: int = 1, relu: bool = True) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ParallelSum(nn.Module):
    """Sum of branches that see the same input (the parallel 3×1 + 1×3 factorisation)."""

    def __init__(self, *branches: nn.Module, relu: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return self.act(out)


def spatial_conv(cin: int, cout: int, stride: tuple[int, int], form: str, *,
                 depthwise: bool) -> nn.Module:
    """A 3×3 conv-BN-ReLU unit in one of the three forms; depthwise when cin == cout == groups."""
    groups = cin if depthwise else 1
    if form == "plain":
        return _conv_bn(cin, cout, (3, 3), stride, groups=groups)
    if form == "sequential":
        freq_stride, time_stride = stride
        return nn.Sequential(
            *_conv_bn(cin, cout, (1, 3), (1, time_stride), groups=groups, relu=False),
            *_conv_bn(cout, cout, (3, 1), (freq_stride, 1), groups=cout if depthwise else 1),
        )
    if form == "parallel":
        if depthwise:
            return ParallelSum(_conv_bn(cin, cout, (3, 1), stride, groups=groups),
                               _conv_bn(cin, cout, (1, 3), stride, groups=groups))
        freq_stride, time_stride = stride
        return ParallelSum(
            nn.Sequential(*_conv_bn(cin, cout, (3, 1), (freq_stride, 1), relu=False),
                          *_conv_bn(cout, cout, (1, 3), (1, time_stride), relu=False)),
            nn.Sequential(*_conv_bn(cin, cout, (1, 3), (1, time_stride), relu=False),
                          *_conv_bn(cout, cout, (3, 1), (freq_stride, 1), relu=False)),
            relu=True,
        )
    raise SpecError(f"factorization {form!r}: unknown, choose one of {', '.join(FACTORIZATIONS)}")


class InvertedBottleneck(nn.Module):
    """1×1 expand → depthwise 3×3 (or its factorisation) with the stride → 1×1 project (+ shortcut)."""

    def __init__(self, cin: int, expanded: int, cout: int, stride: tuple[int, int], form: str,
                 residual: bool) -> None:
        super().__init__()
        self.expand = _conv_bn(cin, expanded, (1, 1), (1, 1))
        self.depthwise = spatial_conv(expanded, expanded, stride, form, depthwise=True)
        self.project = _conv_bn(expanded, cout, (1, 1), (1, 1), relu=False)
        self.residual = residual
        if residual and stride != (1, 1):
            self.shortcut: nn.Module = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.residual:
            out = out + self.shortcut(x)
        return self.act(out)


class MobileNet(nn.Module):
    """The CP-Mobile family network a spec describes; input (B, 1, mels, frames), output logits."""

    def __init__(self, spec: ArchSpec, plan: NetworkPlan) -> None:
        super().__init__()
        self.spec = spec
        self.stem = nn.Sequential(
            spatial_conv(spec.in_channels, plan.widths["stem1"], (2, 2), spec.stem_factorization,
                         depthwise=False),
            spatial_conv(plan.widths["stem1"], plan.widths["stem2"], (2, 2),
                         spec.stem_factorization, depthwise=False),
        )
        self.stages = nn.Sequential()
        for stage_index, blocks in enumerate(plan.blocks, start=1):
            stage = nn.Sequential()
            for block in blocks:
                stage.add_module(block.name, InvertedBottleneck(
                    plan.widths[block.input], plan.widths[f"{block.name}.expand"],
                    plan.widths[block.output], block.stride, block.form, block.residual,
                ))
            self.stages.add_module(f"s{stage_index}", stage)
        last = plan.widths[f"s{len(plan.blocks)}"]
        self.head = nn.Sequential(
            nn.Conv2d(last, spec.n_classes, kernel_size=1, bias=False),
            nn.BatchNorm2d(spec.n_classes),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.apply(_initialise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x))).flatten(1)


def _initialise(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class BlockPlan:
    name: str  # global block name: b1, b2, …
    input: str  # width key of the block's input: stem2 or s<k>
    output: str  # width key of the block's output: s<k>
    stride: tuple[int, int]
    form: str
    residual: bool


@dataclass(frozen=True)
class NetworkPlan:
    """Every layer width and block of a spec, before any module exists."""

    widths: dict[str, int]
    blocks: tuple[tuple[BlockPlan, ...], ...]


def plan_network(spec: ArchSpec) -> NetworkPlan:
    """Compute widths and blocks; residual adds come from the nominal widths, so a pruned network
    (whose overrides could make unequal widths equal by chance) keeps the shortcuts it was trained
    with."""
    _validate(spec)
    base = make_divisible(spec.base_channels, 8)
    nominal = {"stem1": base // 4, "stem2": base}
    for stage in range(len(spec.n_blocks)):
        nominal[f"s{stage + 1}"] = make_divisible(base * spec.channels_multiplier**stage, 8)
    stages, count, previous = [], 0, "stem2"
    for stage, n_blocks in enumerate(spec.n_blocks, start=1):
        blocks = []
        for _ in range(n_blocks):
            count += 1
            name = f"b{count}"
            nominal[f"{name}.expand"] = make_divisible(nominal[previous] * spec.expansion_rate, 8)
            stride = tuple(spec.strides.get(name, (1, 1)))
            blocks.append(BlockPlan(name, previous, f"s{stage}", stride,
                                    spec.factorization[stage - 1],
                                    nominal[previous] == nominal[f"s{stage}"]))
            previous = f"s{stage}"
        stages.append(tuple(blocks))
    unknown = sorted(set(spec.channel_overrides) - set(nominal))
    if unknown:
        raise SpecError(f"channel_overrides name unknown layer(s): {', '.join(unknown)}")
    widths = {**nominal, **spec.channel_overrides}
    for blocks in stages:
        for block in blocks:
            if block.residual and widths[block.input] != widths[block.output]:
                raise SpecError(f"{block.name}: residual add needs {block.input} and {block.output} "
                                f"equally wide, got {widths[block.input]} and {widths[block.output]}")
    return NetworkPlan(widths=widths, blocks=tuple(stages))


def _validate(spec: ArchSpec) -> None:
    if spec.base_channels < 8 or spec.n_classes < 1 or spec.in_channels < 1:
        raise SpecError("base_channels must be ≥ 8 and n_classes, in_channels ≥ 1")
    if spec.channels_multiplier <= 0 or spec.expansion_rate <= 0:
        raise SpecError("channels_multiplier and expansion_rate must be positive")
    if not spec.n_blocks or any(n < 1 for n in spec.n_blocks):
        raise SpecError(f"n_blocks {list(spec.n_blocks)}: every stage needs at least one block")
    if len(spec.factorization) != len(spec.n_blocks):
        raise SpecError(f"factorization has {len(spec.factorization)} entries for "
                        f"{len(spec.n_blocks)} stages")
    for form in (spec.stem_factorization, *spec.factorization):
        if form not in FACTORIZATIONS:
            raise SpecError(f"factorization {form!r}: unknown, choose one of {', '.join(FACTORIZATIONS)}")
    total = sum(spec.n_blocks)
    for name, stride in spec.strides.items():
        if not (name.startswith("b") and name[1:].isdigit() and 1 <= int(name[1:]) <= total):
            raise SpecError(f"strides name block {name!r}, but blocks are b1…b{total}")
        if len(stride) != 2 or min(stride) < 1:
            raise SpecError(f"stride of {name} must be two positive integers, got {list(stride)}")
    for name, width in spec.channel_overrides.items():
        if width < 1:
            raise SpecError(f"channel_overrides[{name!r}] must be ≥ 1, got {width}")


def spec_widths(spec: ArchSpec) -> dict[str, int]:
    """The family's width plan for the engine (``Architecture.widths``): every named width,
    overrides applied. A stage's blocks share their output width (the residual adds), and a
    block's expansion is one width for its 1×1 expand and its depthwise convolution."""
    return dict(plan_network(spec).widths)


def width_layers(model: nn.Module) -> dict[nn.Module, str]:
    """Every convolution of a family network → the width name (as in ``channel_overrides``) of
    the channels it produces: the stem units, each block's expansion (its 1×1 expand and
    depthwise convolutions) and each stage's output (its projections)."""
    stem, stages = getattr(model, "stem", None), getattr(model, "stages", None)
    if stem is None or stages is None:
        raise SpecError(f"a {type(model).__name__} is not a CP-Mobile-family network")
    keys: dict[nn.Module, str] = {}

    def claim(unit: nn.Module, key: str) -> None:
        keys.update({m: key for m in unit.modules() if isinstance(m, nn.Conv2d)})

    claim(stem[0], "stem1")
    claim(stem[1], "stem2")
    for stage_name, stage in stages.named_children():
        for block_name, block in stage.named_children():
            claim(block.expand, f"{block_name}.expand")
            claim(block.depthwise, f"{block_name}.expand")
            claim(block.project, stage_name)
    return keys


def build_cp_mobile(spec: ArchSpec) -> nn.Module:
    if spec.stem_factorization != "plain" or set(spec.factorization) != {"plain"}:
        raise SpecError("cp_mobile uses plain 3×3 convolutions; use sscp_mobile to factorise them")
    return MobileNet(spec, plan_network(spec))


def build_sscp_mobile(spec: ArchSpec) -> nn.Module:
    return MobileNet(spec, plan_network(spec))


DCASE_BASELINE = ArchSpec()


def _seed(base: int) -> ArchSpec:
    """The seed's SSCP-Mobile at a given base width (its pruning starts wide and ends at 32).

    Depthwise 3×3s become 1×3 → 3×1; the stem stays 3×3: at base 32 that is 60,652 parameters and
    28.7 M MACs, where the seed's pruned systems report 63.2–63.9 k and 29.2–30.0 M. A factorised
    stem would cost 31.9 M (sequential) or 37.8 M (parallel) MACs at base 32, over the budget.
    """
    return ArchSpec(arch="sscp_mobile", base_channels=base, stem_factorization="plain",
                    factorization=("sequential", "sequential", "sequential"))


@hookimpl
def asc_architectures() -> list[Architecture]:
    return [
        Architecture(
            name="cp_mobile",
            description="CP-Mobile, the DCASE 2024 Task 1 baseline (plain 3×3 convolutions)",
            build=build_cp_mobile,
            presets={"dcase-baseline": DCASE_BASELINE},
            widths=spec_widths,
            width_layers=width_layers,
        ),
        Architecture(
            name="sscp_mobile",
            description="SSCP-Mobile: CP-Mobile with 3×3 kernels factorised per stage and in the stem",
            build=build_sscp_mobile,
            presets={
                # The DCASE24 seed systems (SJTU-THU): trained wide, pruned to base 32.
                "seed-s1-start": _seed(64),
                "seed-s2-start": _seed(96),
                "seed-s3-start": _seed(96),
                "seed-s3-middle": _seed(64),
                "seed-final": _seed(32),
            },
            widths=spec_widths,
            width_layers=width_layers,
        ),
    ]
