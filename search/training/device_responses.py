"""Device impulse-response augmentation on cached features: new "devices" for clips of the main one.

Most clips of a DCASE split come from one device (``a``), and the test set holds devices no split
contains. Morocutti et al. (DCASE 2023) convolve device-``a`` recordings with measured microphone
impulse responses (MicIRP) with some probability, so the model meets many device colourings in
training; DCASE 2024's top systems kept the trick. Training here never touches audio, so the
convolution is applied where it lands in the features: a convolution is a product in frequency,
so on a mel power spectrogram it is (to the accuracy of one STFT window) a gain per mel band. Each
impulse response is turned into that gain once, through the front-end's own module (white noise
with and without the response, so the mel filters, window and pre-emphasis are exactly the ones
the features used), and a training clip then gets one response's gains in the power domain:
``x' = s + k·log(1 + u·h)`` with ``u = exp((x − s)/k) − 1``, where ``s`` is the features' silence
and ``k`` their log scale. A silent bin stays silent, as it would after a real convolution.

Where the responses come from is the recipe's ``device_responses``: a folder of impulse-response
WAV files (MicIRP, or a lab's own measurements), or ``""`` for a built-in bank of synthetic device
responses (band limits and a smooth ripple drawn from ranges typical of phone and consumer
microphones). Each response keeps its spectral shape only; its overall level is removed, because
the level of an impulse-response file says how it was measured, not how the device colours sound.

The same gains give validation **devices it has never heard** (``with_simulated_devices``). The DCASE
test list holds devices (s4–s6) that no split contains, a third of its clips; a validation list
held out of the training fold has none, so it cannot see what a model gains or loses on an unheard
microphone, and a search ranked by it chooses for the seen devices alone. Simulated devices are
copies of the validation's device-``a`` clips coloured by responses that no training ever draws
from: a synthetic bank of its own seed (``VALIDATION_BANK_SEED``), whatever bank the recipe trains
with. Like s4–s6 they are device-``a`` recordings under another response, and each gets as many
clips as a seen device has on average, so they weigh in the macro accuracy as s4–s6 do in the
test's. A copy keeps its recording's name, so the bootstrap resamples it with its original.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from asc_search.data.audio import read_clip
from asc_search.data.dataset import SEEN_DEVICES, SIMULATED_DEVICE_PREFIX
from asc_search.errors import DataError
from asc_search.features.logmel import ClipResampler, FeatureSet, FrontEnd, selection_digest
from asc_search.training.batches import to_device

#: The recipe value that selects the built-in synthetic bank.
SYNTHETIC = ""
#: The synthetic bank that training draws from has seed 0; simulated validation devices come from
#: this one, so no response a model trained with is ever one it is validated on.
VALIDATION_BANK_SEED = 1
#: Bump when the synthetic bank or the gain estimate changes (it enters cache keys).
BANK_VERSION = 1
SYNTHETIC_RESPONSES = 64
#: The device whose clips get responses; a split without it gets them on every clip.
REFERENCE_DEVICE = "a"
_NOISE_DRAWS = 2
_GAIN_LIMIT = 1e4  # ±40 dB: beyond it a bin is lost in the noise either way


@dataclass(frozen=True)
class DeviceResponses:
    """A bank of per-mel-band power gains, one row per device response, for one front-end."""

    gains: torch.Tensor  # (responses, mels), float32, geometric mean 1 per row
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.gains.shape[0])

    def apply(self, x: torch.Tensor, *, p: float, eligible: torch.Tensor, generator: torch.Generator,
              silence: float, log_scale: float) -> torch.Tensor:
        """Give each ``eligible`` clip of ``x`` (B, 1, mels, frames), with probability ``p``, the
        colouring of one response drawn at random; other clips pass unchanged."""
        batch = x.shape[0]
        chosen = (torch.rand(batch, generator=generator) < p) & eligible
        which = torch.randint(0, len(self), (batch,), generator=generator)
        if not bool(chosen.any()):
            return x
        if x.device.type != "cpu":
            # Every clip is computed and the chosen ones kept: indexing by a mask on the device
            # would make the host wait for the mask's count at every step.
            gains = to_device(self.gains[which].view(batch, 1, -1, 1).to(x.dtype), x.device)
            power = torch.expm1((x - silence) / log_scale).clamp_min(0.0)
            return torch.where(to_device(chosen.view(batch, 1, 1, 1), x.device),
                               silence + log_scale * torch.log1p(power * gains), x)
        gains = self.gains[which[chosen]].view(-1, 1, self.gains.shape[1], 1).to(x.dtype)
        picked = x[chosen]
        power = torch.expm1((picked - silence) / log_scale).clamp_min(0.0)
        out = x.clone()
        out[chosen] = silence + log_scale * torch.log1p(power * gains)
        return out


def source_digest(source: str) -> str:
    """What a bank's cache keys name: the synthetic bank's version, or the files' content hash
    (read again only when a file's size or modification time changes)."""
    if source == SYNTHETIC:
        return f"synthetic-v{BANK_VERSION}-{SYNTHETIC_RESPONSES}"
    paths = response_files(source)
    return _content_digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


@lru_cache(maxsize=32)
def _content_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(f"v{BANK_VERSION}".encode())
    for name, _, _ in files:
        path = Path(name)
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"files-{digest.hexdigest()[:16]}-{len(files)}"


def check_responses(source: str) -> None:
    """Read every impulse response of ``source`` once, so a broken file is named before any
    work starts (one line, ``DataError``) rather than in the middle of a teacher's fit."""
    if source != SYNTHETIC:
        for path in response_files(source):
            read_clip(path, expected_seconds=None)


def response_files(source: str) -> list[Path]:
    """The impulse-response WAVs in ``source`` (a folder, searched recursively), sorted."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: device impulse-response folder not found")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not paths:
        raise DataError(f"{folder}: no .wav impulse responses in this folder")
    return paths


def synthetic_impulse_responses(sample_rate: int, count: int = SYNTHETIC_RESPONSES,
                                seed: int = 0) -> list[np.ndarray]:
    """Zero-phase impulse responses of made-up consumer devices, 4096 taps each.

    Each has a low cut between 60 and 500 Hz, a high cut between 4 and 16 kHz (both log-uniform)
    and a smooth ripple of ±4 dB (one standard deviation) through ten log-spaced points: the
    range of the phone and lavalier responses in published measurement sets. Only the magnitude
    matters to a mel front-end, so the phase is left at zero.
    """
    rng = np.random.default_rng([seed, 7])
    taps = 4096
    freqs = np.fft.rfftfreq(taps, 1.0 / sample_rate)
    freqs[0] = freqs[1]
    centres = np.geomspace(50.0, sample_rate / 2, 10)
    responses = []
    for _ in range(count):
        low = np.exp(rng.uniform(np.log(60.0), np.log(500.0)))
        high = np.exp(rng.uniform(np.log(4_000.0), np.log(16_000.0)))
        ripple = np.interp(np.log(freqs), np.log(centres), rng.normal(0.0, 4.0, len(centres)))
        gain_db = (ripple - 10 * np.log10(1 + (low / freqs) ** 4)
                   - 10 * np.log10(1 + (freqs / high) ** 8))
        response = np.fft.irfft(10 ** (gain_db / 20), taps)
        responses.append(np.roll(response, taps // 2).astype(np.float32))
    return responses


def _read_responses(source: str, sample_rate: int) -> tuple[list[np.ndarray], tuple[str, ...]]:
    if source == SYNTHETIC:
        responses = synthetic_impulse_responses(sample_rate)
        return responses, tuple(f"synthetic-{k}" for k in range(len(responses)))
    clip = ClipResampler(sample_rate, 1.0)
    responses, names = [], []
    for path in response_files(source):
        audio = read_clip(path, expected_seconds=None)
        samples = clip.resampler(audio.sample_rate)(torch.from_numpy(audio.samples))
        responses.append(samples.numpy().astype(np.float32))
        names.append(path.name)
    return responses, tuple(names)


def mel_gains(responses: list[np.ndarray], settings: FrontEnd, *, seed: int = 0) -> np.ndarray:
    """Per-mel-band power gain of each response under ``settings``' front-end (responses, mels).

    White noise goes through the front-end with and without the response; the gain is the ratio
    of the mean mel powers, so it is measured with the very filters the features were made with.
    """
    front_end = settings.build()
    samples = round(settings.sample_rate * settings.clip_seconds)
    silence, scale = settings.silence, getattr(settings, "log_scale", 1.0)
    rng = np.random.default_rng([seed, 11])

    def mean_power(audio: np.ndarray) -> np.ndarray:
        features = front_end(torch.from_numpy(audio.astype(np.float32)), settings.sample_rate)
        return torch.expm1((features.float() - silence) / scale).clamp_min(0).mean(dim=-1).numpy()

    gains = []
    for response in responses:
        dry, wet = 0.0, 0.0
        for _ in range(_NOISE_DRAWS):
            noise = rng.normal(0.0, 0.1, samples + len(response)).astype(np.float32)
            coloured = np.convolve(noise, response, mode="full")[len(response):len(response) + samples]
            dry = dry + mean_power(noise[len(response):])
            wet = wet + mean_power(coloured)
        ratio = np.clip(wet / np.maximum(dry, 1e-12), 1 / _GAIN_LIMIT, _GAIN_LIMIT)
        gains.append(ratio / np.exp(np.log(ratio).mean()))  # shape only: geometric mean 1
    return np.stack(gains).astype(np.float32)


@lru_cache(maxsize=8)
def _bank(source: str, digest: str, settings: FrontEnd) -> DeviceResponses:
    del digest  # part of the cache key only: a changed folder is read again
    responses, names = _read_responses(source, settings.sample_rate)
    return DeviceResponses(torch.from_numpy(mel_gains(responses, settings)), names)


def device_responses(source: str, settings: FrontEnd) -> DeviceResponses:
    """The bank for the recipe's ``device_responses`` under ``settings``, computed once per
    process (a few seconds for the synthetic bank)."""
    return _bank(source, source_digest(source), settings)


def eligible_rows(devices: tuple[str, ...]) -> torch.Tensor:
    """Which clips get responses: the reference device's, or every clip when the split has none
    of it (a corpus whose devices are named otherwise)."""
    mask = torch.tensor([device == REFERENCE_DEVICE for device in devices], dtype=torch.bool)
    return mask if bool(mask.any()) else torch.ones(len(devices), dtype=torch.bool)


class _Labelled(Protocol):
    """What ``with_simulated_devices`` reads of a ``training.train.LabelledSet`` (a dataclass,
    copied with ``dataclasses.replace``; named here by shape, since ``train`` imports this module)."""

    files: tuple[str, ...]
    features: FeatureSet
    labels: np.ndarray
    devices: tuple[str, ...]


Labelled = TypeVar("Labelled", bound=_Labelled)


def with_simulated_devices(validation: Labelled, count: int, settings: FrontEnd, *,
                          seed: int = 0) -> Labelled:
    """``validation`` with ``count`` simulated unseen devices added (see the module docstring).

    Device ``sim<k>`` is a draw, without replacement, of the reference device's clips (every clip
    where the list has none of it), as many as a seen device has on average, each coloured by
    response ``k`` of the validation bank in the features' power domain. The list is held in
    memory with its copies (the cached features stay as they are): 120 MB for the embedded
    corpus's 2,400 clips and three devices' 1,200 copies. A copy is named ``<name>.sim<k>`` in the
    last part of the file name, so ``recording_of`` maps it to its original's recording.
    """
    if count < 1:
        return validation
    devices = tuple(validation.devices)
    eligible = np.flatnonzero(eligible_rows(devices).numpy())
    seen = {d for d in devices if d in SEEN_DEVICES} or set(devices)
    per_device = min(len(eligible), max(1, round(len(devices) / len(seen))))
    gains = _validation_gains(count, settings)
    rng = np.random.default_rng([seed, 13])
    source = validation.features
    whole = source.gather(np.arange(len(source)))  # read once: the copies are rows of it
    rows, arrays, files, simulated = [], [], [], []
    for k in range(count):
        chosen = np.sort(rng.choice(eligible, size=per_device, replace=False))
        clean = torch.from_numpy(whole[chosen]).float().unsqueeze(1)
        bank = DeviceResponses(gains[k:k + 1], (f"{SIMULATED_DEVICE_PREFIX}{k + 1}",))
        coloured = bank.apply(clean, p=1.0, eligible=torch.ones(len(chosen), dtype=torch.bool),
                              generator=torch.Generator().manual_seed(k), silence=settings.silence,
                              log_scale=getattr(settings, "log_scale", 1.0))
        arrays.append(coloured.squeeze(1).numpy().astype(source.array.dtype))
        rows.append(chosen)
        device = bank.names[0]
        simulated.extend([device] * len(chosen))
        files.extend(_simulated_name(validation.files[r], device) for r in chosen)
    taken = np.concatenate(rows)
    array = np.concatenate([whole, *arrays])
    all_files = (*validation.files, *files)
    features = FeatureSet(files=all_files, array=array, directory=source.directory,
                          cache_hit=source.cache_hit, selection=selection_digest(all_files))
    return replace(validation, files=all_files, features=features,
                   labels=np.concatenate([validation.labels, validation.labels[taken]]),
                   devices=(*devices, *simulated))


def _simulated_name(name: str, device: str) -> str:
    path = Path(name)
    return str(path.with_name(f"{path.stem}.{device}{path.suffix}"))


@lru_cache(maxsize=4)
def _validation_gains(count: int, settings: FrontEnd) -> torch.Tensor:
    responses = synthetic_impulse_responses(settings.sample_rate, count=count,
                                            seed=VALIDATION_BANK_SEED)
    return torch.from_numpy(mel_gains(responses, settings, seed=VALIDATION_BANK_SEED))
