"""The embedded corpus: a TAU22-layout data set that asc-search writes itself (DESIGN.md §6).

It exists so that every command has real data to run on without a 30 GB download, and it goes
through the same loader as real data. To rank architectures it has to behave like the real task:

* 10 scenes built from shared sound ingredients (babble, footsteps, traffic, motor whine, engine
  harmonics, music, chimes, birds, wind, screech, announcements, reverberation), so confusable pairs
  (airport/shopping_mall, metro/tram, metro/metro_station, bus/tram, street_pedestrian/
  public_square, park/public_square) differ only in a few ingredient levels;
* recording locations with their own character (ingredient mix, pitch, reverberation and a
  spectral colouring), nested inside cities; validation and test use locations never heard in
  training, so memorising locations does not pay;
* device frequency responses, noise floors and clipping: ``a`` near-flat, ``b``/``c`` phones,
  ``s1``–``s6`` harsher simulations, ``s4``–``s6`` only in the test list;
* devices distributed like the real splits (mostly ``a``), nested 5 ⊂ 10 ⊂ 25 ⊂ 50 ⊂ 100 splits
  stratified by scene and device.

Everything derives from one integer seed; recordings are rendered in parallel, each from its own
seed, so the bytes do not depend on the number of workers.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
import soundfile as sf
from joblib import Parallel, delayed

from asc_search.cache_entries import (
    PARTIAL_SUFFIX,
    clean_leftovers,
    entry_lock,
    record_chunk,
    recorded_chunks,
    resumable,
)
from asc_search.data.dataset import (
    DEVICES,
    SCENES,
    SEEN_DEVICES,
    SPLITS,
    DatasetSource,
    split_list_name,
    write_table,
)
from asc_search.errors import DataError, PluginError
from asc_search.hookspecs import hookimpl
from asc_search.parallel import default_workers

#: Bump whenever the rendered audio changes; it is part of the cache folder's name.
GENERATOR_VERSION = 2
SAMPLE_RATE = 44_100
MARKER = "corpus.json"
_PLAN = "plan.json"
_DONE = "chunks.done"
CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon",
          "milan", "paris", "prague", "stockholm", "vienna")
MINOR_DEVICES = ("b", "c", "s1", "s2", "s3")
INGREDIENTS = ("babble", "steps", "birds", "traffic", "wind", "whine", "engine",
               "music", "chime", "bell", "screech", "announce")


# --------------------------------------------------------------------------------------------
# Sizes and difficulty
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSize:
    """How many recordings of each kind; every recording is cut into ``clips_per_recording`` 1 s clips."""

    a_recordings_per_scene: int
    minor_recordings_per_device: int  # per scene, for each of b, c, s1, s2, s3
    clips_per_recording: int
    test_recordings_per_device: int  # per scene, for each of the 9 devices
    validation_recordings_per_device: int  # per scene, for each seen device
    train_locations_per_city: int
    #: More validation recordings per scene and seen device, drawn after all others (their own
    #: random stream and recording numbers), so every other clip stays as it was without them.
    extra_validation_recordings_per_device: int = 0


SIZES: dict[str, CorpusSize] = {
    # A 100 % epoch of ``default`` (8,000 clips) trains in under a minute on 2 cores. Recordings
    # are 5 s rather than the real 10 s so that 5 % still holds 80 of them.
    # Validation: 8 recordings per scene and seen device (2,400 clips, 480 recordings), so a
    # validation accuracy's 95 % interval over recordings is about ±2.5 points, not ±5.5.
    "default": CorpusSize(120, 8, 5, 4, 2, 2, extra_validation_recordings_per_device=6),
    # TAU22 at its real scale (scale tests on machines without the real data): 10-s recordings,
    # split 100 = 13,960 recordings (139,600 clips; the real fold has 139,620) of which device a
    # 102,100 (real 102,150) and b, c, s1-s3 7,500 each (real 7,370-7,560); test 33 recordings
    # per scene and device, 29,700 clips (real 29,680, 3,290-3,300 per device); 400 training
    # locations (the real split 50 has 365). Validation: 8 recordings per scene and seen device
    # (4,800 clips). About 23 GB of 24-bit WAV.
    "full": CorpusSize(1021, 75, 10, 33, 8, 4),
    "small": CorpusSize(20, 2, 3, 1, 1, 1),
    "tiny": CorpusSize(3, 1, 2, 1, 1, 1),
}


@dataclass(frozen=True)
class Difficulty:
    """Spread of the hierarchy scene → city → location → recording, in ingredient-strength units.

    Larger location spread makes unseen test locations harder; the device settings make unseen
    devices harder. Calibrated against a trained baseline (benchmarks/README.md).
    """

    city_spread: float = 0.06
    location_spread: float = 0.16
    recording_spread: float = 0.06
    location_colour_db: float = 4.0
    stray_ingredient_chance: float = 0.25


# --------------------------------------------------------------------------------------------
# Scenes: ingredient strengths in [0, 1] plus continuous background settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneRecipe:
    strengths: dict[str, float]
    tilt_db_per_octave: float  # background spectral slope above 1 kHz
    rumble_db: float  # low-frequency shelf below ``rumble_hz``
    rumble_hz: float
    rt60: float  # reverberation time in seconds
    whine_hz: float = 400.0  # motor whine fundamental
    engine_hz: float = 40.0  # engine firing fundamental


def _recipe(rt60: float, tilt: float, rumble: float, rumble_hz: float, **kw: float) -> SceneRecipe:
    whine = kw.pop("whine_hz", 400.0)
    engine = kw.pop("engine_hz", 40.0)
    strengths = {name: float(kw.get(name, 0.0)) for name in INGREDIENTS}
    return SceneRecipe(strengths, tilt, rumble, rumble_hz, rt60, whine, engine)


SCENE_RECIPES: dict[str, SceneRecipe] = {
    "airport": _recipe(1.1, -4.0, 8, 150, babble=0.6, steps=0.5, announce=0.5, music=0.15,
                       chime=0.35, engine=0.1, engine_hz=30),
    "shopping_mall": _recipe(1.0, -4.5, 5, 150, babble=0.65, steps=0.45, announce=0.2,
                             music=0.5, chime=0.2),
    "metro": _recipe(0.4, -3.0, 14, 200, whine=0.75, screech=0.35, babble=0.2, announce=0.3,
                     chime=0.25, whine_hz=520),
    "metro_station": _recipe(1.4, -3.5, 10, 180, whine=0.35, screech=0.4, babble=0.5, steps=0.5,
                             announce=0.45, chime=0.35, whine_hz=480),
    "tram": _recipe(0.4, -3.5, 12, 180, whine=0.5, screech=0.3, babble=0.3, bell=0.4,
                    announce=0.25, whine_hz=360),
    "bus": _recipe(0.35, -4.0, 15, 120, engine=0.75, whine=0.1, babble=0.35, announce=0.2,
                   bell=0.1, engine_hz=38),
    "park": _recipe(0.1, -6.0, 3, 100, birds=0.75, wind=0.55, babble=0.15, steps=0.2,
                    traffic=0.1),
    "public_square": _recipe(0.25, -5.0, 6, 120, babble=0.5, steps=0.4, traffic=0.3, birds=0.35,
                             wind=0.3, music=0.05),
    "street_pedestrian": _recipe(0.3, -4.5, 7, 120, babble=0.6, steps=0.65, traffic=0.35,
                                 birds=0.1, music=0.1),
    "street_traffic": _recipe(0.15, -4.0, 14, 100, traffic=0.85, engine=0.3, babble=0.1,
                              wind=0.25, engine_hz=45),
}


# --------------------------------------------------------------------------------------------
# The plan: which recording is where, by which device, in which fold
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    scene: str
    city: str
    location_id: int
    strengths: dict[str, float]
    colour_db: tuple[float, ...]  # gains at _COLOUR_CENTRES
    pitch: float  # multiplies whine / engine / bird / formant frequencies
    rt60: float


@dataclass(frozen=True)
class Device:
    name: str
    highpass_hz: float
    lowpass_hz: float
    ripple_db: tuple[float, ...]  # gains at _COLOUR_CENTRES
    noise_dbfs: float
    drive: float  # soft-clipping drive; 0 = linear


@dataclass(frozen=True)
class Recording:
    index: int
    fold: str  # train | validation | test
    scene: str
    city: str
    location_id: int
    recording_id: int
    device: str

    def clip_names(self, clips: int) -> list[str]:
        stem = f"{self.scene}-{self.city}-{self.location_id}-{self.recording_id}"
        return [f"audio/{stem}-{k}-{self.device}.wav" for k in range(clips)]


@dataclass(eq=False)  # hashed by identity: it keys the per-worker transfer-function cache
class CorpusPlan:
    seed: int
    size: CorpusSize
    difficulty: Difficulty
    locations: dict[int, Location] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    recordings: list[Recording] = field(default_factory=list)


_COLOUR_CENTRES = np.geomspace(80.0, 16_000.0, 8)


def _smooth_curve(rng: np.random.Generator, spread_db: float) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.normal(0.0, spread_db, len(_COLOUR_CENTRES)))


def _devices(seed: int) -> dict[str, Device]:
    rng = np.random.default_rng([seed, 2])
    devices = {"a": Device("a", 20.0, 20_000.0, _smooth_curve(rng, 0.5), -90.0, 0.0)}
    devices["b"] = Device("b", 180.0, 15_000.0, _smooth_curve(rng, 3.0), -70.0, 0.0)
    devices["c"] = Device("c", 120.0, 12_500.0, _smooth_curve(rng, 3.0), -72.0, 0.0)
    for name in ("s1", "s2", "s3", "s4", "s5", "s6"):
        unseen = name in ("s4", "s5", "s6")
        devices[name] = Device(
            name,
            float(rng.uniform(100, 450 if unseen else 300)),
            float(rng.uniform(6_000 if unseen else 8_000, 14_000)),
            _smooth_curve(rng, 6.0 if unseen else 4.5),
            float(rng.uniform(-70, -55)),
            float(rng.choice([0.0, rng.uniform(1.0, 3.0)])),
        )
    return devices


def _jitter(strengths: dict[str, float], rng: np.random.Generator, spread: float,
            stray_chance: float = 0.0) -> dict[str, float]:
    out = {}
    for name, value in strengths.items():
        if value > 0:
            value = value + rng.normal(0.0, spread)
        elif rng.random() < stray_chance:
            value = rng.uniform(0.0, 0.25)  # a stray ingredient: birds at a bus stop
        out[name] = float(np.clip(value, 0.0, 1.0))
    return out


def make_plan(*, seed: int, size: CorpusSize, difficulty: Difficulty | None = None) -> CorpusPlan:
    """Decide every location, device and recording; no audio yet."""
    difficulty = difficulty or Difficulty()
    plan = CorpusPlan(seed=seed, size=size, difficulty=difficulty, devices=_devices(seed))
    rng = np.random.default_rng([seed, 1])
    next_location = 1000
    next_recording = 40_000
    validation_locations: dict[str, list[int]] = {}
    for scene in SCENES:
        recipe = SCENE_RECIPES[scene]
        by_fold: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
        for city in CITIES:
            city_strengths = _jitter(recipe.strengths, rng, difficulty.city_spread)
            per_fold = {"train": size.train_locations_per_city, "validation": 1, "test": 1}
            for fold, count in per_fold.items():
                for _ in range(count):
                    plan.locations[next_location] = Location(
                        scene=scene,
                        city=city,
                        location_id=next_location,
                        strengths=_jitter(city_strengths, rng, difficulty.location_spread,
                                          difficulty.stray_ingredient_chance),
                        colour_db=_smooth_curve(rng, difficulty.location_colour_db),
                        pitch=float(np.exp(rng.normal(0.0, 0.15))),
                        rt60=float(recipe.rt60 * np.exp(rng.normal(0.0, 0.3))),
                    )
                    by_fold[fold].append(next_location)
                    next_location += 1
        devices_per_fold = {
            "train": ["a"] * size.a_recordings_per_scene
            + [d for d in MINOR_DEVICES for _ in range(size.minor_recordings_per_device)],
            "validation": [d for d in SEEN_DEVICES
                           for _ in range(size.validation_recordings_per_device)],
            "test": [d for d in DEVICES for _ in range(size.test_recordings_per_device)],
        }
        for fold, devices in devices_per_fold.items():
            locations = by_fold[fold]
            order = rng.permutation(len(locations))
            for k, device in enumerate(devices):
                location = plan.locations[locations[order[k % len(locations)]]]
                plan.recordings.append(Recording(
                    index=len(plan.recordings), fold=fold, scene=scene, city=location.city,
                    location_id=location.location_id, recording_id=next_recording, device=device,
                ))
                next_recording += 1
        validation_locations[scene] = by_fold["validation"]
    extra_rng = np.random.default_rng([seed, 5])
    for scene in SCENES:
        locations = validation_locations[scene]
        for device in SEEN_DEVICES:
            for _ in range(size.extra_validation_recordings_per_device):
                location = plan.locations[locations[int(extra_rng.integers(len(locations)))]]
                plan.recordings.append(Recording(
                    index=len(plan.recordings), fold="validation", scene=scene,
                    city=location.city, location_id=location.location_id,
                    recording_id=next_recording, device=device))
                next_recording += 1
    return plan


# --------------------------------------------------------------------------------------------
# Rendering one recording
# --------------------------------------------------------------------------------------------


def _shaped_noise(white_spectrum: np.ndarray, gain_db: np.ndarray, length: int) -> np.ndarray:
    gain = (10.0 ** (gain_db / 20.0)).astype(np.float32)
    return np.fft.irfft(white_spectrum * gain, length).astype(np.float32)


def _band_db(freqs: np.ndarray, centre: float, octaves: float) -> np.ndarray:
    """0 dB at ``centre`` falling off as a Gaussian in log-frequency (−8.7 dB one width away)."""
    return -8.686 * (np.log2(np.maximum(freqs, 1.0) / centre) / octaves) ** 2 / 2


def _curve_db(freqs: np.ndarray, gains: tuple[float, ...]) -> np.ndarray:
    return np.interp(np.log(np.maximum(freqs, 1.0)), np.log(_COLOUR_CENTRES), gains)


def _smooth_envelope(rng: np.random.Generator, length: int, rate_hz: float) -> np.ndarray:
    """A positive random envelope varying at about ``rate_hz`` (interpolated on a 64-sample grid)."""
    knots = max(int(length / SAMPLE_RATE * rate_hz) + 2, 2)
    coarse = np.interp(np.linspace(0, knots - 1, -(-length // 64)), np.arange(knots),
                       rng.random(knots))
    return np.repeat(coarse.astype(np.float32), 64)[:length]


def _add_event(signal: np.ndarray, event: np.ndarray, start: int) -> None:
    end = min(start + len(event), len(signal))
    if end > start:
        signal[start:end] += event[: end - start]


def _phase(freqs_hz: np.ndarray) -> np.ndarray:
    """Instantaneous phase of a tone whose frequency follows ``freqs_hz``."""
    return (2 * np.pi / SAMPLE_RATE * np.cumsum(freqs_hz, dtype=np.float64)).astype(np.float32)


def _tone(freqs_hz: np.ndarray) -> np.ndarray:
    return np.sin(_phase(freqs_hz))


@functools.lru_cache(maxsize=8)
def _room_and_device(plan: CorpusPlan, location_id: int, device_name: str, size: int) -> np.ndarray:
    """Transfer function of a location's room (decaying noise tail) times a device's response.

    Cached because recordings share locations; the plan is the cache key's identity.
    """
    location, device = plan.locations[location_id], plan.devices[device_name]
    rng = np.random.default_rng([plan.seed, 5, location_id])
    tail = int(min(location.rt60, 1.0) * SAMPLE_RATE)
    room = rng.standard_normal(tail).astype(np.float32)
    room *= np.exp(-6.9 * np.arange(tail, dtype=np.float32) / max(tail, 1))
    room[0] = math.sqrt(tail) * 0.6  # the direct sound
    room /= np.sqrt(np.sum(room**2))
    f = np.maximum(np.fft.rfftfreq(size, 1.0 / SAMPLE_RATE), 1.0)
    response_db = (
        _curve_db(f, device.ripple_db)
        - 10 * np.log10(1 + (device.highpass_hz / f) ** 4)
        - 10 * np.log10(1 + (f / device.lowpass_hz) ** 8)
    )
    return np.fft.rfft(room, size) * (10 ** (response_db / 20)).astype(np.float32)


def render_recording(plan: CorpusPlan, recording: Recording) -> np.ndarray:
    """Render one recording as (clips, samples) float32, the device already applied."""
    rng = np.random.default_rng([plan.seed, 3, recording.index])
    location = plan.locations[recording.location_id]
    device = plan.devices[recording.device]
    recipe = SCENE_RECIPES[recording.scene]
    strength = _jitter(location.strengths, rng, plan.difficulty.recording_spread)
    n = plan.size.clips_per_recording * SAMPLE_RATE
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    white = np.fft.rfft(rng.standard_normal(n, dtype=np.float32))
    pitch = location.pitch

    # Background: slope, low rumble and the location's colouring, one stationary noise.
    background_db = (
        recipe.tilt_db_per_octave * np.maximum(np.log2(np.maximum(freqs, 1.0) / 1000.0), 0.0)
        + recipe.rumble_db * (freqs < recipe.rumble_hz * pitch)
        + _curve_db(freqs, location.colour_db)
    )
    mix = _shaped_noise(white, background_db, n)
    mix *= 0.6 + 0.4 * _smooth_envelope(rng, n, 0.5)

    def level(name: str) -> float:
        return 0.0 if strength[name] <= 0.02 else 10.0 ** ((-24.0 + 30.0 * strength[name]) / 20.0)

    quarter_turns = np.array([1, 1j, -1, -1j], dtype=np.complex64)

    def spectrum_noise(gain_db: np.ndarray) -> np.ndarray:
        # A fresh noise from the same spectrum: random quarter-turn phases decorrelate it cheaply.
        shifted = white * quarter_turns[rng.integers(0, 4, len(white))]
        return _shaped_noise(shifted, gain_db, n)

    if level("babble"):
        formants = sum(_band_db(freqs, f * pitch, 0.5) for f in (550.0, 1500.0, 2600.0))
        talkers = 1 + int(6 * strength["babble"])
        syllables = sum(
            np.maximum(np.sin(2 * np.pi * rng.uniform(3.0, 5.5) * t + rng.uniform(0, 6.3)), 0)
            * _smooth_envelope(rng, n, 0.7)
            for _ in range(talkers)
        ) / math.sqrt(talkers)
        mix += level("babble") * 3 * spectrum_noise(formants / 3) * syllables
    if level("traffic"):
        passes = np.zeros(n, dtype=np.float32)
        for _ in range(rng.poisson(1 + 4 * strength["traffic"] * n / SAMPLE_RATE / 10)):
            centre, width = rng.uniform(0, n / SAMPLE_RATE), rng.uniform(0.8, 2.5)
            near = slice(max(int((centre - 4 * width) * SAMPLE_RATE), 0),
                         max(int((centre + 4 * width) * SAMPLE_RATE), 0))
            passes[near] += np.exp(-0.5 * ((t[near] - centre) / width) ** 2) * rng.uniform(0.5, 1.5)
        rumble = _band_db(freqs, 350.0 * pitch, 1.2) + 6 * (freqs < 120)
        mix += level("traffic") * 4 * spectrum_noise(rumble) * (0.2 + passes)
    if level("wind"):
        gusts = _smooth_envelope(rng, n, 1.5) ** 2
        mix += level("wind") * 4 * spectrum_noise(_band_db(freqs, 60.0, 1.5)) * gusts
    if level("whine"):
        ramp = _smooth_envelope(rng, n, 0.3)
        f0 = recipe.whine_hz * pitch * (0.7 + 0.6 * ramp)
        phase = _phase(f0)
        whine = sum(np.sin(h * phase) / h for h in (1, 2, 3, 5))
        mix += level("whine") * 0.5 * whine * (0.4 + 0.6 * _smooth_envelope(rng, n, 0.4))
    if level("engine"):
        f0 = recipe.engine_hz * pitch * (0.9 + 0.3 * _smooth_envelope(rng, n, 0.5))
        phase = _phase(f0)
        engine = sum(np.sin(h * phase) * np.float32(0.8 ** h) for h in range(1, 14))
        mix += level("engine") * 0.6 * engine
    if level("music"):
        music = np.zeros(n, dtype=np.float32)
        chord_seconds = rng.uniform(1.0, 2.0)
        for start in np.arange(0, n / SAMPLE_RATE, chord_seconds):
            root = 220.0 * 2 ** (rng.integers(0, 12) / 12)
            span = slice(int(start * SAMPLE_RATE), int((start + chord_seconds) * SAMPLE_RATE))
            for interval in (0, 4, 7):
                phase = np.float32(2 * np.pi * root * 2 ** (interval / 12)) * t[span]
                music[span] += np.sin(phase) + 0.25 * np.sin(2 * phase)
        mix += level("music") * 0.3 * music
    for name, partials, decay in (("chime", (1.0, 2.0, 3.0), 0.8), ("bell", (1.0, 2.76, 5.4), 0.5)):
        if level(name):
            base = rng.uniform(600, 1100) * pitch
            for _ in range(rng.poisson(0.3 * strength[name] * n / SAMPLE_RATE)):
                length = int(1.5 * SAMPLE_RATE)
                tau = np.arange(length, dtype=np.float32) / SAMPLE_RATE
                ding = sum(np.sin(2 * np.pi * base * p * tau) / p for p in partials)
                _add_event(mix, level(name) * 2 * ding * np.exp(-tau / decay),
                           int(rng.integers(0, n)))
    if level("steps"):
        for start in np.cumsum(rng.exponential(0.55 / strength["steps"], 40)):
            if start >= n / SAMPLE_RATE:
                break
            length = int(0.03 * SAMPLE_RATE)
            tau = np.arange(length, dtype=np.float32) / SAMPLE_RATE
            click = rng.standard_normal(length).astype(np.float32) * np.exp(-tau / 0.006)
            click *= np.sin(2 * np.pi * rng.uniform(1000, 3000) * tau)
            _add_event(mix, level("steps") * 6 * click, int(start * SAMPLE_RATE))
    if level("birds"):
        for _ in range(rng.poisson(2.5 * strength["birds"] * n / SAMPLE_RATE)):
            start = int(rng.integers(0, n))
            song_pitch = rng.uniform(2500, 6000) * pitch
            for k in range(int(rng.integers(2, 7))):
                length = int(rng.uniform(0.05, 0.15) * SAMPLE_RATE)
                sweep = np.linspace(song_pitch, song_pitch * rng.uniform(0.6, 1.5), length)
                chirp = _tone(sweep) * np.sin(np.linspace(0, np.pi, length)) ** 2
                _add_event(mix, level("birds") * 1.5 * chirp, start + k * int(0.18 * SAMPLE_RATE))
    if level("screech"):
        for _ in range(rng.poisson(0.4 * strength["screech"] * n / SAMPLE_RATE)):
            length = int(rng.uniform(0.5, 2.0) * SAMPLE_RATE)
            tau = np.arange(length, dtype=np.float32) / SAMPLE_RATE
            f = rng.uniform(2500, 5500) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 9) * tau))
            _add_event(mix, level("screech") * _tone(f) * np.sin(np.pi * tau / tau[-1]),
                       int(rng.integers(0, n)))
    if level("announce"):
        for _ in range(rng.poisson(0.15 * strength["announce"] * n / SAMPLE_RATE)):
            length = int(rng.uniform(1.5, 3.5) * SAMPLE_RATE)
            band = _band_db(np.fft.rfftfreq(length, 1 / SAMPLE_RATE), 1200.0 * pitch, 0.9)
            voice = np.fft.irfft(np.fft.rfft(rng.standard_normal(length)) * 10 ** (band / 20),
                                 length).astype(np.float32)
            tau = np.arange(length, dtype=np.float32) / SAMPLE_RATE
            voice *= np.maximum(np.sin(2 * np.pi * rng.uniform(3.5, 5) * tau), 0)
            _add_event(mix, level("announce") * 4 * voice, int(rng.integers(0, n)))

    # Room and device in one convolution (the room's reverberation tail, then the device response).
    size = n + SAMPLE_RATE  # 44100 = 2²·3²·5²·7²: a fast FFT length that holds the tail
    spectrum = np.fft.rfft(mix, size) * _room_and_device(plan, location.location_id, device.name,
                                                         size)
    audio = np.fft.irfft(spectrum, size)[:n].astype(np.float32)

    # Level: each recording at its own loudness, then the device's noise floor and clipping.
    rms = float(np.sqrt(np.mean(audio ** 2))) or 1.0
    audio *= 10 ** (rng.uniform(-32, -22) / 20) / rms
    audio += 10 ** (device.noise_dbfs / 20) * rng.standard_normal(n).astype(np.float32)
    if device.drive:
        audio = np.tanh(device.drive * audio * 4) / (device.drive * 4)
    peak = float(np.max(np.abs(audio)))
    if peak > 0.99:
        audio *= 0.99 / peak
    return audio.reshape(plan.size.clips_per_recording, SAMPLE_RATE)


# --------------------------------------------------------------------------------------------
# Writing the folder
# --------------------------------------------------------------------------------------------


def _render_chunk(plan: CorpusPlan, recordings: list[Recording], audio_dir: Path,
                  index: int) -> tuple[int, int]:
    """Render and write one chunk's recordings; returns (chunk index, recordings written)."""
    for recording in recordings:
        clips = render_recording(plan, recording)
        for name, clip in zip(recording.clip_names(plan.size.clips_per_recording), clips,
                              strict=True):
            sf.write(str(audio_dir / Path(name).name), clip, SAMPLE_RATE, subtype="PCM_24")
    return index, len(recordings)


