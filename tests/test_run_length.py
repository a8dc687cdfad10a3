"""The run's estimate of its time left (``asc_search.study.run_length``): the search's own
stopping rules and promotion's rungs, applied to trial times measured on the machine."""

from __future__ import annotations

import pytest

from asc_search.study.run_length import (
    PromotionPlan,
    SearchRules,
    TimedTrial,
    promotion_epochs,
    say_minutes,
    seconds_left,
    trials_to_come,
)

DEFAULT_RULES = SearchRules(n_trials=12, timeout=300, min_sampled=6)
DEFAULT_PROMOTION = PromotionPlan(top=1, promote_by="continue", proxy_epochs=8, promote_epochs=32)


def test_on_a_fast_machine_the_trial_budget_ends_the_search() -> None:
    # 20-s trials: 11 more after the first fit in 240 s, inside the 300-s timeout.
    assert trials_to_come(DEFAULT_RULES, elapsed=20, counted=1, sampled=0, references_queued=3,
                          reference_seconds=20, sampled_seconds=20) == (11, 220)


def test_on_a_slow_machine_the_sampled_floor_outlasts_the_timeout() -> None:
    # The three references left take the clock past 300 s; six sampled networks still follow.
    count, seconds = trials_to_come(DEFAULT_RULES, elapsed=80, counted=1, sampled=0,
                                    references_queued=3, reference_seconds=100,
                                    sampled_seconds=80)
    assert (count, seconds) == (9, 3 * 100 + 6 * 80)


def test_the_timeout_ends_the_search_once_the_floor_is_met() -> None:
    rules = SearchRules(n_trials=None, timeout=300, min_sampled=2)
    # 250 s in, 2 sampled trained: one more trial starts (the clock is under 300), then none.
    assert trials_to_come(rules, elapsed=250, counted=6, sampled=2, references_queued=0,
                          reference_seconds=60, sampled_seconds=60) == (1, 60)
    assert trials_to_come(rules, elapsed=300, counted=7, sampled=3, references_queued=0,
                          reference_seconds=60, sampled_seconds=60) == (0, 0)


def test_workers_side_by_side_share_the_wall_time() -> None:
    rules = SearchRules(n_trials=9, timeout=None, workers=2)
    assert trials_to_come(rules, elapsed=0, counted=1, sampled=1, references_queued=0,
                          reference_seconds=50, sampled_seconds=50) == (8, 200)


def test_nothing_ends_a_search_without_trials_or_timeout() -> None:
    assert trials_to_come(SearchRules(n_trials=None, timeout=None), elapsed=0, counted=0,
                          sampled=0, references_queued=0, reference_seconds=1,
                          sampled_seconds=1) is None


def test_promotion_epochs_follow_the_rungs() -> None:
    # 8 → 16 epochs for two searched trials and the reference, 16 → 32 for one and the reference.
    assert promotion_epochs(DEFAULT_PROMOTION, searched=6) == 3 * 8 + 2 * 16
    assert promotion_epochs(DEFAULT_PROMOTION, searched=1) == 2 * 8 + 2 * 16
    wider = PromotionPlan(top=2, promote_by="continue", proxy_epochs=8, promote_epochs=32)
    assert promotion_epochs(wider, searched=6) == 5 * 8 + 3 * 16
    retrain = PromotionPlan(top=1, promote_by="retrain", proxy_epochs=8, promote_epochs=32)
    assert promotion_epochs(retrain, searched=6) == 2 * 32
    assert promotion_epochs(PromotionPlan(top=0, promote_by="continue", proxy_epochs=8,
                                          promote_epochs=32), searched=6) == 0
    # No sampled trial trained: the references climb alone, two of them through the first rung.
    assert promotion_epochs(DEFAULT_PROMOTION, searched=0, references=4) == 2 * 8 + 1 * 16
    assert promotion_epochs(DEFAULT_PROMOTION, searched=3, references=0) == 2 * 8 + 1 * 16


def test_seconds_left_prices_each_kind_of_trial_by_its_own_times() -> None:
    assert seconds_left([], DEFAULT_RULES, elapsed=0, counted=0, references_queued=4,
                        promotion=DEFAULT_PROMOTION) is None
    timed = [TimedTrial(seed_trial=True, seconds=60), TimedTrial(seed_trial=True, seconds=140),
             TimedTrial(seed_trial=False, seconds=40)]
    # Two references queued at their mean (100 s); the sampled floor of six, at 40 s each,
    # outlasts the timeout; promotion's 56 epochs at a sampled trial's 5 s per epoch.
    left = seconds_left(timed, DEFAULT_RULES, elapsed=240, counted=3, references_queued=2,
                        promotion=DEFAULT_PROMOTION)
    assert left == pytest.approx(2 * 100 + 5 * 40 + 56 * 5)
    # A worker (no promotion here) estimates its search alone.
    assert seconds_left(timed, DEFAULT_RULES, elapsed=240, counted=3, references_queued=2,
                        promotion=None) == pytest.approx(2 * 100 + 5 * 40)


def test_minutes_are_said_whole() -> None:
    assert say_minutes(30) == "under a minute"
    assert say_minutes(61) == "about 2 min"
    assert say_minutes(600) == "about 10 min"
