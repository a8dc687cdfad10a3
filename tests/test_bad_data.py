"""DESIGN.md §7, the data part: each bad input is one line naming the culprit and exit status 2."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from asc_search.data.audio import read_clip
from asc_search.data.dataset import load_dataset
from asc_search.errors import DataError
from conftest import noise, one_line_error, write_wav


@pytest.fixture
def corpus(tiny_corpus: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny embedded corpus that a test may break."""
    return Path(shutil.copytree(tiny_corpus, tmp_path / "corpus"))


def _first_listed(folder: Path, list_name: str = "split5.csv") -> Path:
    with (folder / list_name).open() as handle:
        next(handle)
        return folder / next(handle).split("\t")[0]


def test_missing_data_folder(cli, tmp_path: Path) -> None:
    one_line_error(cli("data", "check", tmp_path / "nowhere"), "nowhere", "not found")
    one_line_error(cli("features", "build", "--data", tmp_path / "nowhere"), "nowhere")


def test_folder_without_meta_csv(cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_line_error(cli("features", "build", "--data", tmp_path / "empty"), "meta.csv", "not found")


def test_meta_without_a_needed_column(cli, corpus: Path) -> None:
    meta = corpus / "meta.csv"
    rows = list(csv.reader(meta.open(), delimiter="\t"))
    column = rows[0].index("scene_label")
    with meta.open("w", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows([r[:column] + r[column + 1:] for r in rows])
    one_line_error(cli("features", "build", "--data", corpus), "meta.csv", "missing column scene_label")
    one_line_error(cli("data", "check", corpus, "--quick"), "1 problem")


def test_comma_separated_meta_is_named(corpus: Path) -> None:
    meta = corpus / "meta.csv"
    meta.write_text(meta.read_text().replace("\t", ","))
    with pytest.raises(DataError, match=r"missing column filename.*tab-separated"):
        load_dataset(corpus)


def test_split_lists_a_file_not_in_meta(cli, corpus: Path) -> None:
    with (corpus / "split5.csv").open("a") as handle:
        handle.write("audio/park-paris-9-9-0-a.wav\tpark\n")
    one_line_error(cli("features", "build", "--data", corpus),
                   "split5.csv", "audio/park-paris-9-9-0-a.wav", "not in meta.csv")


def test_split_lists_a_file_missing_on_disk(cli, corpus: Path) -> None:
    victim = _first_listed(corpus)
    victim.unlink()
    one_line_error(cli("features", "build", "--data", corpus, "--split", "5"),
                   victim.name, "listed but not found")
    result = cli("data", "check", corpus)
    assert result.code == 2 and f"1 listed file(s) not found under {corpus}" in result.out


def test_label_disagreement_between_list_and_meta(corpus: Path) -> None:
    text = (corpus / "test.csv").read_text().splitlines()
    name, scene = text[1].split("\t")
    text[1] = f"{name}\t{'park' if scene != 'park' else 'bus'}"
    (corpus / "test.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"test.csv: .* is labelled"):
        load_dataset(corpus)


def test_truncated_wav(cli, corpus: Path, isolated_dirs: Path) -> None:
    victim = _first_listed(corpus)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_clip(victim)
    one_line_error(cli("features", "build", "--data", corpus), victim.name, "truncated")
    # The failed build left no cache entry (complete or partial) behind.
    assert list((isolated_dirs / "cache" / "features").iterdir()) == []


def test_non_wav_file(cli, corpus: Path) -> None:
    victim = _first_listed(corpus)
    victim.write_text("this is not audio\n")
    one_line_error(cli("features", "build", "--data", corpus), victim.name,
                   "not a readable WAV file")
    check = cli("data", "check", corpus)
    assert check.code == 2 and f"{victim}: not a readable WAV file" in check.out


def test_nan_audio_is_refused(tmp_path: Path) -> None:
    samples = noise()
    samples[100] = np.nan
    path = write_wav(tmp_path / "nan.wav", samples, subtype="FLOAT")
    with pytest.raises(DataError, match=r"nan\.wav: contains NaN"):
        read_clip(path)


def test_silent_audio_is_refused(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "silent.wav", np.zeros(44_100, dtype=np.float32))
    with pytest.raises(DataError, match=r"silent\.wav: is silent"):
        read_clip(path)


def test_wrong_length_is_refused(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "short.wav", noise(0.5))
    with pytest.raises(DataError, match=r"short.wav: 0.500 s long, expected 1 s"):
        read_clip(path)


def test_stereo_is_downmixed_and_other_rates_accepted(tmp_path: Path) -> None:
    stereo = read_clip(write_wav(tmp_path / "stereo.wav", noise(channels=2)))
    assert stereo.downmixed_from == 2 and stereo.samples.ndim == 1 and len(stereo.samples) == 44_100
    other = read_clip(write_wav(tmp_path / "48k.wav", noise(rate=48_000), rate=48_000))
    assert other.sample_rate == 48_000


def test_check_notes_stereo_and_other_rates(cli, corpus: Path) -> None:
    first = _first_listed(corpus)
    write_wav(first, noise(channels=2))
    second = _first_listed(corpus, "test.csv")
    write_wav(second, noise(rate=48_000), rate=48_000)
    result = cli("data", "check", corpus)
    assert result.code == 0, result.out + result.err
    assert f"{first}: 2 channels (downmixed)" in result.out
    assert f"{second}: 48000 Hz (resampled)" in result.out


def test_check_names_every_problem(cli, corpus: Path) -> None:
    with (corpus / "test.csv").open() as handle:
        next(handle)
        victims = [corpus / next(handle).split("\t")[0] for _ in range(3)]
    victims[0].write_bytes(b"RIFF....")
    write_wav(victims[1], np.zeros(44_100, dtype=np.float32))
    victims[2].unlink()
    result = cli("data", "check", corpus)
    assert result.code == 2
    assert f"{victims[0]}: not a readable WAV file" in result.out
    assert f"{victims[1]}: is silent" in result.out
    assert "1 listed file(s) not found" in result.out
    one_line_error(result, "3 problem(s) found")


def test_test_files_leaking_into_a_split_are_refused(cli, corpus: Path) -> None:
    leaked = (corpus / "test.csv").read_text().splitlines()[1]
    with (corpus / "split5.csv").open("a") as handle:
        handle.write(leaked + "\n")
    with pytest.raises(DataError, match=r"split5\.csv and test\.csv share 1 file"):
        load_dataset(corpus).split(5)
    result = cli("data", "check", corpus, "--quick")
    assert "split5.csv: 1 file(s) also in test.csv" in result.out and result.code == 2


def test_validation_sharing_a_file_with_test_is_refused(corpus: Path) -> None:
    leaked = (corpus / "test.csv").read_text().splitlines()[1]
    with (corpus / "validation.csv").open("a") as handle:
        handle.write(leaked + "\n")
    with pytest.raises(DataError, match=r"validation and test\.csv share 1 file"):
        load_dataset(corpus).split(5)


def test_validation_sharing_a_recording_with_training_is_refused(corpus: Path) -> None:
    # One clip of a training recording moved into the validation list: the file lists stay
    # disjoint, but validation now holds a near copy of training audio.
    split = (corpus / "split5.csv").read_text().splitlines()
    moved = split.pop(1)
    (corpus / "split5.csv").write_text("\n".join(split) + "\n")
    recording = moved.split("\t")[0].rsplit("-", 2)[0]
    assert any(line.startswith(recording) for line in split[1:]), "needs a recording of 2+ clips"
    with (corpus / "validation.csv").open("a") as handle:
        handle.write(moved + "\n")
    with pytest.raises(DataError, match=r"split5\.csv and validation share 1 recording"):
        load_dataset(corpus).split(5)


def test_hold_out_without_a_validation_list_keeps_locations_apart(corpus: Path) -> None:
    (corpus / "validation.csv").unlink()
    dataset = load_dataset(corpus)
    files = dataset.split(100, seed=0)
    clips = dataset.clips
    assert files.validation and files.validation_source.startswith("held out of split100: whole")
    assert not ({clips[n].location for n in files.validation}
                & {clips[n].location for n in files.train})
    assert {clips[n].scene for n in files.train} == {clips[n].scene for n in files.validation}


def test_lists_saved_by_a_spreadsheet_are_read(cli, corpus: Path) -> None:
    # Excel and LibreOffice save UTF-8 "CSV" with a byte-order mark and CRLF line ends; the mark
    # used to glue itself to the first column ("missing column filename" though it is there).
    before = load_dataset(corpus)
    for name in ("meta.csv", "split5.csv", "test.csv"):
        path = corpus / name
        text = path.read_text()
        path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    after = load_dataset(corpus)
    assert after.clips == before.clips
    assert after.split_lists[5] == before.split_lists[5] and after.test == before.test
    result = cli("data", "check", corpus, "--quick")
    assert result.code == 0, result.out + result.err


def test_a_clip_listed_twice_is_used_once_and_named_by_the_check(cli, corpus: Path) -> None:
    before = load_dataset(corpus).split_lists[5]
    lines = (corpus / "split5.csv").read_text().splitlines()
    (corpus / "split5.csv").write_text("\n".join([*lines, lines[1], lines[2], lines[1]]) + "\n")
    dataset = load_dataset(corpus)
    assert dataset.split_lists[5] == before  # each clip once, in its first place
    assert len(set(dataset.split(5).train)) == len(dataset.split(5).train)
    result = cli("data", "check", corpus, "--quick")
    clip = lines[1].split("\t")[0]
    assert f"split5.csv: 2 clip(s) listed more than once, e.g. {clip}" in result.out
    one_line_error(result, "1 problem(s) found")


def test_the_check_names_a_scene_label_outside_the_known_set(cli, corpus: Path) -> None:
    meta = corpus / "meta.csv"
    rows = meta.read_text().splitlines()
    name, label, *rest = rows[1].split("\t")
    scene = label[::-1]  # "tropria": a typo no scene list has
    meta.write_text("\n".join([rows[0], "\t".join([name, scene, *rest]), *rows[2:]]) + "\n")
    # Split lists carry labels too; keep them agreeing with meta.csv so only the label is wrong.
    for listed in corpus.glob("*.csv"):
        if listed.name != "meta.csv":
            listed.write_text("\n".join(
                f"{name}\t{scene}" if line.split("\t")[0] == name else line
                for line in listed.read_text().splitlines()) + "\n")
    result = cli("data", "check", corpus, "--quick")
    assert f"meta.csv: scene label {scene!r} (1 clip(s), e.g. {name}) is not one of" in result.out
    one_line_error(result, "1 problem(s) found")
