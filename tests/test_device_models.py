"""Device-specific models (DCASE 2025): fine-tuned per device, routed by device, exported."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from asc_search.architecture import ArchSpec, build_model
from asc_search.features.experiment import load_split_data
from asc_search.plugin_manager import build_plugin_manager
from asc_search.training.device_models import (
    DeviceTuning,
    fine_tune_devices,
    learnable,
    routed_logits,
)
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import precision_for, predict

PM = build_plugin_manager(load_entry_points=False)
SMALL = ArchSpec(base_channels=16, n_blocks=(1, 1, 1), strides={"b2": (2, 2), "b3": (2, 1)})


@pytest.fixture(scope="module")
def split_data(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_split_data(str(tiny_corpus), 25, pm=PM, cache_dir=tmp_path_factory.mktemp("c"),
                           progress=False)


def test_only_the_chosen_layers_learn() -> None:
    model = build_model(SMALL, pm=PM, seed=0)
    learnable(model, "head")
    assert all(p.requires_grad == name.startswith("head.") for name, p in model.named_parameters())
    learnable(model, "last_stage")
    last = f"stages.{list(dict(model.stages.named_children()))[-1]}."
    assert all(p.requires_grad == (name.startswith("head.") or name.startswith(last))
               for name, p in model.named_parameters())
    learnable(model, "all")
    assert all(p.requires_grad for p in model.parameters())


def test_each_device_model_learns_its_own_clips_and_routing_follows_the_device(split_data) -> None:
    train, validation = split_data.train, split_data.validation
    precision = precision_for("cpu")
    general = build_model(SMALL, pm=PM, seed=0)
    recipe = TrainingRecipe(epochs=1, batch_size=32, warmup_steps=0, learning_rate=0.01)
    frozen = {k: v.clone() for k, v in general.state_dict().items()}
    models = fine_tune_devices(general, train=train, teacher_logits=None, recipe=recipe,
                               tuning=DeviceTuning(epochs=1, layers="head"), precision=precision)
    # One model per training device with enough clips; the general network is untouched.
    counts = {d: train.devices.count(d) for d in set(train.devices)}
    assert set(models) == {d for d, n in counts.items() if n >= 8}
    assert all(torch.equal(frozen[k], v) for k, v in general.state_dict().items())
    a = models["a"].state_dict()
    stem = next(k for k in a if k.startswith("stem.") and k.endswith("weight"))
    assert torch.equal(a[stem], frozen[stem])  # frozen for a head-only tuning
    head = next(k for k in a if k.startswith("head.") and k.endswith("weight"))
    assert not torch.equal(a[head], frozen[head])
    routed = routed_logits(models, general, validation, precision=precision)
    devices = np.asarray(validation.devices)
    for device in set(validation.devices):
        rows = np.flatnonzero(devices == device)
        owner = models.get(device, general)  # an unknown device: the general model
        np.testing.assert_allclose(routed[rows], predict(owner, validation.features.subset(rows)),
                                   atol=1e-5)


@pytest.mark.slow
def test_run_in_the_2025_mode_reports_and_exports_device_models(cli, tiny_corpus: Path,
                                                               tmp_path: Path) -> None:
    result = cli("-q", "run", "--data", tiny_corpus, "--split", "25", "--proxy-epochs", "1",
                 "--teacher-epochs", "1", "--promote-epochs", "2", "--trials", "5",
                 "--device-specific", "--device-trials", "2", "--study", "devices")
    assert result.code == 0, result.err
    storage = f"sqlite:///{(tmp_path / 'studies' / 'asc-search.db').resolve()}"
    study = optuna.load_study(study_name="devices", storage=storage)
    finalists = {k: v for k, v in study.user_attrs.items() if k.startswith("finalist:")}
    with_devices = [r for r in finalists.values() if "device_specific" in r]
    assert len(with_devices) == 1
    # The device models are the recommended finalist's (the reference when no searched one
    # beats it on validation), not the best searched one's.
    assert with_devices[0]["trial"] == study.user_attrs["recommendation"]["trial"]
    assert with_devices[0]["recommended"]
    record = with_devices[0]["device_specific"]
    assert set(record["devices"]) <= {"a", "b", "c", "s1", "s2", "s3"} and "a" in record["devices"]
    assert len(record["tried"]) == 2
    for scores in (record["test"], record["general_test"]):
        assert 0 <= scores["known"] <= 1 and 0 <= scores["unknown"] <= 1  # s4-s6: general model
    assert set(record["test"]["per_device"]) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"}
    (page,) = (tmp_path / "studies" / "reports" / "devices").glob("*.html")
    assert "Device-specific models (DCASE 2025)" in page.read_text()
    out = tmp_path / "export"
    number = with_devices[0]["trial"]
    assert cli("-q", "export", "devices", "--trial", number, "--out", out).code == 0
    checkpoints = out / "inference" / "Asc_Search_task1" / "ckpts" / "Asc_Search_task1_1"
    assert {p.stem for p in checkpoints.glob("*.pt2")} == {"general", *record["devices"]}
    rows = list(csv.reader((out / "output.csv").open(), delimiter="\t"))
    assert len(rows) > 1
