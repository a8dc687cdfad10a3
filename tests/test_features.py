"""Log-mel features: the baseline front-end, computed once, memory-mapped, verified on reuse."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from asc_search.data.dataset import load_dataset
from asc_search.features.logmel import FrontEndSettings, LogMelFrontEnd, build_features
from conftest import noise, write_wav


def test_front_end_matches_the_dcase_baseline_recipe() -> None:
    """Compare with the baseline's own construction, written out independently here."""
    samples = torch.from_numpy(noise(seed=7))
    resample = torchaudio.transforms.Resample(orig_freq=44_100, new_freq=32_000)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=32_000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256,
        f_min=0, f_max=16_000,
    )
    expected = (mel(resample(samples)) + 1e-5).log()
    ours = LogMelFrontEnd(FrontEndSettings())(samples, 44_100)
    assert ours.shape == (256, 65) == FrontEndSettings().shape
    torch.testing.assert_close(ours, expected)


def test_other_sample_rates_give_the_same_shape() -> None:
    front_end = LogMelFrontEnd(FrontEndSettings())
    for rate in (16_000, 32_000, 48_000):
        samples = torch.from_numpy(noise(rate=rate))
        assert front_end(samples, rate).shape == (256, 65)


@pytest.fixture
def files(tiny_corpus: Path) -> list[str]:
    return list(load_dataset(tiny_corpus).split(100).train[:40])


def test_built_once_then_a_cache_hit(tiny_corpus: Path, files: list[str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = build_features(files, root=tiny_corpus, cache_dir=cache, n_jobs=1)
    assert not first.cache_hit and first.array.shape == (40, 256, 65)
    assert first.array.dtype == np.float16 and isinstance(first.array, np.memmap)
    array_file = first.directory / "features.npy"
    stamp = array_file.stat().st_mtime_ns
    second = build_features(files, root=tiny_corpus, cache_dir=cache, n_jobs=1)
    assert second.cache_hit and second.directory == first.directory
    assert array_file.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.array, first.array)


def test_rows_equal_the_front_end_and_batches_keep_order(tiny_corpus: Path, files: list[str],
                                                        tmp_path: Path) -> None:
    from asc_search.data.audio import read_clip

    features = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    front_end = LogMelFrontEnd(FrontEndSettings())
    audio = read_clip(tiny_corpus / files[5])
    direct = front_end(torch.from_numpy(audio.samples), audio.sample_rate)
    torch.testing.assert_close(torch.from_numpy(features.array[5].astype(np.float32)), direct,
                               atol=0.02, rtol=0.002)  # float16 storage
    rows = [7, 2, 7, 30]
    batch = features.batch(rows)
    assert batch.shape == (4, 1, 256, 65) and batch.dtype == torch.float32
    for k, row in enumerate(rows):
        torch.testing.assert_close(batch[k, 0], torch.from_numpy(features.array[row].astype(np.float32)))
    assert features.index[files[30]] == 30


def _file_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_a_large_cache_gives_its_pages_back_as_batches_are_read(
        tiny_corpus: Path, files: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A map keeps every page a process touched in its resident set (at TAU22's split 100 the
    whole 4.65 GB); above the limit, gathering gives them back as it reads on."""
    from asc_search.features import logmel

    every = np.arange(40)
    kept = build_features(files, root=tiny_corpus, cache_dir=tmp_path / "a", n_jobs=1)
    before = _file_rss_kb()
    for start in range(0, 40, 4):
        kept.gather(every[start:start + 4])
    grown_kept = _file_rss_kb() - before  # under the limit: stays mapped, the fast path
    monkeypatch.setattr(logmel, "MAPPED_BYTES_KEPT", 200_000)  # the array is 1.33 MB
    monkeypatch.setattr(logmel, "READ_BETWEEN_RELEASES", 100_000)
    given = build_features(files, root=tiny_corpus, cache_dir=tmp_path / "b", n_jobs=1)
    before = _file_rss_kb()
    for start in range(0, 40, 4):
        given.gather(every[start:start + 4])
    grown_given = _file_rss_kb() - before
    assert grown_kept > 1000 and grown_given < 500, (grown_kept, grown_given)
    np.testing.assert_array_equal(given.gather(every), np.asarray(kept.array))


def test_batches_of_subsets_read_the_same_rows_as_the_map(tiny_corpus: Path, files: list[str],
                                                          tmp_path: Path) -> None:
    features = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    rows = np.random.default_rng(0).integers(0, 40, 64)
    expected = np.asarray(features.array)[rows]
    np.testing.assert_array_equal(features.gather(rows), expected)
    np.testing.assert_array_equal(features.gather(np.arange(5, 25)), np.asarray(features.array)[5:25])
    inner = features.subset(np.arange(3, 40, 2)).subset(np.array([0, 4, 5, 6, 17]))
    np.testing.assert_array_equal(inner.gather([4, 0, 4, 2]),
                                  np.asarray(features.array)[[37, 3, 37, 13]])
    assert inner.batch([1]).shape == (1, 1, 256, 65)


def test_parallel_build_equals_serial(tiny_corpus: Path, tmp_path: Path) -> None:
    files = list(load_dataset(tiny_corpus).split(100).train)  # 160 > 4 chunks: goes parallel
    serial = build_features(files, root=tiny_corpus, cache_dir=tmp_path / "a", n_jobs=1)
    parallel = build_features(files, root=tiny_corpus, cache_dir=tmp_path / "b", n_jobs=2)
    np.testing.assert_array_equal(serial.array, parallel.array)


def test_key_changes_with_settings_and_audio(tiny_corpus: Path, files: list[str],
                                             tmp_path: Path) -> None:
    base = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    other = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1,
                           settings=FrontEndSettings(n_mels=128))
    assert other.directory != base.directory and other.array.shape[1] == 128
    copy = Path(shutil.copytree(tiny_corpus, tmp_path / "copy"))
    write_wav(copy / files[0], noise(seed=99))
    edited = build_features(files, root=copy, cache_dir=tmp_path, n_jobs=1)
    assert not edited.cache_hit


def _corrupt_cases() -> dict[str, object]:
    def truncate(directory: Path) -> None:
        path = directory / "features.npy"
        path.write_bytes(path.read_bytes()[:-5000])

    def scribble(directory: Path) -> None:
        path = directory / "features.npy"
        data = bytearray(path.read_bytes())
        data[-100:] = b"\xff" * 100  # the last block is always sampled by the checksum
        path.write_bytes(bytes(data))

    def break_meta(directory: Path) -> None:
        (directory / "meta.json").write_text("{not json")

    def other_files(directory: Path) -> None:
        meta = json.loads((directory / "meta.json").read_text())
        meta["files"] = meta["files"][::-1]
        (directory / "meta.json").write_text(json.dumps(meta))

    def drop_array(directory: Path) -> None:
        (directory / "features.npy").unlink()

    return {f.__name__: f for f in (truncate, scribble, break_meta, other_files, drop_array)}


@pytest.mark.parametrize("damage", sorted(_corrupt_cases()))
def test_corrupt_cache_is_detected_and_rebuilt(damage: str, tiny_corpus: Path, files: list[str],
                                               tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    reference = np.array(good.array)
    del good
    _corrupt_cases()[damage](tmp_path / "features" / next((tmp_path / "features").iterdir()).name)
    with caplog.at_level(logging.WARNING):
        rebuilt = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    assert not rebuilt.cache_hit
    assert "is unusable" in caplog.text and "rebuilding" in caplog.text
    np.testing.assert_array_equal(rebuilt.array, reference)
