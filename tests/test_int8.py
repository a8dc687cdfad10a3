"""int8 storage: the byte count's bound, quantisation-aware fine-tuning, the converted program."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asc_search.architecture import ArchSpec, build_model
from asc_search.complexity import count_complexity, int8_param_bytes
from asc_search.features.experiment import load_split_data
from asc_search.plugin_manager import build_plugin_manager
from asc_search.training.int8 import (
    Int8Network,
    load_int8,
    prepare_qat,
    quantization_aware_fit,
    stored_bytes,
)
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import precision_for, predict

PM = build_plugin_manager()


@pytest.fixture(scope="module")
def split_data(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_split_data(str(tiny_corpus), 25, pm=PM, cache_dir=tmp_path_factory.mktemp("c"),
                           progress=False)


def _converted(model: torch.nn.Module) -> Int8Network:
    """The model converted without training: fake quantisers calibrated on one batch."""
    from asc_search.training.int8 import convert

    prepared = prepare_qat(model)
    prepared.train()
    with torch.no_grad():
        prepared(torch.randn(4, 1, 256, 65))
    return convert(prepared)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [ArchSpec(base_channels=16),
                                  ArchSpec(base_channels=24, n_blocks=(2, 1, 1))],
                         ids=["baseline-16", "blocks-2-1-1"])
def test_the_pre_check_bound_holds_the_converted_programs_own_count(spec: ArchSpec) -> None:
    model = build_model(spec, pm=PM, seed=0)
    bound = int8_param_bytes(model)
    real = _converted(model).stored_bytes
    float16 = count_complexity(model).param_bytes
    # Never under: a candidate the pre-check passes fits once converted. Barely over: the
    # bound gives away at most the activation quantisers it could not see (16 B a layer).
    layers = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in model.modules())
    assert real <= bound <= real + 16 * layers
    # int8 really is about half of float16 here (weights 1 B, per-channel extras on top).
    assert 0.5 * float16 < real < 0.8 * float16
    assert count_complexity(model, storage_dtype="int8").param_bytes == bound


@pytest.mark.slow
def test_qat_fine_tune_converts_to_int8_weights_that_predict_and_round_trip(
        split_data, tmp_path: Path) -> None:
    model = build_model(ArchSpec(base_channels=8), pm=PM, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = TrainingRecipe(batch_size=16, epochs=1, learning_rate=0.01, warmup_steps=0, seed=3)
    network, history = quantization_aware_fit(
        model, split_data.train, recipe, steps=3, teacher_logits=None,
        precision=precision_for("cpu"))
    assert len(history.losses) >= 1
    # The float network got the fine-tuned weights back (a longer fine-tune continues from them).
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    weights = [t for t in network.program.state_dict().values() if t.dtype == torch.int8]
    assert weights and sum(t.numel() for t in weights) > 0.9 * sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    logits = predict(network, split_data.validation.features, precision=precision_for("cpu"))
    assert logits.shape == (len(split_data.validation), 10) and np.isfinite(logits).all()
    # The int8 program is what is scored, not the float network with rounding simulated.
    float_logits = predict(model, split_data.validation.features, precision=precision_for("cpu"))
    assert not np.allclose(logits, float_logits)
    path = tmp_path / "model.pt2"
    network.save(path)
    again = load_int8(path)
    assert np.array_equal(predict(again, split_data.validation.features), logits)
    assert stored_bytes(again.program) == network.stored_bytes
    with pytest.raises(Exception, match="cannot be trained"):
        network.train()


def test_the_storage_space_keeps_the_seed_plans_float16_and_fills_int8_wider() -> None:
    from asc_search.pruning.plans import candidate_of
    from asc_search.study.lifecycle import seed_params
    from asc_search.study.space import load_space

    space = load_space("sscp_fill_storage", pm=PM)
    seeds = seed_params(space)
    assert {"dcase-baseline", "seed-S1", "seed-S2", "seed-S3"} <= set(seeds)
    assert {params["storage"] for params in seeds.values()} == {"float16"}
    # Widths kept late, where a parameter costs few MACs: in float16 the bytes bind first.
    # (Kept evenly, the 30 M MACs bind at about the same width as 128 kB of float16, and int8
    # buys nothing: budget filling then gives both the same network.)
    values = {"parent": "seed-s2-start", "keep_stem": 0.2, "keep_s1": 0.2, "keep_s2": 0.6,
              "keep_s3": 1.0, "keep_expand": 0.5, "importance": "l2", "schedule": "one_shot",
              "prune_stages": 1}
    filled = {storage: candidate_of(space, {**values, "storage": storage}, pm=PM,
                                    max_macs=30_000_000, max_param_bytes=128_000)
              for storage in ("float16", "int8")}
    cards = {storage: count_complexity(build_model(c.spec, pm=PM), storage_dtype=storage)
             for storage, c in filled.items()}
    # Each fills the bytes at its own size: int8 holds far more parameters in the same budget.
    for card in cards.values():
        assert card.param_bytes <= 128_000 and card.macs <= 30_000_000
    assert cards["int8"].params > 1.3 * cards["float16"].params
    assert cards["float16"].param_bytes > 0.99 * 128_000 > cards["float16"].macs / 30_000_000 * 128_000


@pytest.mark.slow
def test_an_int8_study_searches_promotes_and_exports_its_int8_program(
        cli, tiny_corpus: Path, tmp_path: Path) -> None:
    import csv
    import json

    import optuna

    result = cli("-q", "run", "--data", tiny_corpus, "--split", "25", "--proxy-epochs", "1",
                 "--teacher-epochs", "1", "--promote-epochs", "2", "--trials", "2",
                 "--promote", "1", "--dtype", "int8", "--study", "int8")
    assert result.code == 0, result.err
    storage = f"sqlite:///{(tmp_path / 'studies' / 'asc-search.db').resolve()}"
    study = optuna.load_study(study_name="int8", storage=storage)
    trained = [t for t in study.trials if t.user_attrs.get("status") == "trained"]
    assert trained and all(t.user_attrs["storage"] == "int8" and "int8_artifact" in t.user_attrs
                           for t in trained)
    (record,) = [v for k, v in study.user_attrs.items() if k.startswith("finalist:")]
    assert record["storage"] == "int8" and record["param_bytes"] <= 128_000
    (page,) = (tmp_path / "studies" / "reports" / "int8").glob("*.html")
    assert f"{record['param_bytes']:,} (int8)" in page.read_text()
    out = tmp_path / "export"
    assert cli("-q", "export", "int8", "--trial", record["trial"], "--out", out).code == 0
    network = load_int8(out / "model_int8.pt2")
    card = json.loads((out / "complexity.json").read_text())
    # The card counts the program that ships, and the program is the one promotion tested.
    assert card["param_bytes"] == network.stored_bytes == record["param_bytes"]
    assert card["storage_dtype"] == "int8"
    rows = list(csv.reader((out / "output.csv").open(), delimiter="\t"))
    predicted = [row[1] for row in rows[1:]]
    truth = {}
    for row in csv.reader((tiny_corpus / "test.csv").open(), delimiter="\t"):
        truth[row[0]] = row[1]
    accuracy = np.mean([p == truth[r[0]] for p, r in zip(predicted, rows[1:], strict=True)])
    assert abs(accuracy - record["test"]["macro"]) < 0.15  # the same network, micro vs macro
    checkpoints = out / "inference" / "Asc_Search_task1" / "ckpts" / "Asc_Search_task1_1"
    assert (checkpoints / "general.pt2").is_file()


def test_the_2025_mode_refuses_int8_storage_in_one_line(cli, tiny_corpus: Path,
                                                         tmp_path: Path) -> None:
    from conftest import one_line_error

    for extra in (("--dtype", "int8"), ("--space", "sscp_fill_storage")):
        result = cli("-q", "run", "--data", tiny_corpus, "--split", "25", "--device-specific",
                     *extra)
        one_line_error(result, "--device-specific with int8 storage")
    assert not (tmp_path / "studies" / "asc-search.db").exists()  # refused before any study
