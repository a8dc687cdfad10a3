"""References a user brings: their own hand-made network, set beside the published ones.

A search is judged against what a competent person would build by hand. The study's seed
trials are the published systems (the DCASE baseline and the seed's S1–S3); a user who has a
plan of their own adds it with ``run --reference``, as a spec file or as a trial of another
study, and it becomes one more seed trial: trained as given (unpruned, at the study's budget,
with its own training overrides), never stopped early, and the study's reference if it is the
best of them on validation.

Everything that can be wrong with one is found before any training, in one line naming it: a
file that cannot be read, a field the spec or the recipe does not know, a network over a budget,
a study or trial that is not there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pluggy

from asc_search.architecture import ArchSpec, SpecError, build_model
from asc_search.complexity import checked_complexity
from asc_search.errors import AscSearchError
from asc_search.training.recipe import TrainingRecipe

#: Keys of a structured reference file (a bare spec file is the ``spec`` alone).
REFERENCE_KEYS = ("label", "spec", "training")


class ReferenceError(AscSearchError):
    """A ``--reference`` that cannot be used."""


#: Recipe fields a reference may not set: the study's budget sets every network's length, and
#: the trial its seed.
NOT_A_REFERENCE_SETTING = ("epochs", "seed")


def read_reference(given: str, *, pm: pluggy.PluginManager, storage_url: str | None,
                   max_macs: int, max_param_bytes: int, storage_dtype: str = "float16",
                   fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The reference ``given`` names (a JSON file, or ``STUDY:TRIAL`` in ``storage_url``) as plain
    data (``label``, ``spec``, ``training``), checked: it builds, its recipe overrides are
    recipe fields the study lets a candidate set, and it fits both budgets. ``fixed``: the
    study's ``n_classes`` and ``in_channels`` (from its data), which a spec that leaves them
    out takes and one that names others is refused for."""
    path = Path(given)
    if path.exists():
        reference = _from_file(path)
    elif ":" in given and given.rsplit(":", 1)[1].isdigit():
        reference = _from_study(given, storage_url=storage_url)
    else:
        raise ReferenceError(f"reference {given}: no such file, nor a STUDY:TRIAL")
    where = f"reference {given}"
    kept = sorted(set(reference["training"]) & set(NOT_A_REFERENCE_SETTING))
    if kept:
        raise ReferenceError(f"{where}: training sets {', '.join(kept)}, which the study sets "
                             "for every network (its budget and the trial's seed)")
    try:
        TrainingRecipe().with_(**reference["training"])
    except AscSearchError as exc:
        raise ReferenceError(f"{where}: {exc}") from None
    for name, value in (fixed or {}).items():
        if name not in ("n_classes", "in_channels"):
            continue
        given_value = reference["spec"].setdefault(name, value)
        if given_value != value:
            raise ReferenceError(f"{where}: its {name} is {given_value}, the study's data "
                                 f"has {value}")
    try:
        spec = ArchSpec.from_dict(reference["spec"])
        card = checked_complexity(build_model(spec, pm=pm), pm=pm, storage_dtype=storage_dtype)
    except AscSearchError as exc:
        raise ReferenceError(f"{where}: {exc}") from None
    if not card.fits(max_macs=max_macs, max_param_bytes=max_param_bytes):
        raise ReferenceError(
            f"{where} breaks the budget: {card.macs:,} MACs and {card.param_bytes:,} bytes "
            f"({storage_dtype}) against {max_macs:,} and {max_param_bytes:,}")
    return {"label": reference["label"], "spec": spec.to_dict(),
            "training": dict(reference["training"])}


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ReferenceError(f"reference {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ReferenceError(f"reference {path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ReferenceError(f"reference {path}: expected a JSON object")
    if "spec" not in data:  # a bare spec, as ``asc-search count --spec`` reads
        return {"label": f"reference:{path.stem}", "spec": dict(data), "training": {}}
    unknown = sorted(set(data) - set(REFERENCE_KEYS))
    if unknown:
        raise ReferenceError(f"reference {path}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(REFERENCE_KEYS)})")
    if not isinstance(data["spec"], Mapping) or not isinstance(data.get("training", {}),
                                                               Mapping):
        raise ReferenceError(f"reference {path}: spec and training must be JSON objects")
    return {"label": str(data.get("label", f"reference:{path.stem}")), "spec": dict(data["spec"]),
            "training": dict(data.get("training", {}))}


def _from_study(given: str, *, storage_url: str | None) -> dict[str, Any]:
    from asc_search.study.storage import load_study

    name, number = given.rsplit(":", 1)
    if storage_url is None:
        raise ReferenceError(f"reference {given}: no storage to find study {name!r} in")
    try:
        study = load_study(name, storage_url)
    except AscSearchError as exc:  # a study not there, or a name with / or ..
        raise ReferenceError(f"reference {given}: {exc}") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(int(number))
    if trial is None:
        raise ReferenceError(f"reference {given}: study {name!r} has no trial {number}")
    attrs = trial.user_attrs
    if attrs.get("status") != "trained" or "pruned_spec" not in attrs:
        raise ReferenceError(f"reference {given}: trial {number} trained no network "
                             f"({attrs.get('status', trial.state.name.lower())})")
    # The network the trial ended with (pruned, if its plan pruned), trained here as it is.
    return {"label": f"reference:{name}#{number}", "spec": dict(attrs["pruned_spec"]),
            "training": dict(attrs.get("training", {}))}


def reference_spec(reference: Mapping[str, Any]) -> ArchSpec:
    """The network a stored reference trains."""
    try:
        return ArchSpec.from_dict(reference["spec"])
    except SpecError as exc:
        raise ReferenceError(f"{reference.get('label', 'reference')}: {exc}") from None
