"""``asc-search count``: the complexity card for presets, spec files, flags and checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from asc_search.architecture import ArchSpec, build_model
from asc_search.plugin_manager import build_plugin_manager
from asc_search.training.checkpoint import load_checkpoint, save_checkpoint
from conftest import one_line_error

PM = build_plugin_manager(load_entry_points=False)


def test_preset_json(cli) -> None:
    result = cli("count", "--preset", "dcase-baseline", "--json")
    data = json.loads(result.out)
    assert (data["macs"], data["params"], data["param_bytes"]) == (29_419_156, 61_148, 122_296)
    assert data["fits"] is True


def test_spec_file_json(cli, tmp_path: Path) -> None:
    spec = ArchSpec(arch="sscp_mobile", base_channels=24, factorization=("parallel",) * 3)
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    data = json.loads(cli("count", "--spec", path, "--json").out)
    assert data["spec"] == spec.to_dict() and data["macs"] < 30_000_000
    assert {"macs", "params", "param_bytes"} <= set(data)


def test_flags_override_and_table(cli) -> None:
    result = cli("count", "--preset", "dcase-baseline", "--base-channels", "48", "--layers")
    assert result.code == 0
    assert "FAIL" in result.out and "stages.s1.b1.expand.0" in result.out
    flags = cli("count", "--arch", "sscp_mobile", "--factorization", "sequential,plain,parallel",
                "--json")
    assert json.loads(flags.out)["spec"]["factorization"] == ["sequential", "plain", "parallel"]


def test_budget_and_dtype_options(cli) -> None:
    data = json.loads(cli("count", "--dtype", "float32", "--budget-bytes", "250kB", "--json").out)
    assert data["param_bytes"] == 244_592 and data["fits"] is True
    widest = json.loads(cli("count", "--largest", "--budget-macs", "10M", "--json").out)
    assert widest["largest_fitting_base_channels"] == 16


def test_checkpoint_round_trip(cli, tmp_path: Path) -> None:
    spec = ArchSpec(channel_overrides={"b6.expand": 96})
    model = build_model(spec, pm=PM)
    path = save_checkpoint(tmp_path / "m.pt", spec=spec, state_dict=model.state_dict(),
                           metadata={"epochs": 3})
    loaded = load_checkpoint(path)
    assert loaded.spec == spec and loaded.metadata == {"epochs": 3}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict[key], value)
    data = json.loads(cli("count", "--checkpoint", path, "--json").out)
    assert data["spec"]["channel_overrides"] == {"b6.expand": 96}
    assert data["params"] == sum(p.numel() for p in model.parameters())


class _Payload:
    def __reduce__(self):
        return (os.makedirs, (os.environ["ASC_TEST_MARKER"],))


def test_foreign_pickle_is_never_unpickled(cli, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "was-unpickled"
    monkeypatch.setenv("ASC_TEST_MARKER", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "asc-search-checkpoint/1", "payload": _Payload()}, evil)
    one_line_error(cli("count", "--checkpoint", evil), "evil.pt", "not an asc-search checkpoint")
    assert not marker.exists()
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    one_line_error(cli("count", "--checkpoint", plain), "no 'asc-search-checkpoint/1' marker")


def test_bad_input_is_one_line(cli, tmp_path: Path) -> None:
    for budget in ("30Q", "-5M", "0"):
        one_line_error(cli("count", "--budget-macs", budget), repr(budget))
    one_line_error(cli("count", "--preset", "nope"), "unknown preset 'nope'", "dcase-baseline")
    one_line_error(cli("count", "--arch", "resnet"), "unknown architecture 'resnet'")
    one_line_error(cli("count", "--spec", tmp_path / "missing.json"), "missing.json")
    (tmp_path / "bad.json").write_text("{")
    one_line_error(cli("count", "--spec", tmp_path / "bad.json"), "not valid JSON")
    one_line_error(cli("count", "--preset", "dcase-baseline", "--spec", tmp_path / "bad.json"),
                   "at most one of")
