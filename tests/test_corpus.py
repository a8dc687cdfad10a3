"""The embedded corpus: real TAU22 layout, deterministic, and shaped like the real task."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asc_search.data.check import check_dataset
from asc_search.data.dataset import SCENES, load_dataset
from asc_search.errors import DataError
from asc_search.plugins.embedded_corpus import (
    SCENE_RECIPES,
    SIZES,
    _split_lists,
    cached_corpus,
    make_plan,
    write_corpus,
)
from conftest import one_line_error


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_and_audio_format(tiny_corpus: Path) -> None:
    report = check_dataset(tiny_corpus, n_jobs=1)
    assert report.ok, report.problems
    assert not report.notes
    dataset = load_dataset(tiny_corpus)
    assert len(dataset.clips) == 460
    info = sf.info(str(tiny_corpus / next(iter(dataset.clips))))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44_100, 1, 44_100, "PCM_24")
    header = (tiny_corpus / "meta.csv").read_text().splitlines()[0]
    assert header == "filename\tscene_label\tidentifier\tsource_label"


def test_same_seed_same_bytes_regardless_of_workers(tiny_corpus: Path, tmp_path: Path) -> None:
    again = write_corpus(tmp_path / "again", seed=0, size="tiny", n_jobs=2)
    assert _digest(again) == _digest(tiny_corpus)
    other = write_corpus(tmp_path / "other", seed=1, size="tiny", n_jobs=1)
    name = sorted((other / "audio").iterdir())[0].name
    assert (other / "audio" / name).read_bytes() != (tiny_corpus / "audio" / name).read_bytes()


def test_devices_locations_and_folds(tiny_corpus: Path) -> None:
    dataset = load_dataset(tiny_corpus)
    fold, test, validation = dataset.training_fold, dataset.test, dataset.validation or ()
    assert {dataset.clips[n].device for n in test} == {"a", "b", "c", "s1", "s2", "s3", "s4",
                                                       "s5", "s6"}
    assert {dataset.clips[n].device for n in fold} == {"a", "b", "c", "s1", "s2", "s3"}
    assert {dataset.clips[n].device for n in validation} == {"a", "b", "c", "s1", "s2", "s3"}
    train_locations = {dataset.clips[n].location for n in fold}
    assert not train_locations & {dataset.clips[n].location for n in test}
    assert not train_locations & {dataset.clips[n].location for n in validation}
    assert {dataset.clips[n].scene for n in dataset.split_lists[5]} == set(SCENES)
    present = sorted(dataset.split_lists)
    for small, large in itertools.pairwise(present):
        assert set(dataset.split_lists[small]) <= set(dataset.split_lists[large])


def test_default_size_mirrors_the_real_device_mix() -> None:
    plan = make_plan(seed=0, size=SIZES["default"])
    lists = _split_lists(plan)
    assert [len(lists[p]) for p in (5, 10, 25, 50)] == [400, 800, 2000, 4000]
    for percent, rows in lists.items():
        devices = Counter(name.rsplit("-", 1)[1].removesuffix(".wav") for name, _ in rows)
        assert devices["a"] / len(rows) == pytest.approx(0.75), percent
        scenes = Counter(scene for _, scene in rows)
        assert max(scenes.values()) - min(scenes.values()) <= 0.05 * len(rows) + 5, percent
    # Splits are drawn as whole recordings, like the real lists.
    recordings = Counter(name.rsplit("-", 2)[0] for name, _ in lists[5])
    assert set(recordings.values()) == {SIZES["default"].clips_per_recording}


# The public DCASE 2024 lists (../shared/dcase2024/README.md; the 100 % fold: DESIGN.md §11).
REAL_SPLITS = {5: 6_980, 10: 13_960, 25: 34_900, 50: 69_800, 100: 139_620}
REAL_SPLIT5_DEVICES = {"a": 5_080, "b": 380, "c": 380, "s1": 380, "s2": 380, "s3": 380}
REAL_TEST_PER_DEVICE = 3_300


def test_full_size_has_the_real_counts_per_split_device_and_fold() -> None:
    plan = make_plan(seed=0, size=SIZES["full"])
    lists = _split_lists(plan)
    clips = SIZES["full"].clips_per_recording
    lists[100] = [(n, r.scene) for r in plan.recordings if r.fold == "train"
                  for n in r.clip_names(clips)]
    for percent, real in REAL_SPLITS.items():
        assert len(lists[percent]) == pytest.approx(real, rel=0.005), percent
    devices = Counter(name.rsplit("-", 1)[1].removesuffix(".wav") for name, _ in lists[5])
    for device, real in REAL_SPLIT5_DEVICES.items():
        assert devices[device] == pytest.approx(real, rel=0.01), device
    test = Counter(r.device for r in plan.recordings if r.fold == "test")
    assert set(test) == {"a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"}
    assert all(n * clips == pytest.approx(REAL_TEST_PER_DEVICE, rel=0.005) for n in test.values())
    locations = {r.location_id for r in plan.recordings if r.fold == "train"}
    assert 330 <= len(locations) <= 450  # the real split 50 holds 365


def test_an_interrupted_writer_resumes_from_its_finished_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from asc_search.plugins import embedded_corpus

    real, rendered = embedded_corpus._render_chunk, []

    def render(plan, recordings, audio_dir, index):
        if len(rendered) == 3:
            raise KeyboardInterrupt  # Ctrl-C after three chunks
        rendered.append(index)
        return real(plan, recordings, audio_dir, index)

    monkeypatch.setattr(embedded_corpus, "_render_chunk", render)
    with pytest.raises(KeyboardInterrupt):
        write_corpus(tmp_path / "c", seed=0, size="tiny", n_jobs=1)
    assert not (tmp_path / "c").exists() and (tmp_path / ".c.partial").is_dir()
    first = list(rendered)
    resumed: list[int] = []
    monkeypatch.setattr(embedded_corpus, "_render_chunk",
                        lambda plan, recs, audio, index: resumed.append(index)
                        or real(plan, recs, audio, index))
    folder = write_corpus(tmp_path / "c", seed=0, size="tiny", n_jobs=1)
    assert not set(first) & set(resumed), "finished chunks were rendered again"
    fresh = write_corpus(tmp_path / "fresh", seed=0, size="tiny", n_jobs=1)
    assert _digest(folder) == _digest(fresh)
    assert not (tmp_path / ".c.partial").exists()


def test_confusable_pairs_are_closer_than_unrelated_scenes() -> None:
    def distance(a: str, b: str) -> float:
        x, y = SCENE_RECIPES[a].strengths, SCENE_RECIPES[b].strengths
        return float(np.abs(np.array(list(x.values())) - np.array(list(y.values()))).sum())

    for pair, unrelated in ((("airport", "shopping_mall"), "street_traffic"),
                            (("metro", "metro_station"), "park"),
                            (("street_pedestrian", "public_square"), "metro"),
                            (("metro", "tram"), "airport")):
        assert distance(*pair) < distance(pair[0], unrelated), pair


def test_refuses_to_write_over_an_existing_folder(tmp_path: Path, cli) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_corpus(target, size="tiny")
    one_line_error(cli("data", "synth", "--size", "tiny", "--out", target), "taken")
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken")]


def test_cached_corpus_is_written_once(tmp_path: Path) -> None:
    first = cached_corpus(tmp_path, size="tiny")
    stamp = (first / "meta.csv").stat().st_mtime_ns
    assert cached_corpus(tmp_path, size="tiny") == first
    assert (first / "meta.csv").stat().st_mtime_ns == stamp
    (first / "corpus.json").unlink()  # an interrupted or older writer: rewritten from scratch
    assert cached_corpus(tmp_path, size="tiny") == first and (first / "corpus.json").is_file()


def test_synth_command_writes_a_checkable_corpus(cli, tmp_path: Path) -> None:
    result = cli("-q", "data", "synth", "--size", "tiny", "--out", tmp_path / "c", "--jobs", "1")
    assert result.code == 0 and "corpus ready" in result.out
    check = cli("-q", "data", "check", tmp_path / "c", "--jobs", "1")
    assert check.code == 0 and "no problems found" in check.out
    assert "split5.csv" in check.out and "test.csv" in check.out


def test_extra_validation_recordings_leave_every_other_clip_as_it_was() -> None:
    """The larger validation list adds recordings after all others: the training, test and first
    validation recordings (and so their audio, rendered from their index) are unchanged."""
    import dataclasses

    size = SIZES["default"]
    plan = make_plan(seed=0, size=size)
    without = make_plan(seed=0, size=dataclasses.replace(
        size, extra_validation_recordings_per_device=0))
    assert plan.recordings[:len(without.recordings)] == without.recordings
    extra = plan.recordings[len(without.recordings):]
    assert {r.fold for r in extra} == {"validation"}
    validation = [r for r in plan.recordings if r.fold == "validation"]
    assert len(validation) * size.clips_per_recording == 2_400
    # Still only the validation locations: none shared with training or test.
    held_out = {r.location_id for r in without.recordings if r.fold == "validation"}
    assert {r.location_id for r in extra} <= held_out
