"""A corpus with its own scenes: the classes come from meta.csv and travel with every artefact."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import optuna
import pytest

from asc_search.data.dataset import SCENES, load_dataset, scene_classes
from asc_search.training.checkpoint import load_checkpoint

#: The ten DCASE scenes folded into three: another class set on the same audio.
FOLDED = {"airport": "indoor", "shopping_mall": "indoor", "metro_station": "indoor",
          "park": "outdoor", "public_square": "outdoor", "street_pedestrian": "outdoor",
          "street_traffic": "outdoor", "bus": "vehicle", "metro": "vehicle", "tram": "vehicle"}


def _fold(corpus: Path) -> Path:
    for listed in corpus.glob("*.csv"):
        rows = list(csv.reader(listed.open(), delimiter="\t"))
        column = rows[0].index("scene_label")
        for row in rows[1:]:
            row[column] = FOLDED[row[column]]
        with listed.open("w", newline="") as handle:
            csv.writer(handle, delimiter="\t", lineterminator="\n").writerows(rows)
    return corpus


@pytest.fixture
def folded(tiny_corpus: Path, tmp_path: Path) -> Path:
    return _fold(Path(shutil.copytree(tiny_corpus, tmp_path / "folded")))


def test_the_classes_are_the_data_s_and_the_dcase_order_is_kept() -> None:
    assert scene_classes(["park", "bus"]) == SCENES  # a DCASE corpus keeps its ten outputs
    assert scene_classes(["vehicle", "indoor", "outdoor", "indoor"]) == ("indoor", "outdoor",
                                                                         "vehicle")


@pytest.mark.slow
def test_a_three_class_corpus_runs_the_chain(cli, folded: Path, tmp_path: Path) -> None:
    assert load_dataset(folded).classes == ("indoor", "outdoor", "vehicle")
    check = cli("data", "check", folded, "--quick")
    assert check.code == 0 and "classes from meta.csv: indoor, outdoor, vehicle" in check.out

    trained = tmp_path / "baseline.pt"
    result = cli("-q", "train", "--data", folded, "--split", "25", "--epochs", "1",
                 "--batch-size", "32", "--warmup-steps", "2", "--out", trained)
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(trained)
    assert checkpoint.spec.n_classes == 3 and checkpoint.metadata["classes"] == [
        "indoor", "outdoor", "vehicle"]
    assert "vehicle" in result.out and "airport" not in result.out  # per-class rows

    result = cli("-q", "run", "--data", folded, "--split", "25", "--proxy-epochs", "1",
                 "--teacher-epochs", "1", "--promote-epochs", "2", "--trials", "5",
                 "--study", "folded")
    assert result.code == 0, result.err
    storage = f"sqlite:///{(tmp_path / 'studies' / 'asc-search.db').resolve()}"
    study = optuna.load_study(study_name="folded", storage=storage)
    finalists = {k: v for k, v in study.user_attrs.items() if k.startswith("finalist:")}
    assert finalists and all(r["spec"]["n_classes"] == 3 for r in finalists.values())
    number = next(iter(finalists.values()))["trial"]
    out = tmp_path / "export"
    exported = cli("-q", "export", "folded", "--trial", number, "--out", out)
    assert exported.code == 0, exported.err
    rows = list(csv.reader((out / "output.csv").open(), delimiter="\t"))
    assert rows[0] == ["filename", "scene_label", "indoor", "outdoor", "vehicle"]
    assert {row[1] for row in rows[1:]} <= {"indoor", "outdoor", "vehicle"}
    model = load_checkpoint(out / "model.pt")
    assert model.metadata["classes"] == ["indoor", "outdoor", "vehicle"]
    assert model.spec.n_classes == 3
