"""``asc-search report STUDY``: one HTML page with PNG plots, readable without a server.

Plots: the Pareto front of validation accuracy against MACs (seed and baseline trials marked,
infeasible candidates as ticks at their counted MACs), the optimisation history, parameter
importances (Optuna's evaluator on the feasible trained trials), and the finalists' test accuracy
per device. The page is written next to the storage in the studies folder, all at once.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna

from asc_search.data.dataset import DEVICES
from asc_search.study.lifecycle import feasible, pareto_trials, settings_of
from asc_search.study.promote import finalists, recommendation


def write_report(study: optuna.Study, *, folder: Path) -> Path:
    """Write ``folder/index.html`` and its PNGs, replacing an older report only when complete."""
    import matplotlib

    matplotlib.use("Agg")
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        sections = [_recommendation(study), _summary(study)]
        for title, plot in (("Pareto front", _pareto_plot), ("Optimisation history", _history),
                            ("Parameter importances", _importances),
                            ("Finalists per device (test)", _finalists_plot)):
            sections.append(f"<h2>{title}</h2>" + plot(study, partial))
        sections.append(_finalists_table(study))
        sections.append(_class_table(study))
        sections.append(_pareto_table(study))
        page = ("<!doctype html><meta charset='utf-8'><title>asc-search: "
                f"{html.escape(study.study_name)}</title><style>body{{font-family:sans-serif;"
                "max-width:60em;margin:auto}table{border-collapse:collapse}td,th{padding:2px 8px;"
                "border-bottom:1px solid #ddd;text-align:right}</style>"
                f"<h1>Study {html.escape(study.study_name)}</h1>" + "\n".join(sections))
        (partial / "index.html").write_text(page)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder / "index.html"


def _summary(study: optuna.Study) -> str:
    settings = settings_of(study, to_train=False)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for trial in trials:
        key = trial.user_attrs.get("status", trial.state.name.lower())
        if trial.state != optuna.trial.TrialState.COMPLETE:
            key = trial.state.name.lower()
        states[key] = states.get(key, 0) + 1
    spent = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    return (f"<p>{len(trials)} trials ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))});"
            f" split {settings.split} %, budgets {settings.max_macs:,} MACs and "
            f"{settings.max_param_bytes:,} bytes ({settings.storage_dtype}); objective "
            f"{settings.objective}; space {html.escape(settings.space_source)}; "
            f"{spent / 60:.1f} minutes of trial training.</p>"
            + _teachers_line(settings) +
            f"<p>Equal training budgets: every candidate trains for the same number of "
            f"optimiser steps (epochs × steps per epoch at the study's batch size, so the same "
            f"number of samples): {settings.proxy_epochs} epochs in a search trial, "
            f"{settings.promote_epochs} for a finalist. A pruning plan divides its budget: a "
            f"third (or the share its plan samples) for the final fine-tune, a tenth for the "
            f"fine-tunes between pruning steps, the rest for the wide network. Steps of a wider "
            f"network cost more; each trial records the training MACs it spent.</p>")


def _recommendation(study: optuna.Study) -> str:
    """The headline: the one model the study recommends, chosen on validation, and what
    validation can tell apart here."""
    chosen = recommendation(study)
    if chosen is None:
        return ("<p><strong>No recommendation</strong>: the finalists have not been promoted, "
                "or were promoted by a version that made none, or none fitted the budgets "
                "(<code>asc-search distill</code> promotes and recommends).</p>")
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in chosen.notes())
    return (f"<p style='font-size:1.2em'><strong>{html.escape(chosen.headline())}</strong></p>"
            "<p>Chosen on validation before any test clip was read; <code>asc-search export"
            "</code> writes this model unless told another trial.</p>"
            + (f"<ul>{notes}</ul>" if notes else ""))


def _class_table(study: optuna.Study) -> str:
    """Per-class test accuracy of every finalist, beside the per-device figures: a network that
    never predicts a class shows 0 there."""
    promoted = finalists(study)
    classes = sorted({c for r in promoted.values() for c in r["test"].get("per_class", {})})
    if not classes:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = []
    for number, record in sorted(promoted.items()):
        per_class = record["test"].get("per_class", {})  # none in records made before it
        cells = "".join(f"<td>{_pct(per_class.get(c))}</td>" for c in classes)
        missing = ", ".join(record.get("never_predicted", {}).get("test", []))
        rows.append(f"<tr><td>{number}</td><td>{html.escape(record['label'])}</td>{cells}"
                    f"<td>{html.escape(missing)}</td></tr>")
    return ("<h2>Finalists per class (test %)</h2><table><tr><th>trial</th><th>kind</th>"
            + head + "<th>never predicted</th></tr>" + "".join(rows) + "</table>")


def _teachers_line(settings: Any) -> str:
    """Which teachers the students distilled from, or that they distilled from none."""
    if not settings.teachers:
        return ("<p>Teachers: none (<code>--teacher none</code>): every student learned from the "
                "labels alone, without distillation.</p>")
    responses = settings.teacher_responses_p
    return (f"<p>Teachers: {html.escape(', '.join(settings.teachers))} ({settings.teacher_epochs}"
            f" epochs; ensemble of {settings.ensemble.replace('_', ' ')}"
            + (f"; device impulse-response augmentation, p {responses:g}" if responses else "")
            + (f"; out-of-fold logits from {settings.teacher_folds} fits each"
               if settings.teacher_folds > 1 else "") + "), fitted on the split's training "
            "clips only; every trial distils from their cached logits.</p>")


def _png(figure: Any, folder: Path, name: str) -> str:
    figure.tight_layout()
    figure.savefig(folder / name, dpi=110, bbox_inches="tight")  # keeps the outside legend
    import matplotlib.pyplot as plt

    plt.close(figure)
    return f"<img src='{name}' alt='{name}' style='max-width:100%'>"


def _pareto_plot(study: optuna.Study, folder: Path) -> str:
    import matplotlib.pyplot as plt

    settings = settings_of(study, to_train=False)
    trials = study.get_trials(deepcopy=False)
    trained = [t for t in trials if feasible(t)]
    infeasible = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
    if not trained:
        return "<p>No feasible trained trial yet.</p>"
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.errorbar([t.user_attrs["macs"] / 1e6 for t in trained],
                  [100 * t.values[0] for t in trained], yerr=_validation_error(trained),
                  fmt="o", ms=4, c="tab:blue", ecolor="lightsteelblue", elinewidth=1,
                  label="trained trials (validation, 95 % interval)")
    front = sorted(pareto_trials(study), key=lambda t: t.user_attrs["macs"])
    axis.step([t.user_attrs["macs"] / 1e6 for t in front], [100 * t.values[0] for t in front],
              where="post", c="tab:red", label="Pareto front")
    low = min(100 * t.values[0] for t in trained) - 2
    if infeasible:
        axis.scatter([t.user_attrs["macs"] / 1e6 for t in infeasible], [low] * len(infeasible),
                     marker="|", c="grey", s=80, label="over budget (not trained)")
    middle = settings.max_macs / 2e6
    for trial in trained:
        if "seed_trial" in trial.user_attrs:
            # Labels point inwards, so one near the budget line stays inside the axes.
            right = trial.user_attrs["macs"] / 1e6 > middle
            axis.annotate(trial.user_attrs["seed_trial"],
                          (trial.user_attrs["macs"] / 1e6, 100 * trial.values[0]),
                          textcoords="offset points", xytext=(-4 if right else 4, 4),
                          ha="right" if right else "left", fontsize=8)
            axis.scatter([trial.user_attrs["macs"] / 1e6], [100 * trial.values[0]], marker="*",
                         c="tab:orange", s=80)
    axis.axvline(settings.max_macs / 1e6, c="k", ls="--", lw=1, label="MACs budget")
    axis.set_xlabel("MACs (millions, DCASE count)")
    axis.set_ylabel("validation macro accuracy (%)")
    _legend_outside(axis)
    return _png(figure, folder, "pareto.png")


def _legend_outside(axis: Any) -> None:
    """The legend beside the axes, never over a point label or a bar (``loc="best"`` only
    avoids the data points, not the annotations)."""
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _validation_error(trials: list[optuna.trial.FrozenTrial]) -> Any:
    """Distances (percentage points) from each trial's validation accuracy down and up to its
    stored 95 % interval: every plotted accuracy shows its uncertainty (0 where none is kept)."""
    import numpy as np

    below, above = [], []
    for trial in trials:
        interval = trial.user_attrs.get("validation", {}).get("macro_interval")
        value = trial.values[0]
        low, high = interval if interval else (value, value)
        below.append(100 * max(value - low, 0.0))
        above.append(100 * max(high - value, 0.0))
    return np.array([below, above])


def _history(study: optuna.Study, folder: Path) -> str:
    import matplotlib.pyplot as plt

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    trained = [t for t in trials if feasible(t)]
    if not trained:
        return "<p>No feasible trained trial yet.</p>"
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.errorbar([t.number for t in trained], [100 * t.values[0] for t in trained],
                  yerr=_validation_error(trained), fmt="o", ms=3.5, ecolor="lightsteelblue",
                  elinewidth=1, label="feasible trial (95 % interval)")
    best, xs, ys = 0.0, [], []
    for trial in sorted(trained, key=lambda t: t.number):
        best = max(best, trial.values[0])
        xs.append(trial.number)
        ys.append(100 * best)
    axis.step(xs, ys, where="post", c="tab:red", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel("validation macro accuracy (%)")
    _legend_outside(axis)
    return _png(figure, folder, "history.png")


def _importances(study: optuna.Study, folder: Path) -> str:
    """Optuna's importances for validation accuracy over the feasible trained trials.

    Pruning dimensions exist only where a plan prunes (``active_when``). Optuna's default
    evaluator from 5.0 on, conditional PED-ANOVA, ranks such a parameter among the trials that
    have it, so the metric and schedule are ranked next to the widths instead of dropped (the
    older fANOVA default kept only parameters every trial has).
    """
    import matplotlib.pyplot as plt

    trained = [t for t in study.get_trials(deepcopy=False) if feasible(t)]
    if len(trained) < 3:
        return "<p>Too few feasible trained trials for importances.</p>"
    scratch = optuna.create_study(direction="maximize")  # accuracy only, feasible trials only
    scratch.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                  value=t.values[0]) for t in trained])
    try:
        with warnings.catch_warnings():  # "importances will be equal" on flat results: shown
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(scratch)
    except (RuntimeError, ValueError) as exc:
        return f"<p>Importances unavailable: {html.escape(str(exc))}</p>"
    if not scores:
        return "<p>No parameter varied among the feasible trials.</p>"
    names = list(scores)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(names) + 1))
    axis.barh(names, [scores[n] for n in names])
    axis.set_xlabel("importance for validation accuracy")
    return _png(figure, folder, "importances.png")


def _finalists_plot(study: optuna.Study, folder: Path) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    promoted = finalists(study)
    if not promoted:
        return "<p>No finalists yet: run <code>asc-search distill</code>.</p>"
    figure, axis = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(promoted)
    for index, (number, record) in enumerate(sorted(promoted.items())):
        per_device = record["test"]["per_device"]
        intervals = record["test"].get("per_device_interval", {})
        values = [100 * per_device.get(d, float("nan")) for d in DEVICES]
        # Each bar's 95 % bootstrap interval over the device's recordings (none for a record
        # written before they were kept).
        error = [[max(v - 100 * intervals[d][0], 0) if d in intervals else 0 for d, v in
                  zip(DEVICES, values, strict=True)],
                 [max(100 * intervals[d][1] - v, 0) if d in intervals else 0 for d, v in
                  zip(DEVICES, values, strict=True)]]
        axis.bar(np.arange(len(DEVICES)) + index * width, values, width, yerr=error,
                 capsize=2, error_kw={"elinewidth": 0.8},
                 label=f"trial {number} ({record['label']}, 95 % interval)")
    axis.set_xticks(np.arange(len(DEVICES)) + 0.4 - width / 2, DEVICES)
    axis.set_ylabel("test accuracy (%)")
    _legend_outside(axis)
    return _png(figure, folder, "finalists.png")


def _finalists_table(study: optuna.Study) -> str:
    promoted = finalists(study)
    if not promoted:
        return ""
    # A validation list with simulated unseen devices (``run --simulated-devices``) chose the
    # recommendation partly on them: show that part, as the test columns show theirs.
    unheard = any(r["validation"].get("unseen") is not None for r in promoted.values())
    rows = "".join(
        f"<tr><td>{n}{' (recommended)' if r.get('recommended') else ''}</td>"
        f"<td>{html.escape(r['label'])}</td><td>{r['macs']:,}</td>"
        f"<td>{r['param_bytes']:,}{_storage_note(r)}</td>"
        f"<td>{_with_interval(r['validation'])}</td>"
        + (f"<td>{_pct(r['validation'].get('seen'))}</td>"
           f"<td>{_pct(r['validation'].get('unseen'))}</td>" if unheard else "")
        + f"<td>{_with_interval(r['test'])}</td><td>{_pct(r['test']['seen'])}</td>"
        f"<td>{_pct(r['test']['unseen'])}</td><td>{_versus(r)}</td>"
        f"<td>{_rungs(r)}</td><td>{r['seconds']:.0f}</td></tr>"
        for n, r in sorted(promoted.items()))
    return ("<h2>Finalists</h2><p>Macro accuracy with its 95 % bootstrap interval over "
            "recordings (the clips of one recording are not independent). The hand-made "
            "reference is the best seed trial by validation (the DCASE baseline or one of the "
            "seed's plans). The recommendation above was made on validation; the test "
            "columns were read once, after it, to report how the finalists fare, not to "
            "choose among them. The test difference from the reference carries its "
            "<em>paired</em> interval (both models on the same resampled recordings): a "
            "difference whose interval holds 0 is not shown by this data.</p>"
            "<table><tr><th>trial</th><th>kind</th><th>MACs</th><th>bytes</th>"
            "<th>validation % (95 % CI)</th>"
            + ("<th>validation seen %</th><th>validation unseen %</th>"
               if unheard else "")
            + "<th>test % (95 % CI)</th><th>test seen %</th>"
            "<th>test unseen %</th><th>test − hand-made reference, points (95 % CI)</th>"
            "<th>validation % by rung (epochs)</th><th>seconds</th></tr>" + rows + "</table>"
            "<p>Finalists promoted by <em>continue</em> went on from their own search "
            "checkpoints through rungs of doubling fine-tunes, the better half kept at each "
            "(successive halving); <em>retrain</em> ones were trained again from scratch.</p>"
            + _device_table(promoted))


def _device_table(promoted: dict[int, dict[str, Any]]) -> str:
    """The DCASE 2025 view of a finalist with device models: routed by device against its
    general model, overall, known and unknown devices, and per device."""
    parts = []
    for number, record in sorted(promoted.items()):
        devices = record.get("device_specific")
        if not devices:
            continue
        routed, general = devices["test"], devices["general_test"]
        cells = "".join(f"<th>{d}</th>" for d in DEVICES)
        per_device = "".join(f"<td>{_pct(routed['per_device'].get(d))}</td>" for d in DEVICES)
        tuning = devices["tuning"]
        parts.append(
            f"<h2>Device-specific models (DCASE 2025), trial {number}</h2>"
            f"<p>One model per training device ({', '.join(devices['devices'])}), each the "
            f"finalist fine-tuned with KD on that device's clips ({tuning['epochs']} epochs, "
            f"learning rate {tuning['learning_rate']:.2g}, {tuning['layers']} learning; the "
            f"best of {len(devices['tried'])} tunings on validation); each fits the budgets on "
            "its own, as the 2025 rules count them. Test clips go to their device's model; "
            "unknown devices to the general one.</p>"
            "<table><tr><th>model</th><th>test % (95 % CI)</th><th>known devices %</th>"
            f"<th>unknown devices %</th>{cells}</tr>"
            f"<tr><td>device-specific</td><td>{_with_interval(routed)}</td>"
            f"<td>{_pct(routed['known'])}</td><td>{_pct(routed['unknown'])}</td>{per_device}</tr>"
            f"<tr><td>general</td><td>{_with_interval(general)}</td>"
            f"<td>{_pct(general['known'])}</td><td>{_pct(general['unknown'])}</td>"
            + "".join(f"<td>{_pct(record['test']['per_device'].get(d))}</td>" for d in DEVICES)
            + "</tr></table>")
    return "".join(parts)


def _rungs(record: dict[str, Any]) -> str:
    """A continued finalist's validation after each rung; retrained ones climbed none."""
    rungs = record.get("rungs")
    if not rungs:
        return "retrained" if record.get("promoted_by") == "retrain" else "–"
    return " → ".join(f"{_pct(r['validation'])} ({r['epochs']})" for r in rungs)


