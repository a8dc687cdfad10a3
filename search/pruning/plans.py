"""Pruning plans: the network a candidate trains first and the widths it is pruned through.

Two kinds. A uniform plan (the seed's) samples the final base width and a width ratio; it trains
at ratio × the final width and prunes through evenly spaced base widths (``wide_and_chain``).
A budget-filling plan samples a parent, relative per-layer widths, and is scaled to the largest
network that fits (below).

Why the second: uniform plans sampled 40 % of candidates that broke a
budget and were never trained, while many feasible ones used 10–20 M of the 30 M MACs a DCASE
entry may spend. A parent-based plan samples instead *which* wide network to start from (a
``parent``: one of a few architecture presets, so parents are trained once and shared,
``asc_search.parents.store``) and *how* to narrow it: keep ratios for the stem, each stage's output and
the blocks' expansions. Settling the plan scales those ratios by one factor, found by bisection,
to the largest network that fits both the MACs and the bytes budget; every layer's width is
``round(parent width × keep ratio × scale)``, at least ``MIN_WIDTH`` and at most the parent's. So every
sampled candidate fills the budget, and pruning (which lands exactly on per-layer widths) makes
the network that was counted. A parent that fits as it is, is trained as it is.

``macs_fraction`` (when a space samples it) fills a fraction of the MACs budget instead, for the
Pareto mode, where candidates should spread over MACs rather than all sit at the wall.

Seed trials are not filled: the seed's S1–S3 are uniform plans to base 32 (their keep ratios
place them in the space for the sampler, 0.5 and 1/3), so ``settle`` trains them as the seed
defined them and the comparison with the hand-made plans stays a comparison with those plans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pluggy

from asc_search.architecture import ArchSpec, build_model
from asc_search.complexity import ComplexityCard, count_complexity
from asc_search.errors import AscSearchError
from asc_search.pruning.prune import stage_widths, step_targets
from asc_search.study.space import Candidate, SearchSpace


class PlanError(AscSearchError):
    """A plan that cannot be trained as given (a parent-based plan not yet settled)."""


#: Keep-ratio dimensions and the width names they act on (``s1`` also sets ``stem2``: block b1's
#: residual add ties the two together).
KEEP_DIMENSIONS = ("keep_stem", "keep_s1", "keep_s2", "keep_s3", "keep_s4", "keep_expand")
#: The narrowest a filled layer may become: below it a network of one-channel layers would "fit"
#: any budget, and a budget that only such a network meets should be refused, not searched.
MIN_WIDTH = 4
#: Bisection steps on the scale: 2⁻¹⁶ of the range, finer than one channel of a 1,000-wide layer.
SCALE_STEPS = 16


def keep_dimension(width_name: str) -> str:
    """The keep-ratio dimension that narrows the layer called ``width_name``."""
    if width_name == "stem1":
        return "keep_stem"
    if width_name == "stem2":
        return "keep_s1"
    if width_name.endswith(".expand"):
        return "keep_expand"
    return f"keep_{width_name}"  # s1, s2, …


def scaled_widths(parent: Mapping[str, int], keep: Mapping[str, float],
                  scale: float) -> dict[str, int]:
    """Every layer's width at ``scale``: parent width × keep ratio × scale, within
    [``MIN_WIDTH``, parent]."""
    return {name: min(width, max(MIN_WIDTH, round(width * keep[name] * scale)))
            for name, width in parent.items()}


def settle(candidate: Candidate, *, pm: pluggy.PluginManager, max_macs: int,
           max_param_bytes: int, storage_dtype: str = "float16",
           seed_trial: bool = False) -> Candidate:
    """The trainable candidate of a parent-based plan (see the module docstring); any other
    candidate is returned as it is."""
    if not candidate.unsettled:
        return candidate
    # A space that searches the storage dtype fills each candidate's budget at its own.
    storage_dtype = str(candidate.plan.get("storage", storage_dtype))
    parent = candidate.spec
    nominal = stage_widths(parent, parent.base_channels, pm=pm)
    plan = dict(candidate.plan)
    keep = {name: float(plan.get(keep_dimension(name), 1.0)) for name in nominal}
    if seed_trial:
        # As the seed defined it: the family's widths at each base width of its chain.
        final = uniform_final(parent, keep, pm=pm)
        uniform = Candidate(spec=parent.with_(base_channels=final["stem2"]), plan={
            **plan, "prune_width_ratio": parent.base_channels / final["stem2"]})
        targets = [stage_widths(parent, base, pm=pm) for base in wide_and_chain(uniform)[1]]
    else:
        macs_budget = int(max_macs * float(plan.get("macs_fraction", 1.0)))
        final, scale = filled_widths(parent, nominal, keep, pm=pm, max_macs=macs_budget,
                                     max_param_bytes=max_param_bytes,
                                     storage_dtype=storage_dtype)
        plan["fill_scale"] = round(scale, 5)
        stages = int(plan.get("prune_stages", 1))
        targets = []
        if final != nominal:  # each stage a further share of the way, per layer
            for widths in step_targets(nominal, final,
                                       [k / stages for k in range(1, stages + 1)]):
                if not targets or widths != targets[-1]:
                    targets.append(widths)
    spec = parent.with_(channel_overrides={k: v for k, v in final.items() if nominal[k] != v})
    return Candidate(spec=spec, plan=plan, training=candidate.training, parent=parent,
                     targets=tuple(targets))


def uniform_final(parent: ArchSpec, keep: Mapping[str, float], *,
                  pm: pluggy.PluginManager) -> dict[str, int]:
    """A seed plan's final widths: the parent's family at base ``parent base × keep_s1``
    (rounded to 8), every layer as the architecture computes it at that base."""
    base = max(8, round(parent.base_channels * keep["stem2"] / 8) * 8)
    return stage_widths(parent, min(base, parent.base_channels), pm=pm)


def filled_widths(parent: ArchSpec, nominal: Mapping[str, int], keep: Mapping[str, float], *,
                  pm: pluggy.PluginManager, max_macs: int, max_param_bytes: int,
                  storage_dtype: str) -> tuple[dict[str, int], float]:
    """The widths at the largest scale that fits both budgets, and that scale.

    Widths grow with the scale and complexity with the widths, so a bisection needs
    ``SCALE_STEPS`` counts. At the scale where every layer reaches its parent width the parent
    itself is the answer when it fits; when not even ``MIN_WIDTH`` channels per layer fit, the
    narrowest network is returned and the pre-check reports it over budget.
    """

    def fits(widths: Mapping[str, int]) -> bool:
        card = count_widths(parent, widths, pm=pm, storage_dtype=storage_dtype)
        return card.macs <= max_macs and card.param_bytes <= max_param_bytes

    full = 1.0 / min(keep.values())
    if fits(dict(nominal)):
        return dict(nominal), full
    low, high = 0.0, full
    for _ in range(SCALE_STEPS):
        middle = (low + high) / 2
        if fits(scaled_widths(nominal, keep, middle)):
            low = middle
        else:
            high = middle
    return scaled_widths(nominal, keep, low), low


def count_widths(parent: ArchSpec, widths: Mapping[str, int], *, pm: pluggy.PluginManager,
                 storage_dtype: str = "float16") -> ComplexityCard:
    """The DCASE count of ``parent``'s network narrowed to ``widths``."""
    nominal = stage_widths(parent, parent.base_channels, pm=pm)
    spec = parent.with_(channel_overrides={k: v for k, v in widths.items() if nominal[k] != v})
    return count_complexity(build_model(spec, pm=pm), storage_dtype=storage_dtype)


