"""The loader on the real DCASE 2024 split lists (../shared/dcase2024), with short generated WAVs."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asc_search.data.check import check_dataset
from asc_search.data.dataset import load_dataset, parse_filename
from asc_search.errors import DataError
from conftest import SHARED_LISTS

# The device counts of the public lists (shared/dcase2024/README.md).
EXPECTED = {
    5: {"a": 5080, "b": 380, "c": 380, "s1": 380, "s2": 380, "s3": 380},
    10: {"a": 10190, "b": 730, "c": 790, "s1": 740, "s2": 750, "s3": 760},
    25: {"a": 25520, "b": 1900, "c": 1920, "s1": 1840, "s2": 1850, "s3": 1870},
    50: {"a": 51100, "b": 3780, "c": 3780, "s1": 3720, "s2": 3700, "s3": 3720},
}
TEST = {"a": 3300, "b": 3290, "c": 3290, **{f"s{k}": 3300 for k in range(1, 7)}}

pytestmark = pytest.mark.skipif(not SHARED_LISTS.is_dir(), reason="../shared/dcase2024 not present")


def _rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        return [(row[0], row[1]) for row in reader]


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """meta.csv for split50 ∪ test, the lists under split_setup/ as the baseline downloads them, and
    short 24-bit 44.1 kHz WAVs for every split5 file (writing all 99,480 would take minutes)."""
    root = tmp_path_factory.mktemp("tau22")
    (root / "split_setup").mkdir()
    for name in ("split5", "split10", "split25", "split50", "test"):
        shutil.copy(SHARED_LISTS / f"{name}.csv", root / "split_setup" / f"{name}.csv")
    rows = sorted(set(_rows(SHARED_LISTS / "split50.csv")) | set(_rows(SHARED_LISTS / "test.csv")))
    with (root / "meta.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "scene_label", "identifier", "source_label"])
        for filename, scene in rows:
            _, city, location, device = parse_filename(filename)
            writer.writerow([filename, scene, f"{city}-{location}", device])
    clip = (0.05 * np.random.default_rng(0).standard_normal(441)).astype(np.float32)
    (root / "audio").mkdir()
    for filename, _ in _rows(SHARED_LISTS / "split5.csv"):
        sf.write(str(root / filename), clip, 44_100, subtype="PCM_24")
    return root


def test_counts_per_device_match_the_public_lists(real_layout: Path) -> None:
    dataset = load_dataset(real_layout)
    assert dataset.lists_dir == real_layout / "split_setup"
    for percent, expected in EXPECTED.items():
        assert dict(dataset.device_counts(dataset.split_lists[percent])) == expected
    assert dict(dataset.device_counts(dataset.test)) == TEST
    assert len(dataset.test) == 29_680
    # 100 % = the training fold = meta.csv minus test (here meta holds split50 ∪ test).
    assert len(dataset.training_fold) == 69_800


def test_the_derived_training_fold_keeps_unseen_devices_and_test_locations_out(
        real_layout: Path, tmp_path: Path) -> None:
    """meta.csv holds clips in neither fold (TAU22: 230,350 against 139,620 + 29,680)."""
    root = tmp_path / "tau22"
    shutil.copytree(real_layout / "split_setup", root / "split_setup")
    meta = (real_layout / "meta.csv").read_text()
    extra = ["audio/park-lyon-1100-99000-0-s4.wav\tpark\tlyon-1100\ts4",  # unseen device
             "audio/park-lyon-1100-99001-0-a.wav\tpark\tlyon-1100\ta"]  # a new place
    test_clip = _rows(SHARED_LISTS / "test.csv")[0][0]
    _, city, location, _ = parse_filename(test_clip)
    extra.append(f"audio/park-{city}-{location}-99002-0-a.wav\tpark\t{city}-{location}\ta")
    # ...that last one recorded at a test location.
    (root / "meta.csv").write_text(meta + "\n".join(extra) + "\n")
    fold = set(load_dataset(root).training_fold)
    assert len(fold) == 69_801 and "audio/park-lyon-1100-99001-0-a.wav" in fold
    # The baseline's own split100.csv, where present, is the 100 % split as it stands.
    listed = _rows(SHARED_LISTS / "split25.csv")
    with (root / "split_setup" / "split100.csv").open("w") as handle:
        handle.write("filename\tscene_label\n")
        handle.writelines(f"{name}\t{scene}\n" for name, scene in listed)
    assert load_dataset(root).training_fold == tuple(name for name, _ in listed)


def test_location_and_device_parsed_from_names(real_layout: Path) -> None:
    clip = load_dataset(real_layout).clips["audio/airport-lisbon-1000-40000-0-a.wav"]
    assert (clip.scene, clip.city, clip.location, clip.device) == ("airport", "lisbon",
                                                                   "lisbon-1000", "a")


def test_split5_holds_out_whole_locations(real_layout: Path) -> None:
    dataset = load_dataset(real_layout)
    files = dataset.split(5, validation_fraction=0.1, seed=3)
    assert len(files.train) + len(files.validation) == 6_980
    assert not set(files.train) & set(files.validation)
    assert not set(files.train) & set(files.test)
    # No held-out clip shares its recording or its location with a training clip: the real
    # split5 has 332 locations of 10-70 clips, and the test fold's are all unseen too.
    clips = dataset.clips
    for unit in ("recording", "location"):
        assert not ({getattr(clips[n], unit) for n in files.validation}
                    & {getattr(clips[n], unit) for n in files.train}), unit
    # About 10 % of every scene and every device, to a location's granularity (10–70 clips).
    assert 650 <= len(files.validation) <= 900
    held = Counter(clips[name].device for name in files.validation)
    assert 450 <= held["a"] <= 620 and all(25 <= held[d] <= 65 for d in ("b", "c", "s1", "s2", "s3"))
    scenes = Counter(clips[name].scene for name in files.validation)
    assert len(scenes) == 10 and min(scenes.values()) >= 50 and max(scenes.values()) <= 110
    assert files.validation_source.startswith("held out of split5: whole locations")
    again = dataset.split(5, validation_fraction=0.1, seed=3)
    assert again == files
    assert dataset.split(5, validation_fraction=0.1, seed=4).validation != files.validation


def test_split_without_audio_names_the_missing_file(real_layout: Path) -> None:
    with pytest.raises(DataError, match=r"audio/.*\.wav: listed but not found \(and \d+ more\)"):
        load_dataset(real_layout).split(10)


def test_check_counts_and_reports_missing_audio(real_layout: Path) -> None:
    report = check_dataset(real_layout, decode=False)
    assert dict(report.counts["split5.csv"]) == EXPECTED[5]
    assert dict(report.counts["test.csv"]) == TEST
    assert len(report.problems) == 1
    assert "92,500 listed file(s) not found" in report.problems[0]


def test_explicit_lists_folder(real_layout: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    shutil.copytree(real_layout / "split_setup", lists)
    assert load_dataset(real_layout, lists_dir=lists).lists_dir == lists
    with pytest.raises(DataError, match="split-list folder not found"):
        load_dataset(real_layout, lists_dir=tmp_path / "nope")
