"""DESIGN.md §7 through ``asc-search run``, as a user would type it.

Every case must end in one line naming the culprit, exit status 2, and nothing left behind that a
later run could take as valid: no study in the storage, no report, no cached teacher, and (for bad
audio) no cached features. The lower-level tests of each check live beside the code
(test_bad_data.py, test_count_cli.py, test_plugins.py); this file proves the product command
reaches them before it writes anything.
"""

from __future__ import annotations

import csv
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest

from conftest import noise, one_line_error, write_wav

SPACES = Path(__file__).resolve().parents[1] / "spaces"


def _listed(corpus: Path, index: int = 0) -> Path:
    """The ``index``-th clip of the 5 % split (the files ``run --split 5`` trains on)."""
    rows = (corpus / "split5.csv").read_text().splitlines()[1:]
    return corpus / rows[index].split("\t")[0]


def _space(tmp: Path, old: str, new: str) -> list[str]:
    text = (SPACES / "cp_mobile.toml").read_text()
    assert old in text
    path = tmp / "space.toml"
    path.write_text(text.replace(old, new))
    return ["--space", str(path)]


def _extending(tmp: Path, base: str) -> list[str]:
    """A space that extends ``base`` and adds one dimension."""
    path = tmp / "space.toml"
    path.write_text(f'extends = "{base}"\n[dimensions.kd_weight]\ntype = "categorical"\n'
                    'choices = [0.9, 0.98]\n')
    return ["--space", str(path)]


def _drop_column(corpus: Path, tmp: Path) -> list[str]:
    rows = list(csv.reader((corpus / "meta.csv").open(), delimiter="\t"))
    gone = rows[0].index("scene_label")
    with (corpus / "meta.csv").open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows([r[:gone] + r[gone + 1:] for r in rows])
    return []


def _truncate(corpus: Path, tmp: Path) -> list[str]:
    victim = _listed(corpus)
    victim.write_bytes(victim.read_bytes()[:5000])
    return []


def _unlink(corpus: Path, tmp: Path) -> list[str]:
    _listed(corpus).unlink()
    return []


def _not_wav(corpus: Path, tmp: Path) -> list[str]:
    _listed(corpus).write_text("not audio\n")
    return []


def _silent(corpus: Path, tmp: Path) -> list[str]:
    write_wav(_listed(corpus), np.zeros(44_100, np.float32))
    return []


def _nan(corpus: Path, tmp: Path) -> list[str]:
    samples = noise()
    samples[100] = np.nan
    write_wav(_listed(corpus), samples, subtype="FLOAT")
    return []


def _broken_response(corpus: Path, tmp: Path) -> list[str]:
    (tmp / "irs").mkdir()
    (tmp / "irs" / "mic.wav").write_text("not audio\n")
    # The default space searches device_response_p, so a folder given is checked up front.
    return ["--device-responses", str(tmp / "irs")]


def _reference(tmp: Path, text: str) -> list[str]:
    """A ``--reference`` file holding ``text``."""
    path = tmp / "mine.json"
    path.write_text(text)
    return ["--reference", str(path)]