def candidate_of(space: SearchSpace, values: Mapping[str, object], *, pm: pluggy.PluginManager,
                 max_macs: int, max_param_bytes: int, storage_dtype: str = "float16",
                 seed_trial: bool = False) -> Candidate:
    """The trainable candidate of a trial's dimension values: the one rule the search, the
    promotion, ``parents build`` and the benchmarks all apply, so a trial means the same network
    everywhere."""
    return settle(space.candidate(values), pm=pm, max_macs=max_macs,
                  max_param_bytes=max_param_bytes, storage_dtype=storage_dtype,
                  seed_trial=seed_trial)


def smallest_settled(space: SearchSpace, *, pm: pluggy.PluginManager,
                     storage_dtype: str = "float16") -> tuple[Candidate, ComplexityCard] | None:
    """For a parent-based space, its narrowest network (every layer ``MIN_WIDTH`` channels, or
    its parent's width where that is narrower): what a run checks the budget against. None for
    other spaces."""
    names = next((d.choices for d in space.dimensions if d.name == "parent"),
                 (space.fixed["parent"],) if "parent" in space.fixed else ())
    if not names:
        return None
    best: tuple[Candidate, ComplexityCard] | None = None
    for name in names:
        candidate = space.candidate({"parent": name}) if "parent" not in space.fixed \
            else space.candidate({})
        parent = candidate.spec
        tiny = {k: min(w, MIN_WIDTH) for k, w in stage_widths(parent, parent.base_channels, pm=pm).items()}
        card = count_widths(parent, tiny, pm=pm, storage_dtype=storage_dtype)
        if best is None or (card.macs, card.param_bytes) < (best[1].macs, best[1].param_bytes):
            best = candidate, card
    return best


