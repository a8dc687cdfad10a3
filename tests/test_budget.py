"""Equal training budgets: every candidate of a study trains for the same optimiser steps."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import asc_search.parents.store as parents_module
import asc_search.pruning.prune as prune_module
import asc_search.study.objective as objective
from asc_search.errors import AscSearchError
from asc_search.features.experiment import load_split_data
from asc_search.plugin_manager import build_plugin_manager
from asc_search.study.budget import (
    FINAL_SHARES,
    final_share,
    first_shared_report_epoch,
    report_epochs,
    step_budget,
)
from asc_search.study.lifecycle import make_pruner, seed_params
from asc_search.study.objective import SearchSettings, train_candidate
from asc_search.study.space import read_space, space_from_dict
from asc_search.training.train import fit as real_fit
from asc_search.training.train import precision_for

PM = build_plugin_manager()


def test_a_plan_divides_the_same_steps_as_an_unpruned_candidate() -> None:
    unpruned = step_budget(8, steps_per_epoch=25, pruning_steps=0)
    s1 = step_budget(8, steps_per_epoch=25, pruning_steps=5)  # 64 → 32, 5 steps
    s3 = step_budget(8, steps_per_epoch=25, pruning_steps=10)  # 96 → 64 → 32, 5 steps each
    assert unpruned.total == s1.total == s3.total == 200
    assert (unpruned.wide, unpruned.between, unpruned.final) == (200, 0, 0)
    # Every plan trains the same wide network for the same steps: S2 and S3 share a parent.
    assert s1.wide == s3.wide == step_budget(8, steps_per_epoch=25, pruning_steps=1).wide == 113
    assert (s1.between, s3.between) == (5, 2)  # a tenth (20 steps) between the pruning steps
    assert (s1.final, s3.final) == (67, 69)  # a third, and what the tenth leaves over
    assert s3.total == 113 + 9 * 2 + 69
    with pytest.raises(AscSearchError, match="too small"):
        step_budget(1, steps_per_epoch=1, pruning_steps=2)


@pytest.fixture(scope="module")
def data(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_split_data(str(tiny_corpus), 100, pm=PM, progress=False, with_test=False,
                           cache_dir=tmp_path_factory.mktemp("cache"))


def _candidates() -> tuple[SearchSettings, dict]:
    raw, source = read_space("sscp_mobile")
    space = space_from_dict(raw, source=source, pm=PM)
    settings = SearchSettings(space=raw, space_source=source, proxy_epochs=3,
                              recipe={"batch_size": 32})
    return settings, {name: space.candidate(space.values_of(params))
                      for name, params in seed_params(space).items()}


def test_baseline_and_seed_plans_train_for_equal_steps(data, monkeypatch) -> None:
    """Before equal budgets the baseline trained 4 proxy epochs and S3 16 (plus fine-tunes)."""
    settings, candidates = _candidates()
    taken: list[tuple[int, int]] = []  # (steps, seed) of every fit

    def counting_fit(model, train, recipe, **kwargs):
        steps = 0
        inner = kwargs.pop("on_step", None)

        def on_step(step: int) -> None:
            nonlocal steps
            steps = step
            if inner is not None:
                inner(step)

        history = real_fit(model, train, recipe, on_step=on_step, **kwargs)
        taken.append((steps, recipe.seed))
        return history

    monkeypatch.setattr(objective, "fit", counting_fit)
    monkeypatch.setattr(prune_module, "fit", counting_fit)
    monkeypatch.setattr(parents_module, "fit", counting_fit)
    logits = np.zeros((len(data.train), 10), dtype=np.float32)
    totals = {}
    for name in ("dcase-baseline", "seed-S1", "seed-S3"):
        taken.clear()
        outcome = train_candidate(candidates[name], settings=settings, pm=PM, train=data.train,
                                  validation=data.validation, teacher_logits=logits,
                                  precision=precision_for("cpu"), epochs=settings.proxy_epochs)
        totals[name] = sum(steps for steps, _ in taken)
        assert totals[name] == outcome.budget.total
        # Every fit of one candidate draws its own batches: no seed is used twice.
        assert len({seed for _, seed in taken}) == len(taken)
        assert outcome.training_macs > 0
    steps_per_epoch = -(-len(data.train) // 32)
    assert set(totals.values()) == {3 * steps_per_epoch}


def test_reports_score_only_the_final_width_network(data) -> None:
    settings, candidates = _candidates()
    logits = np.zeros((len(data.train), 10), dtype=np.float32)
    for name in ("dcase-baseline", "seed-S1"):
        reported: list[tuple[int, int]] = []

        def on_report(model, epoch: int, reported=reported) -> None:
            reported.append((epoch, sum(p.numel() for p in model.parameters())))

        outcome = train_candidate(candidates[name], settings=settings, pm=PM, train=data.train,
                                  validation=data.validation, teacher_logits=logits,
                                  precision=precision_for("cpu"), epochs=settings.proxy_epochs,
                                  on_report=on_report)
        final_params = sum(p.numel() for p in outcome.model.parameters())
        assert reported, name
        assert {params for _, params in reported} == {final_params}, name
        epochs = [epoch for epoch, _ in reported]
        assert epochs == sorted(epochs) and epochs[-1] == settings.proxy_epochs
        if name == "dcase-baseline":
            assert epochs == [1, 2, 3]
        else:  # only the final fine-tune's epochs: the wide network is never reported
            start = outcome.budget.total - outcome.budget.final
            assert epochs[0] == start // outcome.budget.steps_per_epoch + 1 > 1
            assert epochs[0] <= first_shared_report_epoch(settings.proxy_epochs)


def test_first_shared_report_epoch_matches_every_budget_division() -> None:
    for epochs in range(1, 41):
        for steps_per_epoch in range(1, 60):
            for pruning_steps, share in itertools.product((1, 2, 3, 10), FINAL_SHARES):
                try:
                    budget = step_budget(epochs, steps_per_epoch=steps_per_epoch,
                                         pruning_steps=pruning_steps, final=final_share(share))
                except AscSearchError:
                    continue
                start = budget.total - budget.final  # steps before the final fine-tune
                first = start // steps_per_epoch + 1  # first whole epoch reported after it
                assert first <= first_shared_report_epoch(epochs), (epochs, steps_per_epoch)
                # One intermediate step takes the whole tenth, at the seed's third: the latest.
                if pruning_steps == 2 and share == "1/3":
                    assert first == first_shared_report_epoch(epochs), (epochs, steps_per_epoch)


def test_a_larger_final_share_keeps_the_total_and_starts_the_fine_tune_sooner() -> None:
    third = step_budget(8, steps_per_epoch=25, pruning_steps=5)
    half = step_budget(8, steps_per_epoch=25, pruning_steps=5, final=final_share("1/2"))
    assert third == step_budget(8, steps_per_epoch=25, pruning_steps=5, final=final_share(None))
    assert half.total == third.total == 200 and half.between == third.between
    assert half.final >= 100 > third.final and half.wide < third.wide
    with pytest.raises(AscSearchError, match="final_share '2/3' is not one of"):
        final_share("2/3")


def test_hyperband_starts_its_rungs_where_pruned_plans_first_report() -> None:
    pruner = make_pruner("hyperband", epochs=8)
    assert pruner._min_resource == first_shared_report_epoch(8) == 6


def test_trials_report_at_the_first_shared_epoch_only() -> None:
    """Never at the last: a stop there saves nothing and leaves a trained network unpromotable."""
    assert report_epochs(8) == {6}
    assert report_epochs(32) == {22}
    assert report_epochs(1) == set()
    for epochs in range(1, 60):
        first = first_shared_report_epoch(epochs)
        assert report_epochs(epochs) == ({first} if first < epochs else set())