def _versus(record: dict[str, Any]) -> str:
    paired = record.get("test_vs_reference") or record.get("test_vs_baseline")
    if not paired:
        return ""
    return (f"{100 * paired['difference']:+.1f} ({100 * paired['low']:+.1f} to "
            f"{100 * paired['high']:+.1f}) vs {html.escape(paired.get('reference', 'baseline'))}")


def _storage_note(record: dict[str, Any]) -> str:
    """`` (int8)`` after the bytes of a finalist not stored in float16: its bytes are its
    converted program's own count, and its scores are that program's."""
    storage = record.get("storage", "float16")
    return "" if storage == "float16" else f" ({html.escape(storage)})"


def _with_interval(scores: dict[str, Any]) -> str:
    """``52.4 (50.5–54.3)``; finalists recorded before intervals existed show the figure alone."""
    interval = scores.get("macro_interval")
    text = f"{100 * scores['macro']:.1f}"
    return f"{text} ({100 * interval[0]:.1f}–{100 * interval[1]:.1f})" if interval else text


def _pareto_table(study: optuna.Study) -> str:
    rows = "".join(
        f"<tr><td>{t.number}</td><td>{html.escape(t.user_attrs.get('seed_trial', ''))}</td>"
        f"<td>{t.user_attrs['macs']:,}</td><td>{t.user_attrs['param_bytes']:,}</td>"
        f"<td>{100 * t.values[0]:.1f}</td></tr>" for t in pareto_trials(study))
    return ("<h2>Pareto-optimal trials (search, validation)</h2><table><tr><th>trial</th>"
            "<th>seed</th><th>MACs</th><th>bytes</th><th>validation %</th></tr>" + rows
            + "</table>")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"
