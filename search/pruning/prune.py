"""Structured pruning: a trained wide network becomes a physically smaller one that fits the budget.

The seed's core trick (train an SSCP-Mobile wider than the budget allows with distillation, prune
its channels down to the budget, distil again) as a plan: an importance metric, a schedule of
pruning steps per stage, a chain of target widths, and KD fine-tuning between steps. Channel
dependencies (residual adds, depthwise groups, factorised branches, the stem) are Torch-Pruning's
dependency graph's job, not hand-written bookkeeping; the head's class outputs are never pruned.
The result's irregular widths are read back into ``ArchSpec.channel_overrides``, so the pruned
network saves, reloads and counts like any other spec.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pluggy
import torch
import torch.nn.functional as F
from torch import nn

from asc_search.architecture import (
    ArchSpec,
    largest_fitting_width,
    network_width_layers,
    network_widths,
    spec_widths,
)
from asc_search.complexity import MAX_MACS, MAX_PARAM_BYTES, ComplexityCard, count_complexity
from asc_search.errors import AscSearchError, PluginError
from asc_search.plugin_types import ImportanceMetric, PruningSchedule, collect_named
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet, Precision, derive_seed, fit, precision_for


class PruningError(AscSearchError):
    """A plan that cannot be carried out (target wider than the network, budget unreachable)."""


def importance_metrics(pm: pluggy.PluginManager) -> dict[str, ImportanceMetric]:
    return collect_named(pm.hook.asc_importance_metrics(), what="importance metric")


def pruning_schedules(pm: pluggy.PluginManager) -> dict[str, PruningSchedule]:
    return collect_named(pm.hook.asc_pruning_schedules(), what="pruning schedule")


@dataclass(frozen=True)
class PruningPlan:
    """What to prune to, by which measure and in how many steps.

    ``chain`` lists the base widths of every stage's target, widest first: ``(64, 32)`` prunes a
    96-wide network to 64, fine-tunes, then to 32 (the seed's S3); each stage lands on every
    layer's width at that base. ``targets`` instead gives each stage's per-layer widths (names as
    in ``ArchSpec.channel_overrides``), for plans whose final network is not a uniform one. Both
    empty: one stage straight to the budget's widest fitting base width (in steps of
    ``round_to``). Every stage takes ``steps`` pruning steps spaced by the schedule, with
    ``finetune_epochs`` of KD after each step and ``final_finetune_epochs`` at the end.
    """

    importance: str = "l2"
    schedule: str = "agp"
    steps: int = 5
    chain: tuple[int, ...] = ()
    targets: tuple[Mapping[str, int], ...] = ()
    max_macs: int = MAX_MACS
    max_param_bytes: int = MAX_PARAM_BYTES
    storage_dtype: str = "float16"
    round_to: int = 8
    finetune_epochs: int = 2
    final_finetune_epochs: int = 10
    #: Optimiser steps of KD after each intermediate step, instead of ``finetune_epochs`` (a
    #: search gives every candidate the same step budget; see ``asc_search.study.budget``).
    finetune_steps: int | None = None
    taylor_batches: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chain": list(self.chain),
                "targets": [dict(sorted(t.items())) for t in self.targets]}


@dataclass
class PruningStep:
    stage: int
    step: int
    macs: int
    params: int
    ratio: float


@dataclass
class PruningResult:
    model: nn.Module
    spec: ArchSpec
    card: ComplexityCard
    steps: list[PruningStep] = field(default_factory=list)


def stage_widths(spec: ArchSpec, base: int, *, pm: pluggy.PluginManager) -> dict[str, int]:
    """Every layer's width in ``spec``'s network family at base width ``base``, no overrides:
    the target of a chain stage (the uniform plans the seed used)."""
    return spec_widths(spec, pm=pm, base=base)


def step_targets(current: Mapping[str, int], target: Mapping[str, int],
                 fractions: Sequence[float]) -> list[dict[str, int]]:
    """Per-layer widths after each step of a stage: the way from ``current`` to ``target``
    spaced by ``fractions`` (0 < f ≤ 1, the last 1), so the last step lands on ``target``."""
    return [{key: current[key] - round(f * (current[key] - target[key])) for key in current}
            for f in fractions]


def prune(
    model: nn.Module,
    spec: ArchSpec,
    plan: PruningPlan,
    *,
    pm: pluggy.PluginManager,
    train: LabelledSet | None = None,
    teacher_logits: np.ndarray | None = None,
    recipe: TrainingRecipe | None = None,
    precision: Precision | None = None,
    progress: bool = True,
    on_step: Callable[[PruningStep], None] | None = None,
) -> PruningResult:
    """Prune ``model`` (built from ``spec``) in place by ``plan``; return it with its new spec.

    Every stage lands exactly on its per-layer target widths (``plan.targets``, else the chain's
    base widths), so the network that comes out is the one that was counted before pruning. With
    ``train`` (and ``teacher_logits`` for KD) every step is followed by a fine-tune; without, the
    network is pruned only (tests, or a user who fine-tunes elsewhere). A result over the budget
    is refused.
    """
    import torch_pruning as tp

    metrics, schedules = importance_metrics(pm), pruning_schedules(pm)
    if plan.importance not in metrics:
        raise PluginError(f"unknown importance metric {plan.importance!r} "
                          f"(known: {', '.join(metrics)})")
    if plan.schedule not in schedules:
        raise PluginError(f"unknown pruning schedule {plan.schedule!r} "
                          f"(known: {', '.join(schedules)})")
    if plan.steps < 1:
        raise PruningError("a pruning plan needs at least one step")
    metric, schedule = metrics[plan.importance], schedules[plan.schedule]
    precision = precision or precision_for("cpu")
    recipe = recipe or TrainingRecipe()
    if plan.targets:
        targets = [dict(t) for t in plan.targets]
    else:
        chain = plan.chain or (_widest_fitting(spec, plan, pm=pm),)
        targets = [stage_widths(spec, base, pm=pm) for base in chain]
    # Scoring, pruning and fine-tuning all happen on the training device; the network moves to
    # the CPU once, at the end, where it is counted, saved and exported.
    device = precision.device
    example = torch.zeros(1, spec.in_channels, 256, 65, device=device)
    steps: list[PruningStep] = []
    card: ComplexityCard | None = None
    current = network_widths(model, spec, pm=pm)
    for stage, target in enumerate(targets, start=1):
        _check_target(current, target)
        # The schedule's shape, scaled to this stage: fractions of the way from current to target.
        ratio = 1.0 - sum(target.values()) / sum(current.values())
        ratios = schedule.ratios(ratio, plan.steps)
        _check_ratios(plan.schedule, ratios, ratio)
        fractions = [min(1.0, r / ratio) for r in ratios[1:]]
        fractions[-1] = 1.0
        model.to(device).to(memory_format=torch.contiguous_format).eval()
        # One dependency graph per stage: it follows the network through its pruning steps.
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        for step, widths in enumerate(step_targets(current, target, fractions), start=1):
            model.to(memory_format=torch.contiguous_format).eval()
            if metric.needs_gradients:
                _accumulate_gradients(model, train, teacher_logits, recipe, plan.taylor_batches,
                                      device=device)
            _prune_to_widths(model, graph, widths, importance=metric.make(),
                             keys=network_width_layers(model, spec, pm=pm))
            model.zero_grad(set_to_none=True)
            card = count_complexity(model, storage_dtype=plan.storage_dtype)
            record = PruningStep(stage, step, card.macs, card.params, ratios[step])
            steps.append(record)
            if on_step is not None:
                on_step(record)
            last = stage == len(targets) and step == plan.steps
            length = plan.finetune_steps if plan.finetune_steps is not None \
                else plan.finetune_epochs
            if train is not None and length > 0 and not last:
                # Each fine-tune draws its own batches: the same seed would replay one order.
                fit(model, train, recipe.with_(epochs=max(1, plan.finetune_epochs), warmup_steps=0,
                                               seed=derive_seed(recipe.seed, stage, step)),
                    steps=plan.finetune_steps, teacher_logits=teacher_logits,
                    precision=precision, progress=progress,
                    label=f"fine-tune stage {stage} step {step}")
                model.to(memory_format=torch.contiguous_format)
        current = target
    assert card is not None
    if train is not None and plan.final_finetune_epochs > 0:
        fit(model, train, recipe.with_(epochs=plan.final_finetune_epochs, warmup_steps=0,
                                       seed=derive_seed(recipe.seed, len(targets) + 1)),
            teacher_logits=teacher_logits, precision=precision, progress=progress,
            label="final fine-tune")
    model.to("cpu").to(memory_format=torch.contiguous_format)
    new_spec = spec.with_(channel_overrides=read_widths(model, spec, pm=pm))
    # Fine-tuning changes weights, not shapes: the last step's count is the final network's.
    if _over(card, plan):
        raise PruningError(
            f"pruned network has {card.macs:,} MACs and {card.param_bytes:,} bytes, over the "
            f"budget of {plan.max_macs:,} / {plan.max_param_bytes:,}; choose a narrower chain target"
        )
    return PruningResult(model=model, spec=new_spec, card=card, steps=steps)


def _check_target(current: Mapping[str, int], target: Mapping[str, int]) -> None:
    """A stage's target names the network's layers, widens none and narrows at least one."""
    if set(target) != set(current):
        missing, extra = sorted(set(current) - set(target)), sorted(set(target) - set(current))
        raise PruningError(f"pruning target does not match the network's layers (missing: "
                           f"{', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})")
    wider = [f"{k} ({target[k]} > {current[k]})" for k in current if target[k] > current[k]]
    if wider:
        raise PruningError(f"pruning cannot widen layers: {', '.join(wider)}")
    if any(target[k] < 1 for k in target):
        raise PruningError("a pruning target keeps at least one channel per layer")
    if target == dict(current):
        raise PruningError(f"the target narrows no layer of the network "
                           f"({_widths_text(current)}): nothing to prune")


def _widths_text(widths: Mapping[str, int], shown: int = 4) -> str:
    items = [f"{name} {width}" for name, width in list(widths.items())[:shown]]
    return ", ".join(items) + (", …" if len(widths) > shown else "")


def _prune_to_widths(model: nn.Module, graph: Any, widths: Mapping[str, int], *,
                     importance: Any, keys: Mapping[nn.Module, str]) -> None:
    """Remove the least important channels of every dependency group until each width name has
    exactly ``widths[name]`` channels.

    Torch-Pruning's dependency graph gives the groups (a residual add couples a stage's output
    with its input, a depthwise convolution with its expansion, a parallel sum its branches) and
    removes a group's channels from every layer it touches; the importance scores the group's
    channels together. The class head keeps all its outputs. An importance that returns no scores
    for a group falls back to the L2 norm: every group must land on its width. ``graph`` is the
    model's ``tp.DependencyGraph``, built once and kept valid by the pruning it carries out.
    """
    import torch_pruning as tp

    fallback = tp.importance.GroupMagnitudeImportance(p=2)
    for group in graph.get_all_groups(ignored_layers=[_head(model)],
                                      root_module_types=[nn.Conv2d]):
        names = {keys[dep.target.module] for dep, _ in group
                 if dep.target.module in keys and graph.is_out_channel_pruning_fn(dep.handler)}
        wanted = {widths[name] for name in names}
        if len(wanted) != 1:
            raise PruningError(f"layers {', '.join(sorted(names))} share their channels (a "
                               f"residual add or a depthwise convolution) but are asked for "
                               f"different widths {sorted(wanted)}")
        root = group[0].dep.target.module
        remove = root.out_channels - wanted.pop()
        if remove <= 0:
            continue
        scores = importance(group)
        if scores is None:
            scores = fallback(group)
        order = torch.argsort(torch.as_tensor(scores, dtype=torch.float64), stable=True)
        group.prune(sorted(order[:remove].tolist()))


def _over(card: ComplexityCard, plan: PruningPlan) -> bool:
    return card.macs > plan.max_macs or card.param_bytes > plan.max_param_bytes


def _widest_fitting(spec: ArchSpec, plan: PruningPlan, *, pm: pluggy.PluginManager) -> int:
    width = largest_fitting_width(spec.with_(channel_overrides={}), pm=pm, max_macs=plan.max_macs,
                                  max_param_bytes=plan.max_param_bytes,
                                  storage_dtype=plan.storage_dtype, step=plan.round_to)
    if width is None:
        raise PruningError("no width of this architecture fits the budget")
    if width >= spec.base_channels:
        raise PruningError(f"the network (base {spec.base_channels}) already fits the budget; "
                           "nothing to prune")
    return width


def _check_ratios(name: str, ratios: Sequence[float], final: float) -> None:
    if (ratios[0] != 0 or not math.isclose(ratios[-1], final, rel_tol=1e-6)
            or any(b < a - 1e-9 for a, b in itertools.pairwise(ratios))):
        raise PluginError(f"pruning schedule {name!r} returned {list(ratios)}: it must start at 0, "
                          f"never decrease, and end at {final:.4f}")


def _head(model: nn.Module) -> nn.Module:
    """The layer producing class scores, which must keep all its outputs."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Sequential):
        return head[0]
    if isinstance(head, nn.Module):
        return head
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return convs[-1]