def _rendered_chunks(partial: Path, manifest: dict[str, object]) -> set[int] | None:
    """The chunks an interrupted writer of the same corpus finished, or None: start afresh."""
    try:
        if json.loads((partial / _PLAN).read_text()) != json.loads(json.dumps(manifest)):
            return None
        return recorded_chunks(partial / _DONE)
    except (OSError, ValueError):
        return None


def _split_lists(plan: CorpusPlan) -> dict[int, list[tuple[str, str]]]:
    """Nested splits of whole recordings, as the DCASE lists are drawn.

    Per device, recordings are ranked by interleaving the scenes (a shuffled round-robin), and
    split p keeps the first p % of each device's ranking: the device mix is the same at every
    split, the scenes are as balanced as the counts allow, and 5 ⊂ 10 ⊂ 25 ⊂ 50 by construction.
    """
    rng = np.random.default_rng([plan.seed, 4])
    by_device: dict[str, dict[str, list[Recording]]] = {}
    for recording in plan.recordings:
        if recording.fold == "train":
            by_device.setdefault(recording.device, {}).setdefault(recording.scene, []).append(
                recording)
    lists: dict[int, list[tuple[str, str]]] = {p: [] for p in SPLITS[:-1]}
    for device, scenes in sorted(by_device.items()):
        queues = [[group[i] for i in rng.permutation(len(group))]
                  for _, group in sorted(scenes.items())]
        ranked: list[Recording] = []
        while any(queues):
            for k in rng.permutation(len(queues)):
                if queues[k]:
                    ranked.append(queues[k].pop())
        for percent in lists:
            # Even the smallest split of a tiny corpus holds every scene (from device a).
            least = len(queues) if device == "a" else 1
            count = max(round(percent / 100 * len(ranked)), least)
            lists[percent].extend(
                (name, r.scene) for r in ranked[:count]
                for name in r.clip_names(plan.size.clips_per_recording))
    return {p: sorted(rows) for p, rows in lists.items()}


