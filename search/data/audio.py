"""Decoding one clip, with every way a file can be wrong turned into a one-line ``DataError``.

The dataset loader and the feature builder both read audio through ``read_clip`` so that a broken
file is reported the same way wherever it is met. Stereo and other sample rates are accepted
(downmixed and resampled later by the front-end) because real corpora contain them; NaN, silence,
truncation and non-WAV content are refused because no front-end setting makes them usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asc_search.errors import DataError

#: A clip may differ from the nominal length by this fraction before it counts as truncated.
LENGTH_TOLERANCE = 0.01


@dataclass(frozen=True)
class ClipAudio:
    """A decoded clip as mono float32 samples in [-1, 1] plus what was done to make it so."""

    samples: np.ndarray
    sample_rate: int
    downmixed_from: int = 1  # number of channels in the file


def read_clip(path: Path, *, expected_seconds: float | None = 1.0) -> ClipAudio:
    """Decode ``path`` to mono float32, refusing files that cannot be a valid clip.

    ``expected_seconds`` (``None`` to skip) rejects clips whose length differs by more than 1 %,
    which is how truncated files show up: libsndfile quietly reads whatever frames are present.
    """
    if not path.is_file():
        raise DataError(f"{path}: file listed but not found")
    try:
        with sf.SoundFile(str(path)) as handle:
            sample_rate = int(handle.samplerate)
            channels = int(handle.channels)
            declared = int(handle.frames)
            data = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable WAV file ({detail})") from exc
    if data.shape[0] == 0:
        raise DataError(f"{path}: contains no audio frames")
    if data.shape[0] < declared:
        raise DataError(f"{path}: truncated (header says {declared} frames, found {data.shape[0]})")
    if expected_seconds is not None:
        seconds = data.shape[0] / sample_rate
        if abs(seconds - expected_seconds) > LENGTH_TOLERANCE * expected_seconds:
            raise DataError(
                f"{path}: {seconds:.3f} s long, expected {expected_seconds:g} s"
                " (truncated or not a clip of this corpus)"
            )
    if not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or infinite samples")
    if not np.any(data):
        raise DataError(f"{path}: is silent (every sample is zero)")
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    return ClipAudio(samples=np.ascontiguousarray(mono), sample_rate=sample_rate,
                     downmixed_from=channels)
