"""Equal training budgets: every candidate of a study trains for the same number of optimiser steps.

A search compares candidates, so each must get the same training at a given fidelity, whatever its
plan. Otherwise the comparison rewards plans for their extra epochs: before this rule an unpruned
candidate (the DCASE baseline's seed trial among them) trained 4 proxy epochs while the seed's S3
plan got 4 wide epochs plus 9 fine-tunes between pruning steps plus a final fine-tune, 16 in all,
and promotion gave the baseline half of S1's epochs.

The unit is the epoch of training samples, counted in optimiser steps: a budget of E epochs is
E × ⌈n / batch⌉ steps for every candidate, so a candidate that samples its own batch size sees the
same number of samples in fewer or more steps. An unpruned candidate
spends all of them on its one network. A pruning plan divides the same steps the way the seed's
recipe divided its 150 epochs (100 wide, 2 after each intermediate pruning step, 50 at the end):
a third for the final fine-tune, a tenth shared by the fine-tunes between pruning steps, the rest
for the wide network, which is the same for every plan so that plans share trained parents.
The cost of a step is not equal (a 96-wide network costs about nine times a 32-wide one per
step), so each candidate also records the training MACs it spent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from asc_search.errors import AscSearchError

#: Shares of a pruning plan's budget, after the seed's 100 / 2-per-step / 50 epochs.
FINAL_FINETUNE_SHARE = Fraction(1, 3)
#: The final fine-tune's shares a space may search (``final_share``): the seed's third and a
#: half. Few on purpose: the share fixes the parent's steps, and every share trains parents of
#: its own. None is below the seed's third, so ``first_shared_report_epoch`` holds for all.
FINAL_SHARES = ("1/3", "1/2")


def final_share(value: str | None) -> Fraction:
    """A ``final_share`` plan value (``"1/2"``) as a fraction; None: the seed's third."""
    if value is None:
        return FINAL_FINETUNE_SHARE
    if str(value) not in FINAL_SHARES:
        raise AscSearchError(f"final_share {value!r} is not one of {', '.join(FINAL_SHARES)}")
    return Fraction(str(value))
BETWEEN_STEPS_SHARE = 0.1
#: Forward + backward ≈ three forward passes: how training MACs are estimated from the DCASE count.
TRAINING_PASSES = 3


@dataclass(frozen=True)
class StepBudget:
    """How one candidate spends ``total`` optimiser steps.

    ``wide`` steps train the network the plan starts from, each of the ``pruning_steps − 1``
    intermediate pruning steps is followed by ``between`` steps of fine-tuning, and ``final``
    steps fine-tune the pruned network. An unpruned candidate has ``wide == total``.
    """

    epochs: int
    steps_per_epoch: int
    wide: int
    between: int
    final: int
    pruning_steps: int

    @property
    def total(self) -> int:
        return self.wide + self.between * max(0, self.pruning_steps - 1) + self.final

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def step_budget(epochs: int, *, steps_per_epoch: int, pruning_steps: int,
                final: Fraction = FINAL_FINETUNE_SHARE) -> StepBudget:
    """Divide ``epochs × steps_per_epoch`` optimiser steps for a plan of ``pruning_steps`` steps
    (0 for a candidate that is not pruned), ``final`` of them (at least) for the final fine-tune.

    Every pruned plan of a budget trains its wide network for the same steps, whatever its
    schedule, steps or stages, so plans that start from the same wide network share one trained
    parent (``asc_search.parents.store``): the wide part ends a tenth of the budget before the final
    fine-tune's latest start, ⌊total × 2/3⌋. The tenth is divided between the intermediate
    pruning steps; what a division leaves over (and all of it for a one-shot plan) goes to the
    final fine-tune, which then starts earlier.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise AscSearchError("a training budget needs at least one epoch of at least one step")
    total = epochs * steps_per_epoch
    if pruning_steps <= 0:
        return StepBudget(epochs, steps_per_epoch, total, 0, 0, 0)
    final_start = math.floor(total * (1 - final))
    between_total = round(total * BETWEEN_STEPS_SHARE)
    wide = final_start - between_total
    if wide < 1:
        raise AscSearchError(
            f"a budget of {epochs} epoch(s) ({total} steps) is too small for a pruning plan; "
            "raise the epochs")
    intermediate = pruning_steps - 1
    between = between_total // intermediate if intermediate else 0
    return StepBudget(epochs, steps_per_epoch, wide, between, total - wide - between * intermediate,
                      pruning_steps)


def first_shared_report_epoch(epochs: int) -> int:
    """The first whole epoch of an ``epochs`` budget at which every candidate, pruned or not, has
    its final width and so reports a validation score.

    A pruned plan reports only during its final fine-tune, which starts at step
    ``⌊total × 2/3⌋`` at the latest (a plan whose steps between pruning steps fill their tenth
    of the budget; others start earlier), so every plan has reported by epoch
    ``⌊epochs × 2/3⌋ + 1`` whatever the steps per epoch (``⌊⌊x⌋ / n⌋ = ⌊x / n⌋``) or the batch
    size a candidate samples. A pruner that compares trials across epochs (Hyperband's rungs)
    must not start before it, or a pruned plan scored at epoch 6 would be ranked against
    unpruned trials' epoch-1 scores.
    """
    if epochs < 1:
        raise AscSearchError("a training budget needs at least one epoch")
    return min(epochs, math.floor(epochs * (1 - FINAL_FINETUNE_SHARE)) + 1)


def report_epochs(epochs: int) -> set[int]:
    """The epochs of an ``epochs`` budget at which a single-objective trial reports a validation
    score to Optuna's pruner: the first epoch every plan reports at, if it comes before the last.

    Scoring the 2,400-clip validation list costs about twice a proxy epoch's training at the
    default batch, and reporting every epoch made the baseline's trial twice as long. Before the
    first shared epoch a report cannot be compared across plans, so it only costs. A report at
    the last epoch saves no training, and a trial the pruner stopped there was trained in full
    yet could not be promoted (4 of 12 sampled trials of a default run ended so).
    """
    first = first_shared_report_epoch(epochs)
    return {first} if first < epochs else set()


def training_macs(budget: StepBudget, *, batch_size: int, wide_macs: int,
                  between_macs: list[int], final_macs: int) -> int:
    """Estimated multiply-accumulates spent training: steps × batch × 3 forward passes of the
    network trained in each phase (``between_macs``: the network after each intermediate step;
    ``wide_macs`` 0 where the wide phase was not spent here, a parent loaded from the cache)."""
    per_sample = budget.wide * wide_macs + budget.final * final_macs
    per_sample += sum(budget.between * macs for macs in between_macs)
    return int(per_sample * batch_size * TRAINING_PASSES)


#: Successive halving's factor: each rung multiplies the budget by it and keeps 1 in it.
REDUCTION = 2


def rung_epochs(proxy_epochs: int, promote_epochs: int, *,
                reduction: int = REDUCTION) -> list[int]:
    """The budgets (epochs) at the ends of the promotion rungs: the proxy's times the reduction
    factor, its square, ..., the last capped at the promotion budget. None when the promotion
    budget is not longer than the proxy's (there is nothing to continue)."""
    rungs, epochs = [], proxy_epochs
    while epochs < promote_epochs:
        epochs = min(promote_epochs, epochs * reduction)
        rungs.append(epochs)
    return rungs
