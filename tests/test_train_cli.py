"""``asc-search train`` and ``teachers fit`` as a user types them (slow; run in CI)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asc_search.training.checkpoint import load_checkpoint
from conftest import one_line_error

pytestmark = pytest.mark.slow
QUICK = ("--epochs", "2", "--batch-size", "32", "--warmup-steps", "2", "--base-channels", "16")


def test_train_with_kd_prints_the_evaluation_and_saves(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    # In ``teachers fit``, --epochs is the teachers'; the distillation options are not theirs.
    fitted = cli("-q", "teachers", "fit", "--data", tiny_corpus, "--split", "25",
                 "--teacher", "wide_cp_mobile=16", "--epochs", "1", "--batch-size", "32",
                 "--kd-weight", "0.5")
    assert fitted.code == 0, fitted.err
    assert "wide_cp_mobile" in fitted.out and "ensemble logits fitted" in fitted.out
    # Each teacher and the ensemble: agreement on the training clips, validation with its CI.
    assert re.search(r"ensemble\W+\d+\.\d\W+\d+\.\d \(\d+\.\d–\d+\.\d\)", fitted.out), \
        fitted.out
    # The student's own --epochs and --warmup-steps do not reach its teachers: the same entry.
    out = tmp_path / "student.pt"
    result = cli("-q", "train", "--data", tiny_corpus, "--split", "25", "--kd",
                 "--teacher", "wide_cp_mobile=16", "--teacher-epochs", "1", *QUICK, "--out", out)
    assert result.code == 0, result.err
    assert "teacher ensemble: cache hit" in result.out
    for needle in ("macro accuracy %", "unseen devices", "device s6", "street_traffic", "test"):
        assert needle in result.out
    checkpoint = load_checkpoint(out)
    assert checkpoint.spec.base_channels == 16 and checkpoint.metadata["kd"] is True
    assert 0 <= checkpoint.metadata["test_macro_accuracy"] <= 1


def test_teachers_fit_fills_the_entry_a_default_run_reads(cli, tiny_corpus: Path,
                                                          tmp_path: Path) -> None:
    """With no recipe options, ``teachers fit`` trains the teachers exactly as ``run`` does (the
    search's batch for the split, 10 % warm-up), so the run finds them cached; and it warns
    when they have memorised the split."""
    from asc_search.features.experiment import load_split_data
    from asc_search.plugin_manager import build_plugin_manager
    from asc_search.study.objective import SearchSettings
    from asc_search.teachers.ensemble import ensemble_logits

    fitted = cli("-q", "teachers", "fit", "--data", tiny_corpus, "--split", "25",
                 "--teacher", "wide_cp_mobile=16", "--teacher-epochs", "1")
    assert fitted.code == 0, fitted.err
    run = SearchSettings(space={}, space_source="", teachers=("wide_cp_mobile=16",),
                         teacher_epochs=1)
    pm = build_plugin_manager()
    cache = tmp_path / "cache"
    data = load_split_data(str(tiny_corpus), 25, pm=pm, cache_dir=cache, progress=False)
    again = ensemble_logits(data.train, teacher_names=run.teachers, pm=pm, cache_dir=cache,
                            recipe=run.teacher_recipe(len(data.train)), progress=False)
    assert again.cache_hit
    agreement = re.search(r"ensemble\W+(\d+\.\d)", fitted.out)
    assert agreement, fitted.out
    assert ("memorised the split" in fitted.out) == (float(agreement.group(1)) >= 99.9)


def test_train_help_shows_the_published_recipe(cli) -> None:
    text = cli("train", "--help").out
    for needle in ("[default: 150]", "[default: 256]", "[default: 0.005]", "[default: 2000]",
                   "[default: 0.4]", "[default: 48]", "[default: 0.98]"):
        assert needle in text, needle


def test_train_bad_input(cli, tiny_corpus: Path) -> None:
    one_line_error(cli("train", "--data", tiny_corpus, "--kd", "--teacher", "pass_t", *QUICK),
                   "unknown teacher 'pass_t'")
    one_line_error(cli("train", "--data", tiny_corpus, "--epochs", "0"), "epochs")