Case = tuple[Callable[[Path, Path], list[str]], tuple[str, ...], bool]
#: id -> (break the corpus copy / make files and return extra run arguments, what the one line
#: must say, whether the failure comes from the audio, so no features may be cached either)
CASES: dict[str, Case] = {
    "missing data folder": (lambda c, t: ["--data", str(t / "nowhere")],
                            ("nowhere", "data folder not found"), True),
    "meta.csv without scene_label": (_drop_column, ("meta.csv", "missing column scene_label"),
                                     True),
    "split lists a missing file": (_unlink, ("listed but not found",), True),
    "truncated wav": (_truncate, ("truncated",), True),
    "not a wav": (_not_wav, ("not a readable WAV file",), True),
    "nan audio": (_nan, ("contains NaN",), True),
    "silent audio": (_silent, ("is silent",), True),
    "budget 30Q": (lambda c, t: ["--budget-macs", "30Q"], ("--budget-macs '30Q'",), True),
    "budget -5M": (lambda c, t: ["--budget-macs", "-5M"], ("--budget-macs '-5M'",), True),
    "budget 0": (lambda c, t: ["--budget-macs", "0"], ("--budget-macs '0'", "positive"), True),
    "bytes budget 12 parsecs": (lambda c, t: ["--budget-bytes", "12 parsecs"],
                                ("--budget-bytes",), True),
    "budget nothing meets": (lambda c, t: ["--budget-macs", "500k"],
                             ("no network in space 'sscp_joint' fits 500,000 MACs",
                              "smallest counts"), True),
    "unknown space": (lambda c, t: ["--space", "nope"], ("unknown space 'nope'",), True),
    "space extends an unknown space": (lambda c, t: _extending(t, "sscp_fil"),
                                       ("space.toml: extends 'sscp_fil'",
                                        "unknown space 'sscp_fil'"), True),
    "space extends itself": (lambda c, t: _extending(t, "space.toml"),
                             ("extend each other in a cycle", "space.toml → space.toml"), True),
    "unknown architecture": (lambda c, t: _space(t, 'arch = "cp_mobile"', 'arch = "resnet9"'),
                             ("arch 'resnet9' is not known", "known: cp_mobile"), True),
    "unknown metric": (lambda c, t: _space(t, '"fpgm"]', '"fpgm", "nope"]'),
                       ("importance 'nope' is not known", "known: bn_scale"), True),
    "unknown schedule": (lambda c, t: _space(t, '"agp"]', '"agp", "zigzag"]'),
                         ("schedule 'zigzag' is not known", "known: agp"), True),
    "unknown plugin": (lambda c, t: ["--plugin", "nope_plugin"],
                       ("unknown plugin module 'nope_plugin'", "installed plugins"), True),
    "unknown teacher": (lambda c, t: ["--teacher", "oracle"],
                        ("unknown teacher 'oracle'", "known: logits_file"), False),
    "unknown sampler": (lambda c, t: ["--sampler", "bayes"], ("'bayes' is not one of",), True),
    "study name with /": (lambda c, t: ["--study", "a/b"], ("'a/b' is not allowed",), True),
    "study name ..": (lambda c, t: ["--study", ".."], ("'..' is not allowed",), True),
    "study name ../x": (lambda c, t: ["--study", "../x"], ("'../x' is not allowed",), True),
    "unreachable postgres": (
        lambda c, t: ["--storage", "postgresql://asc:hunter2-secret@127.0.0.1:1/studies"],
        ("cannot open study storage postgresql://asc:***@127.0.0.1:1/studies",), True),
    "unusable sqlite path": (lambda c, t: ["--storage", f"sqlite:///{t / 'a-file' / 'x.db'}"],
                             ("cannot open study storage",), True),
    "missing impulse-response folder": (
        lambda c, t: ["--device-responses", str(t / "micirp")],
        ("micirp", "device impulse-response folder not found"), True),
    "impulse response not a wav": (_broken_response, ("mic.wav", "not a readable WAV file"), True),
    "study-wide device responses in a space that searches them": (
        lambda c, t: ["--device-response-p", "0.5"],
        ("--device-response-p 0.5", "searches device_response_p"), True),
    "reference not there": (lambda c, t: ["--reference", str(t / "mine.json")],
                            ("mine.json", "no such file, nor a STUDY:TRIAL"), True),
    "reference not json": (lambda c, t: _reference(t, "base_channels: 32"),
                           ("mine.json", "not valid JSON"), True),
    "reference with an unknown spec field": (
        lambda c, t: _reference(t, '{"arch": "cp_mobile", "base_chanels": 40}'),
        ("mine.json", "unknown spec field(s): base_chanels"), True),
    "reference with an unknown recipe field": (
        lambda c, t: _reference(t, '{"spec": {"arch": "cp_mobile"}, "training": {"cutmix": 1}}'),
        ("mine.json", "unknown recipe setting(s): cutmix"), True),
    "reference over the budget": (
        lambda c, t: _reference(t, '{"arch": "cp_mobile", "base_channels": 64}'),
        ("mine.json", "breaks the budget"), True),
    "reference of a study not there": (lambda c, t: ["--reference", "elsewhere:3"],
                                       ("elsewhere:3", "no study 'elsewhere'"), True),
}


