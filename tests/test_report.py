"""The HTML report's parts that summarise many trials."""

from __future__ import annotations

from pathlib import Path

import optuna

from asc_search.report import page as report


def _trial(trial: optuna.Trial) -> float:
    """Unpruned and pruned plans, as a study with conditional pruning dimensions holds them:
    only pruned plans have an ``importance`` metric, and it decides their accuracy."""
    width = trial.suggest_int("width", 16, 64)
    ratio = trial.suggest_float("ratio", 1.0, 3.0)
    score = width / 1000
    if ratio > 1.5:
        metric = trial.suggest_categorical("importance", ["l2", "taylor"])
        score += 0.5 if metric == "taylor" else 0.0
    trial.set_constraint("macs", -1.0)
    trial.set_user_attr("status", "trained")
    return score


def test_conditional_dimensions_are_ranked_in_the_importances(tmp_path: Path,
                                                              monkeypatch) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    study.optimize(_trial, n_trials=30)
    assert 3 <= sum("importance" in t.params for t in study.trials) < 30
    ranked: list[dict[str, float]] = []
    original = optuna.importance.get_param_importances
    monkeypatch.setattr(optuna.importance, "get_param_importances",
                        lambda *a, **k: ranked.append(original(*a, **k)) or ranked[-1])
    report._importances(study, tmp_path)
    assert (tmp_path / "importances.png").is_file()
    # The dimension only pruned plans have decides their accuracy: it is ranked, not dropped.
    assert ranked[0]["importance"] > ranked[0]["width"]