def corpus_manifest(*, seed: int, size: str) -> dict[str, object]:
    """What identifies a corpus: written as ``corpus.json`` last, so its presence means complete."""
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
            "size_settings": asdict(SIZES[size]), "difficulty": asdict(Difficulty())}


def is_complete(folder: Path, *, seed: int, size: str) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == corpus_manifest(seed=seed, size=size)
    except (OSError, ValueError):
        return False


def write_corpus(
    out: Path,
    *,
    seed: int = 0,
    size: str = "default",
    n_jobs: int = -1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the embedded corpus to ``out`` (which must not exist or be an empty folder).

    The corpus is rendered into a sibling folder ``.NAME.partial`` and renamed into place, so
    ``out`` either holds a complete corpus or nothing. Finished chunks of recordings are recorded
    as they are written: a writer that is killed or interrupted (the full size takes tens of
    minutes) is resumed by the next call with the same seed and size. ``progress(done, total)`` is
    called as recordings finish.
    """
    if size not in SIZES:
        raise DataError(f"corpus size {size!r}: unknown, choose one of {', '.join(SIZES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; choose a new folder")
    plan = make_plan(seed=seed, size=SIZES[size])
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = corpus_manifest(seed=seed, size=size)
    partial = out.parent / f".{out.name}{PARTIAL_SUFFIX}"
    done = _rendered_chunks(partial, manifest)
    if done is None:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "audio").mkdir(parents=True)
        (partial / _PLAN).write_text(json.dumps(manifest))
        done = set()
    # Rendered chunks are kept for the next call with the same settings (a full-size corpus takes
    # tens of minutes); a failure other than an interruption is not resumable.
    with resumable(partial):
        audio_dir = partial / "audio"
        # Chunks of one location's recordings share the cached room transfer function.
        ordered = sorted(plan.recordings, key=lambda r: (r.location_id, r.device))
        chunks = [ordered[i : i + 6] for i in range(0, len(ordered), 6)]
        finished = sum(len(chunks[k]) for k in done)
        if finished and progress is not None:
            progress(finished, len(plan.recordings))
        todo = [k for k in range(len(chunks)) if k not in done]
        runner = Parallel(n_jobs=default_workers(n_jobs) if len(todo) > 2 else 1,
                          return_as="generator_unordered")
        with (partial / _DONE).open("a") as record:
            for index, count in runner(delayed(_render_chunk)(plan, chunks[k], audio_dir, k)
                                       for k in todo):
                record_chunk(record, index)  # its files are written and closed: it counts
                finished += count
                if progress is not None:
                    progress(finished, len(plan.recordings))
        clips = plan.size.clips_per_recording
        meta_rows = [
            (name, r.scene, f"{r.city}-{r.location_id}", r.device)
            for r in plan.recordings for name in r.clip_names(clips)
        ]
        write_table(partial / "meta.csv", sorted(meta_rows),
                    header=("filename", "scene_label", "identifier", "source_label"))
        for percent, rows in _split_lists(plan).items():
            write_table(partial / split_list_name(percent), rows,
                        header=("filename", "scene_label"))
        for fold, file_name in (("test", "test.csv"), ("validation", "validation.csv")):
            rows = sorted((name, r.scene) for r in plan.recordings if r.fold == fold
                          for name in r.clip_names(clips))
            write_table(partial / file_name, rows, header=("filename", "scene_label"))
        for name in (_PLAN, _DONE):
            (partial / name).unlink()
        (partial / MARKER).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(partial, out)
    return out


def cached_corpus(cache_dir: Path, *, seed: int = 0, size: str = "default",
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """The corpus folder inside the cache, written on first use and reused afterwards."""
    folder = cache_dir / "corpus" / f"embedded-{size}-seed{seed}-v{GENERATOR_VERSION}"
    if is_complete(folder, seed=seed, size=size):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(folder):  # workers started together write it once; the others wait
        if is_complete(folder, seed=seed, size=size):
            return folder
        if folder.exists():
            shutil.rmtree(folder)  # left by an older writer without its marker (and no lock)
        clean_leftovers(folder.parent, keep=folder.name)
        return write_corpus(folder, seed=seed, size=size, progress=progress)


@hookimpl
def asc_dataset_sources() -> list[DatasetSource]:
    return [
        DatasetSource(
            name=f"embedded{'' if size == 'default' else '-' + size}",
            description=(
                f"embedded synthetic TAU22-layout corpus, size {size!r}, seed 0 "
                f"(written to the cache folder on first use)"
            ),
            prepare=lambda cache_dir, size=size: cached_corpus(cache_dir, size=size),
        )
        for size in SIZES
    ]


@hookimpl
def asc_register_commands(cli: click.Group) -> None:
    """Add ``data synth`` to the core's ``data`` group.

    Writing this corpus is this plugin's business, so the command lives here and the command line
    never imports the plugin: the core asks the plugin manager, as it would a third party's.
    """
    # Imported here, not with the module: workers load this plugin for its data source alone.
    from asc_search.cli.shared import Context, pass_context, stdout_console
    from asc_search.progress import progress_bar

    @click.command("synth")
    @click.option("--out", type=click.Path(path_type=Path), default=None,
                  help="New folder to write [default: the cache folder, reused when present].")
    @click.option("--seed", type=int, default=0,
                  help="Corpus seed; the same seed gives the same bytes.")
    @click.option("--size", type=click.Choice(["default", "full", "small", "tiny"]),
                  default="default",
                  help="default: 8,000 training clips; full: TAU22's real counts (139,600 "
                       "training and 29,700 test clips, about 23 GB); small and tiny are for "
                       "quick trials and tests.")
    @click.option("--jobs", type=int, default=-1,
                  help="Worker processes (-1: one per usable core, at most 8).")
    @pass_context
    def data_synth(obj: Context, out: Path | None, seed: int, size: str, jobs: int) -> None:
        """Write the embedded TAU22-layout corpus (meta.csv, audio/, split lists, test, validation)."""
        total = len(make_plan(seed=seed, size=SIZES[size]).recordings)
        started = time.perf_counter()
        with progress_bar("rendering recordings", total=total, enabled=not obj.quiet) as advance:
            reported = 0

            def report(done: int, _total: int) -> None:
                nonlocal reported
                advance(done - reported)
                reported = done

            if out is None:
                folder = cached_corpus(obj.cache, seed=seed, size=size, progress=report)
            else:
                folder = write_corpus(out, seed=seed, size=size, n_jobs=jobs, progress=report)
        stdout_console().print(f"corpus ready in {time.perf_counter() - started:.1f} s: {folder}")

    data_group = cli.commands.get("data")  # the core's (data check), built before this hook
    if not isinstance(data_group, click.Group):
        raise PluginError("asc-search has no data command group to add data synth to")
    data_group.add_command(data_synth)