def _accumulate_gradients(model: nn.Module, train: LabelledSet | None,
                          teacher_logits: np.ndarray | None, recipe: TrainingRecipe,
                          batches: int, *, device: torch.device | None = None) -> None:
    """Fill ``.grad`` for first-order Taylor importance from a few training batches.

    The batches run in training mode, as the gradients of training would, but they are not
    training: batch-norm running statistics are put back afterwards, so scoring channels leaves
    the network exactly as it was apart from ``.grad``. They run on ``device``, where the
    network trains (default: where its parameters are).
    """
    if train is None:
        raise PruningError("the taylor importance needs training data for its gradients")
    device = device or next(model.parameters()).device
    rng = np.random.default_rng(recipe.seed)
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    model.train()
    model.zero_grad(set_to_none=True)
    for _ in range(batches):
        rows = rng.choice(len(train), size=min(recipe.batch_size, len(train)), replace=False)
        logits = model(train.features.batch(rows).to(device))
        labels = torch.from_numpy(train.labels[rows]).to(device)
        if teacher_logits is not None:
            target = torch.from_numpy(np.asarray(teacher_logits[rows],
                                                 dtype=np.float32)).to(device)
            loss = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target, -1), log_target=True,
                            reduction="batchmean")
        else:
            loss = F.cross_entropy(logits, labels)
        loss.backward()
    with torch.no_grad():
        for name, value in model.named_buffers():
            value.copy_(buffers[name])
    model.eval()


def read_widths(model: nn.Module, spec: ArchSpec, *, pm: pluggy.PluginManager) -> dict[str, int]:
    """The pruned network's per-layer widths, under the names ``channel_overrides`` uses.

    Only layers whose width differs from the spec's nominal one are returned, so an unpruned
    network reads back as no overrides.
    """
    nominal = spec_widths(spec.with_(channel_overrides={}), pm=pm)
    found = network_widths(model, spec, pm=pm)
    return {name: value for name, value in found.items() if nominal.get(name) != value}
