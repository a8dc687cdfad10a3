"""The built-in search-space dimensions: architecture fields, the pruning plan, the training recipe.

Registered through ``asc_space_dimensions`` like any plugin's. Every ``TrainingRecipe`` field is a
"training" dimension, so a space can search augmentation strengths or the KD weight.
"""

from __future__ import annotations

from typing import Any

from asc_search.architecture import FACTORIZATIONS, architectures, presets
from asc_search.hookspecs import hookimpl
from asc_search.plugin_types import DimensionInfo
from asc_search.pruning.prune import importance_metrics, pruning_schedules
from asc_search.study.budget import FINAL_SHARES
from asc_search.study.space import PARENTS_AS_IS

MAX_STAGES = 4


def _pruned(values: Any) -> bool:
    """The plan prunes only when it trains wider than the final width: a uniform plan with a
    ratio above 1, or a parent-based one (``asc_search.pruning.plans``), which narrows its parent
    to the budget unless the parent fits as it is (a space under a study's budgets names those
    parents, ``SearchSpace.under_budgets``)."""
    parent = values.get("parent")
    if parent is not None:
        return parent not in values.get(PARENTS_AS_IS, ())
    return float(values.get("prune_width_ratio", 1.0)) > 1.0


def _stepped(values: Any) -> bool:
    """Steps per stage matter only for a pruned plan whose schedule is not one-shot."""
    return _pruned(values) and values.get("schedule", "agp") != "one_shot"


def _set_stage(stage: int) -> Any:
    def apply(spec_fields: dict[str, Any], value: Any) -> None:
        forms = list(spec_fields.get("factorization", ()))
        forms += ["plain"] * (stage - len(forms))
        forms[stage - 1] = value
        spec_fields["factorization"] = forms

    return apply


@hookimpl
def asc_space_dimensions() -> list[DimensionInfo]:
    factorizations = lambda pm: FACTORIZATIONS  # noqa: E731
    spec = [
        DimensionInfo("arch", "spec", "architecture plugin name",
                      allowed=lambda pm: tuple(architectures(pm))),
        DimensionInfo("base_channels", "spec",
                      "final (post-pruning) base width; stage widths follow the multiplier"),
        DimensionInfo("channels_multiplier", "spec", "width growth per stage"),
        DimensionInfo("expansion_rate", "spec", "inverted-bottleneck expansion"),
        DimensionInfo("n_blocks", "spec", "blocks per stage, e.g. [3, 2, 1]"),
        DimensionInfo("stem_factorization", "spec", "stem 3×3: plain, sequential or parallel",
                      allowed=factorizations),
    ]
    stages = [
        DimensionInfo(f"stage{k}_factorization", "spec",
                      f"depthwise 3×3 of stage {k}: plain, sequential or parallel",
                      allowed=factorizations, apply=_set_stage(k))
        for k in range(1, MAX_STAGES + 1)
    ]
    plan = [
        DimensionInfo("prune_width_ratio", "plan",
                      "pre-pruning width as a multiple of the final width (1 = no pruning)"),
        DimensionInfo("importance", "plan", "channel importance metric (pruned plans only)",
                      allowed=lambda pm: tuple(importance_metrics(pm)), active_when=_pruned),
        DimensionInfo("schedule", "plan", "pruning schedule (pruned plans only)",
                      allowed=lambda pm: tuple(pruning_schedules(pm)), active_when=_pruned),
        DimensionInfo("prune_steps", "plan",
                      "pruning steps per stage (pruned plans, schedules other than one_shot)",
                      active_when=_stepped),
        DimensionInfo("prune_stages", "plan", "pruning stages, a KD fine-tune after each "
                      "(pruned plans only)", active_when=_pruned),
    ]
    parent = [
        DimensionInfo("parent", "plan", "the wide network a budget-filling plan prunes from: an "
                      "architecture preset (asc-search plugins list shows them)",
                      allowed=lambda pm: tuple(presets(pm))),
        *(DimensionInfo(name, "plan", f"relative width kept of {what}; the plan is scaled to the "
                        "largest network that fits the budgets (parent-based plans that prune)",
                        active_when=_pruned)
          for name, what in (("keep_stem", "the stem's first layer"),
                             ("keep_s1", "stage 1 and the stem's output"),
                             ("keep_s2", "stage 2"), ("keep_s3", "stage 3"), ("keep_s4", "stage 4"),
                             ("keep_expand", "every block's expansion"))),
        DimensionInfo("macs_fraction", "plan", "fraction of the MACs budget a parent-based plan "
                      "fills (for the Pareto mode; 1 = all of it)"),
        DimensionInfo("final_share", "plan", "share of a pruned plan's training budget given to "
                      "its final fine-tune, as a fraction such as \"1/3\" (the seed's) or "
                      "\"1/2\"; the wide parent gets the rest less a tenth for the fine-tunes "
                      "between pruning steps (pruned plans only)",
                      allowed=lambda pm: FINAL_SHARES, active_when=_pruned),
    ]
    storage = [
        DimensionInfo("storage", "plan", "dtype the parameters are stored in (float16, or int8: "
                      "a quantisation-aware last fine-tune, then real int8 conversion; the byte "
                      "budget counts each at its stored size)",
                      allowed=lambda pm: ("float32", "float16", "bfloat16", "int8")),
    ]
    from dataclasses import fields

    from asc_search.training.recipe import TrainingRecipe

    # Not ``epochs``: the study's budget sets every candidate's length (asc_search.study.budget),
    # so a sampled value would be overwritten; nor ``seed``, which the trial number sets.
    training = [DimensionInfo(f.name, "training", f"training recipe: {f.name}")
                for f in fields(TrainingRecipe) if f.name not in ("seed", "epochs")]
    return spec + stages + plan + parent + storage + training
