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


def _crowded_study() -> optuna.Study:
    """Trials whose points and seed-plan labels fill the plot's upper right, where
    ``loc="best"`` used to put the legend over a label."""
    study = optuna.create_study(direction="maximize")
    names = iter(["dcase-baseline", "seed-s1", "seed-s2", "seed-s3"])
    for k in range(24):
        macs = 4e6 + 26e6 * (k % 8) / 7
        accuracy = 0.30 + 0.25 * (k % 8) / 7 + 0.01 * (k // 8)
        attrs = {"status": "trained", "macs": int(macs),
                 "validation": {"macro_interval": [accuracy - 0.03, accuracy + 0.03]}}
        if k >= 20:
            attrs["seed_trial"] = next(names)
        study.add_trial(optuna.trial.create_trial(
            value=accuracy, user_attrs=attrs, system_attrs={"constraints": [-1.0]}))
    devices = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
    study.set_user_attr("finalist:21", {"label": "seed-s1", "test": {
        "per_device": {d: 0.9 for d in devices},
        "per_device_interval": {d: [0.85, 0.94] for d in devices}}})
    study.set_user_attr("finalist:3", {"label": "searched", "test": {"per_device": {
        d: 0.95 for d in ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")}}})
    return study


def test_legends_cover_no_point_label_and_no_bar(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    monkeypatch.setattr(report, "settings_of",
                        lambda study, **_: SimpleNamespace(max_macs=30_000_000))
    figures = []
    real_png = report._png

    def keep(figure, folder, name):
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axis in figure.axes:
            legend = axis.get_legend()
            box = legend.get_window_extent(renderer)
            covered = [a.get_window_extent(renderer) for a in (*axis.texts, *axis.patches)]
            figures.append((name, [c for c in covered if box.overlaps(c)]))
        return real_png(figure, folder, name)

    monkeypatch.setattr(report, "_png", keep)
    study = _crowded_study()
    report._pareto_plot(study, tmp_path)
    report._finalists_plot(study, tmp_path)
    report._history(study, tmp_path)
    assert [name for name, _ in figures] == ["pareto.png", "finalists.png", "history.png"]
    assert all(not overlaps for _, overlaps in figures), figures
    assert (tmp_path / "pareto.png").is_file() and (tmp_path / "finalists.png").is_file()


def _finalist(validation_unseen: float | None) -> dict:
    scores = {"macro": 0.6, "macro_interval": [0.55, 0.65], "seen": 0.62,
              "unseen": validation_unseen}
    return {"label": "searched", "macs": 1_000_000, "param_bytes": 2_000, "seconds": 10.0,
            "validation": scores, "test": {**scores, "unseen": 0.57}}


def test_the_finalists_table_shows_validation_on_unseen_devices_only_where_it_heard_some(
        ) -> None:
    """With ``--simulated-devices`` the recommendation read unseen devices on validation: the
    table shows that part beside the whole; a plain validation list (seen devices only) adds no
    empty columns."""
    heard = optuna.create_study(direction="maximize")
    heard.set_user_attr("finalist:4", _finalist(0.481))
    page = report._finalists_table(heard)
    assert "<th>validation seen %</th><th>validation unseen %</th>" in page
    assert "<td>62.0</td><td>48.1</td>" in page
    plain = optuna.create_study(direction="maximize")
    plain.set_user_attr("finalist:4", _finalist(None))
    page = report._finalists_table(plain)
    assert "validation unseen" not in page and "<td>57.0</td>" in page
