"""Device impulse-response augmentation: gains measured through the front-end, applied to features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from asc_search.data.dataset import recording_of
from asc_search.errors import AscSearchError, DataError
from asc_search.features.logmel import FeatureSet, FrontEndSettings
from asc_search.training.device_responses import (
    DeviceResponses,
    _validation_gains,
    device_responses,
    eligible_rows,
    mel_gains,
    source_digest,
    synthetic_impulse_responses,
    with_simulated_devices,
)
from asc_search.training.evaluate import evaluate
from asc_search.training.recipe import TrainingRecipe
from asc_search.training.train import LabelledSet
from conftest import one_line_error, write_wav

#: A small front-end keeps the gain estimate quick; the mechanism is the same at 256 mels.
SETTINGS = FrontEndSettings(sample_rate=16_000, n_fft=1024, win_length=800, hop_length=250,
                            n_mels=64, f_max=8_000.0)


def _phone_response(rate: int) -> np.ndarray:
    """A made-up phone: low cut near 400 Hz, high cut near 3 kHz, minimum phase-ish (causal)."""
    taps = round(0.032 * rate)  # 32 ms, so one response at two rates is the same device
    freqs = np.fft.rfftfreq(taps, 1.0 / rate)
    freqs[0] = freqs[1]
    gain = 1 / np.sqrt(1 + (400 / freqs) ** 4) / np.sqrt(1 + (freqs / 3_000) ** 8)
    response = np.fft.irfft(gain, taps)
    return np.roll(response, taps // 2).astype(np.float32) * np.hanning(taps).astype(np.float32)


def _features(audio: np.ndarray) -> torch.Tensor:
    return SETTINGS.build()(torch.from_numpy(audio.astype(np.float32)), SETTINGS.sample_rate).float()


def test_gains_on_features_reproduce_a_real_convolution_of_the_audio() -> None:
    # The point of the module: convolving a clip's audio with a response and imposing that
    # response's mel gains on the clip's cached features give (nearly) the same features.
    rate, samples = SETTINGS.sample_rate, SETTINGS.sample_rate
    response = _phone_response(rate)
    rng = np.random.default_rng(3)
    envelope = np.repeat(rng.uniform(0.05, 1.0, 50), (samples + 2048) // 50 + 1)[:samples + 2048]
    clip = rng.normal(0, 0.1, samples + 2048) * envelope
    delay = len(response) // 2
    recorded = np.convolve(clip, response)[1024 + delay:1024 + delay + samples]
    dry, wet = _features(clip[1024:1024 + samples]), _features(recorded)
    bank = DeviceResponses(torch.from_numpy(mel_gains([response], SETTINGS)), ("phone",))
    imposed = bank.apply(dry[None, None], p=1.0, eligible=torch.ones(1, dtype=torch.bool),
                         generator=torch.Generator().manual_seed(0), silence=SETTINGS.silence,
                         log_scale=SETTINGS.log_scale)[0, 0]
    level = (wet - imposed).mean()  # the bank keeps shape only (geometric mean gain 1)
    residual = (wet - imposed - level).std()
    change = (wet - dry).std()
    assert change > 1.0  # the response really colours the clip
    assert residual < 0.25 * change, (float(residual), float(change))


def test_only_eligible_clips_change_and_silence_stays_silent() -> None:
    gains = torch.full((1, 4), 100.0)
    bank = DeviceResponses(gains, ("loud",))
    silence = SETTINGS.silence
    x = torch.full((3, 1, 4, 5), silence)
    x[:, :, 1:, :] = 0.0
    out = bank.apply(x, p=1.0, eligible=torch.tensor([True, False, True]),
                     generator=torch.Generator().manual_seed(0), silence=silence, log_scale=1.0)
    assert torch.equal(out[1], x[1])
    assert torch.allclose(out[[0, 2], :, 0], x[[0, 2], :, 0])  # silent bins stay silent
    assert torch.all(out[[0, 2], :, 1:] > x[[0, 2], :, 1:] + 4.0)  # +20 dB in power ≈ +4.6 in log
    none = bank.apply(x, p=0.0, eligible=torch.ones(3, dtype=torch.bool),
                      generator=torch.Generator().manual_seed(0), silence=silence, log_scale=1.0)
    assert torch.equal(none, x)


def test_the_reference_device_gets_responses_and_a_corpus_without_it_everywhere() -> None:
    assert eligible_rows(("a", "b", "a", "s1")).tolist() == [True, False, True, False]
    assert eligible_rows(("phone", "tablet")).tolist() == [True, True]


def test_the_synthetic_bank_is_deterministic_and_spans_device_like_colourings() -> None:
    first, again = synthetic_impulse_responses(16_000, count=4), synthetic_impulse_responses(16_000, count=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    gains_db = 10 * np.log10(device_responses("", SETTINGS).gains.numpy())
    assert gains_db.shape[1] == SETTINGS.n_mels
    assert np.allclose(gains_db.mean(axis=1), 0.0, atol=1e-3)  # shape only, no level
    assert (gains_db[:, :3].mean(axis=1) < -3).mean() > 0.5  # most cut the lowest bands


def test_a_folder_of_responses_is_keyed_by_content_not_path(tmp_path: Path) -> None:
    folder = tmp_path / "irs"
    for k, rate in enumerate((16_000, 48_000)):
        write_wav(folder / f"dev{k}.wav", _phone_response(rate), rate=rate, subtype="FLOAT")
    bank = device_responses(str(folder), SETTINGS)
    assert bank.names == ("dev0.wav", "dev1.wav") and bank.gains.shape == (2, SETTINGS.n_mels)
    # Both files describe one response at two rates: the resampled gains agree in its passband
    # (in the stop bands, 20 dB down, the window and the resampler's filter differ by ~2 dB).
    gains_db = 10 * np.log10(bank.gains.numpy())
    passband = gains_db[0] > -10
    assert passband.sum() > SETTINGS.n_mels // 3
    assert np.abs(gains_db[0] - gains_db[1])[passband].max() < 1.0, gains_db
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    recipe = TrainingRecipe(device_response_p=0.5, device_responses=str(folder))
    assert recipe.to_dict()["device_responses"] == source_digest(str(moved))
    write_wav(moved / "dev1.wav", _phone_response(16_000), rate=16_000, subtype="FLOAT")
    assert source_digest(str(moved)) != source_digest(str(folder))
    # Off, the augmentation leaves the keys (and every cached teacher and parent) as they were.
    assert "device_responses" not in TrainingRecipe(device_responses=str(folder)).to_dict()
    assert "device_response_p" not in TrainingRecipe().to_dict()


def test_bad_response_folders_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        TrainingRecipe(device_response_p=0.5, device_responses=str(tmp_path / "none")).validate()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.wav"):
        TrainingRecipe(device_response_p=0.5, device_responses=str(tmp_path / "empty")).validate()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "mic.wav").write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"mic\.wav"):
        device_responses(str(broken), SETTINGS)
    with pytest.raises(AscSearchError, match="device_response_p"):
        TrainingRecipe(device_response_p=1.5).validate()


def test_train_refuses_a_missing_response_folder_in_one_line(cli, tiny_corpus: Path,
                                                            tmp_path: Path) -> None:
    one_line_error(cli("train", "--data", tiny_corpus, "--epochs", "1", "--device-response-p",
                       "0.5", "--device-responses", tmp_path / "micirp"), "micirp", "not found")


def _validation_list(per_device: int = 6) -> LabelledSet:
    """A small validation list: three seen devices, ``per_device`` clips each, every clip of
    device a the parallel of a b and a c clip (TAU file names, so recordings pair up)."""
    rng = np.random.default_rng(5)
    files, devices, labels = [], [], []
    for device in ("a", "b", "c"):
        for k in range(per_device):
            files.append(f"audio/park-lisbon-1{k}-40{k}-0-{device}.wav")
            devices.append(device)
            labels.append(k % 3)
    mels, frames = SETTINGS.shape
    array = rng.normal(-2.0, 1.0, (len(files), mels, frames)).astype(np.float16)
    array[:, :, :2] = SETTINGS.silence  # silent frames, which a colouring must leave silent
    features = FeatureSet(files=tuple(files), array=array, directory=Path("."), cache_hit=True)
    return LabelledSet(files=tuple(files), features=features, labels=np.array(labels),
                       devices=tuple(devices))


def test_simulated_devices_are_coloured_copies_of_device_a_clips_of_their_recordings() -> None:
    validation = _validation_list()
    simulated = with_simulated_devices(validation, 3, SETTINGS)
    n = len(validation)
    assert len(simulated) == n + 3 * 6  # as many clips as a seen device has, per simulated one
    assert simulated.files[:n] == validation.files and simulated.devices[:n] == validation.devices
    assert simulated.devices[n:] == ("sim1",) * 6 + ("sim2",) * 6 + ("sim3",) * 6
    assert len(set(simulated.files)) == len(simulated.files)
    originals = {name: row for row, name in enumerate(validation.files)}
    stored = simulated.features.gather(np.arange(len(simulated)))
    for row in range(n, len(simulated)):
        name = simulated.files[row]
        original = originals[name.replace(f".{simulated.devices[row]}.wav", ".wav")]
        assert validation.devices[original] == "a"
        assert recording_of(name) == recording_of(validation.files[original])
        assert simulated.labels[row] == validation.labels[original]
        clean = validation.features.gather([original])[0]
        assert np.array_equal(stored[row][:, :2], clean[:, :2])  # silence stays silent
        assert np.abs(stored[row].astype(np.float32) - clean.astype(np.float32)).mean() > 0.05
    # Three devices, three colourings: the same clip differs between them.
    first = stored[n:n + 6].astype(np.float32)
    assert np.abs(first - stored[n + 6:n + 12].astype(np.float32)).mean() > 0.05
    again = with_simulated_devices(validation, 3, SETTINGS)
    assert again.files == simulated.files
    assert np.array_equal(again.features.gather(np.arange(len(again))), stored)
    assert with_simulated_devices(validation, 0, SETTINGS) is validation


def test_simulated_devices_never_use_a_response_training_draws_from() -> None:
    training = device_responses("", SETTINGS).gains
    held = _validation_gains(3, SETTINGS)
    # Every validation response is far from every training one (the banks are independent
    # draws): the closest pair still differs by decibels in some band.
    distance = (10 * (training[:, None].log10() - held[None].log10())).abs().amax(dim=-1)
    assert float(distance.min()) > 1.0


def test_simulated_devices_count_as_unseen_in_an_evaluation() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    devices = ("a", "a", "sim1", "sim1", "sim2", "sim2")
    logits = np.eye(10)[[0, 1, 0, 0, 1, 0]]  # a: both right; sim1: one; sim2: none
    result = evaluate(logits, labels, devices, interval=False)
    assert result.per_device["a"] == 1.0
    assert (result.per_device["sim1"], result.per_device["sim2"]) == (0.5, 0.0)
    assert result.seen == 1.0 and result.unseen == 0.25