def wide_and_chain(candidate: Candidate) -> tuple[ArchSpec, tuple[int, ...]]:
    """The network to train first and the widths to prune it through.

    ``prune_width_ratio`` r trains at r × the final base width (rounded up to 8); ``prune_stages``
    s spaces s targets evenly from there down to the final width (s = 2 for 96 → 64 → 32).
    Targets are rounded to multiples of 8 and repeats dropped, so a narrow gap gives fewer
    stages than asked (40 → 32 in 3 stages is one stage): the chain, not ``prune_stages``, says
    how many stages ran, and the step budget is divided by the chain's length. The last stage
    lands on the final width itself, a multiple of 8 or not, and a ratio of 1 trains the
    network as it is: a reference or another family's preset may have any base width (20).
    """
    final = candidate.spec
    ratio = float(candidate.plan.get("prune_width_ratio", 1.0))
    stages = int(candidate.plan.get("prune_stages", 1))
    wide_base = int(math.ceil(final.base_channels * ratio / 8) * 8)
    if ratio <= 1.0 or wide_base <= final.base_channels:
        return final, ()
    chain = []
    for k in range(1, stages):  # the stages before the last, strictly between wide and final
        width = final.base_channels + (wide_base - final.base_channels) * (stages - k) / stages
        width = int(round(width / 8) * 8)
        if (not chain or width < chain[-1]) and final.base_channels < width < wide_base:
            chain.append(width)
    chain.append(final.base_channels)
    return final.with_(base_channels=wide_base), tuple(chain)


def pruning_path(candidate: Candidate, *,
                 pm: pluggy.PluginManager) -> tuple[ArchSpec, tuple[dict[str, int], ...]]:
    """The network to train first and every pruning stage's per-layer target widths.

    A settled parent-based plan (``asc_search.pruning.plans``) carries both; a uniform plan's
    targets are its family's widths at each base width of ``wide_and_chain``. No targets: the
    candidate is trained as it is.
    """
    if candidate.unsettled:
        raise PlanError("a parent-based plan must be settled (plans.settle) before "
                             "it is trained")
    if candidate.parent is not None:
        return candidate.parent, tuple(dict(t) for t in candidate.targets)
    wide, chain = wide_and_chain(candidate)
    return wide, tuple(stage_widths(wide, base, pm=pm) for base in chain)