@pytest.fixture
def corpus(tiny_corpus: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_corpus, tmp_path / "corpus"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_refuses_in_one_line_and_leaves_nothing(case: str, cli, corpus: Path,
                                                    tmp_path: Path) -> None:
    prepare, needles, no_features = CASES[case]
    (tmp_path / "a-file").write_text("not a folder")
    extra = prepare(corpus, tmp_path)
    result = cli("run", "--data", corpus, "--split", "5", "--teacher-epochs", "1", "--trials",
                 "1", "--promote", "0", *extra)
    one_line_error(result, *needles)
    assert "hunter2-secret" not in result.out + result.err
    studies, cache = tmp_path / "studies", tmp_path / "cache"
    database = studies / "asc-search.db"
    if database.exists():
        storage = optuna.storages.RDBStorage(f"sqlite:///{database}")
        assert optuna.get_all_study_summaries(storage) == []  # no half-made study
    assert not (studies / "reports").exists()
    assert not any((cache / "teachers").glob("*"))
    if no_features:
        assert not any((cache / "features").glob("*"))


def test_stereo_and_other_rates_are_downmixed_and_resampled(cli, corpus: Path,
                                                            tmp_path: Path) -> None:
    write_wav(_listed(corpus, 0), noise(channels=2))
    write_wav(_listed(corpus, 1), noise(rate=48_000), rate=48_000)
    result = cli("-q", "run", "--data", corpus, "--split", "5", "--teacher-epochs", "1",
                 "--proxy-epochs", "1", "--trials", "1", "--promote", "0", "--study", "mixed")
    assert result.code == 0, result.err
    trial = optuna.load_study(study_name="mixed",
                              storage=f"sqlite:///{tmp_path / 'studies' / 'asc-search.db'}").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE


def test_corrupt_cache_files_are_detected_and_rebuilt(cli, corpus: Path, tmp_path: Path,
                                                     caplog) -> None:
    command = ("-q", "run", "--data", corpus, "--split", "5", "--teacher-epochs", "1",
               "--proxy-epochs", "1", "--promote", "0", "--no-seed-trials", "--study", "cached")
    assert cli(*command, "--trials", "1").code == 0
    cache = tmp_path / "cache"
    features = sorted((cache / "features").glob("*/features.npy"))
    ensemble = next((cache / "teachers").glob("*/ensemble.npy"))
    for path in features:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a crash mid-copy
    ensemble.write_bytes(b"\x93NUMPY garbage")
    again = cli(*command, "--trials", "2")
    assert again.code == 0, again.err
    assert caplog.text.count("is unusable") == len(features) + 1
    for path in features:  # rebuilt whole, readable again
        assert np.load(path, mmap_mode="r").shape[0] > 0
    assert np.isfinite(np.load(ensemble)).all()


FLAKY_PLUGIN = textwrap.dedent('''
    """An importance metric that raises the first time a trial uses it, then works (as L2)."""
    import torch_pruning as tp

    from asc_search.hookspecs import hookimpl
    from asc_search.plugin_types import ImportanceMetric

    CALLS = []


    def make():
        CALLS.append(1)
        if len(CALLS) == 1:
            raise RuntimeError("flaky importance: out of luck")
        return tp.importance.GroupMagnitudeImportance(p=2)


    @hookimpl
    def asc_importance_metrics():
        return [ImportanceMetric(name="flaky", description="fails once", make=make)]
''')


@pytest.mark.slow
def test_a_plugin_raising_in_a_trial_fails_that_trial_only(cli, tiny_corpus: Path,
                                                           tmp_path: Path, monkeypatch) -> None:
    name = f"flaky_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FLAKY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    # Every candidate fits the budget and is pruned with the plugin's metric.
    space = _space(tmp_path, "low = 16\nhigh = 40", "low = 24\nhigh = 24")
    (tmp_path / "space.toml").write_text(
        (tmp_path / "space.toml").read_text()
        .replace('choices = [1.0, 1.5, 2.0, 3.0]', 'choices = [2.0]')
        .replace('choices = ["l1", "l2", "bn_scale", "taylor", "fpgm"]', 'choices = ["flaky"]')
        .replace('low = 1.4\nhigh = 2.2', 'low = 1.4\nhigh = 1.6'))
    result = cli("-q", "--plugin", name, "run", "--data", tiny_corpus, "--split", "25",
                 "--teacher-epochs", "1", "--proxy-epochs", "1", "--trials", "3", "--promote",
                 "0", "--no-seed-trials", "--study", "flaky", *space)
    assert result.code == 0, result.err
    assert "failed: RuntimeError: flaky importance: out of luck" in result.out
    trials = optuna.load_study(study_name="flaky",
                               storage=f"sqlite:///{tmp_path / 'studies' / 'asc-search.db'}").trials
    states = [t.state for t in trials]
    assert states[0] == optuna.trial.TrialState.FAIL
    assert "flaky importance: out of luck" in trials[0].user_attrs["traceback"]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # the study went on
    assert all(t.user_attrs["plan"]["importance"] == "flaky" for t in trials)
    shown = cli("studies", "show", "flaky", "--failed")
    assert "--- trial 0 failed:" in shown.out and "Traceback" in shown.out
