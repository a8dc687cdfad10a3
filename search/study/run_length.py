"""How long the rest of a run takes, from the trials it has timed on this machine (issue 30).

The default run takes about ten minutes on a 2-core bf16 machine and 24–37 on a throttled fp32
one, and until now nothing said which before it ended. Its length is not a clock's: the search
starts trials until ``--timeout`` has passed *and* ``--min-sampled`` sampled networks are
trained, never beyond ``--trials``; promotion then trains a number of epochs fixed by the
settings (``asc_search.study.budget.rung_epochs``, as ``asc_search.study.promote`` climbs
them). Once trials have been timed here, the rest is arithmetic on those rules, so the run can
say after each trial how long it has left, which is what a user on an unknown machine needs to
decide whether to wait, stop, or pass a shorter ``--timeout`` next time.

What the estimate takes from the timed trials (wall seconds, start to finish, evaluation
included): the hand-made references still queued cost what the references so far cost on average
(two of them train wide parents, so they are the slow ones); a sampled trial costs what the sampled
ones so far cost (they reuse trained parents), or what the first trial, the DCASE baseline trained
as it is, cost before any has run; a promotion epoch costs a sampled trial's epoch, since rungs
fine-tune pruned networks from their checkpoints as trials do. It leaves out the
loading of the test list and the report (seconds), and a timeout that would end the search early
is taken at its word. ``benchmarks/default_run.py`` records every estimate a default run says
beside its wall time, so its error is measured, not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from asc_search.study.budget import REDUCTION, rung_epochs


@dataclass(frozen=True)
class SearchRules:
    """When the search phase stops starting trials (``asc-search run``'s options)."""

    n_trials: int | None  # slots of the study, seed trials included; None: no limit
    timeout: float | None  # seconds of search before it may end; None: no limit
    min_sampled: int = 0  # sampled networks trained before the timeout may end it
    workers: int = 1  # processes running trials side by side


@dataclass(frozen=True)
class PromotionPlan:
    """What follows the search (``--promote``, ``--promote-by``, the study's epochs)."""

    top: int
    promote_by: str
    proxy_epochs: int
    promote_epochs: int


@dataclass(frozen=True)
class TimedTrial:
    """A finished trial as the estimate sees it: a reference or sampled, and its wall time."""

    seed_trial: bool
    seconds: float


def trials_to_come(rules: SearchRules, *, elapsed: float, counted: int, sampled: int,
                   references_queued: int, reference_seconds: float,
                   sampled_seconds: float) -> tuple[int, float] | None:
    """How many more trials the search runs and their wall seconds, by the search's own rules
    (``run_worker``'s ``time_left`` and the ``--trials`` budget); None when no rule ends it.

    The queued references run first (they were enqueued first); every later trial is sampled.
    """
    if rules.n_trials is None and rules.timeout is None:
        return None
    count, seconds, clock, queued = 0, 0.0, elapsed, references_queued
    while ((rules.n_trials is None or counted + count < rules.n_trials)
           and (rules.timeout is None or clock < rules.timeout or sampled < rules.min_sampled)):
        cost = reference_seconds if queued else sampled_seconds
        if queued:
            queued -= 1
        else:
            sampled += 1
        count += 1
        seconds += cost
        clock += cost / max(rules.workers, 1)
    return count, seconds / max(rules.workers, 1)


def promotion_epochs(plan: PromotionPlan, *, searched: int, references: int = 1) -> int:
    """Epochs of training promotion runs for ``searched`` trained sampled trials and
    ``references`` trained hand-made ones, as ``distill`` and ``climb_rungs`` run them: the
    searched ones climb beside the best reference, or the references alone where no sampled
    trial was trained."""
    if plan.top < 1 or searched + references < 1:
        return 0
    climbers, beside = (searched, min(references, 1)) if searched else (references, 0)
    rungs = rung_epochs(plan.proxy_epochs, plan.promote_epochs) \
        if plan.promote_by == "continue" else []
    if not rungs:  # retrain: each finalist from scratch on the whole budget
        return (min(plan.top, climbers) + beside) * plan.promote_epochs
    total, before = 0, plan.proxy_epochs
    for rung, epochs in enumerate(rungs, start=1):
        climbing = min(climbers, plan.top * REDUCTION ** (len(rungs) - rung))
        total += (climbing + beside) * (epochs - before)
        before = epochs
    return total


def seconds_left(timed: Sequence[TimedTrial], rules: SearchRules, *, elapsed: float,
                 counted: int, references_queued: int,
                 promotion: PromotionPlan | None) -> float | None:
    """Wall seconds until the run ends: the search's remaining trials, then promotion (None:
    the search alone, as for ``asc-search worker``). None before any trial is timed, or when
    nothing would end the search."""
    if not timed:
        return None
    references = [t.seconds for t in timed if t.seed_trial]
    sampled = [t.seconds for t in timed if not t.seed_trial]
    first = timed[0].seconds
    reference_cost = sum(references) / len(references) if references else first
    sampled_cost = sum(sampled) / len(sampled) if sampled else first
    search = trials_to_come(rules, elapsed=elapsed, counted=counted, sampled=len(sampled),
                            references_queued=references_queued,
                            reference_seconds=reference_cost, sampled_seconds=sampled_cost)
    if search is None:
        return None
    count, seconds = search
    if promotion is None:
        return seconds
    searched = len(sampled) + max(count - references_queued, 0)
    epoch = sampled_cost / max(promotion.proxy_epochs, 1)
    return seconds + promotion_epochs(promotion, searched=searched,
                                      references=len(references) + references_queued) * epoch


def say_minutes(seconds: float) -> str:
    """``about 26 min`` (whole minutes; ``under a minute`` below one)."""
    minutes = math.ceil(seconds / 60)
    return "under a minute" if seconds < 60 else f"about {minutes} min"
