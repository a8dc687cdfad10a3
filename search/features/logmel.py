"""Log-mel features, computed once per (file list, front-end settings) and memory-mapped from disk.

On a 2-core CPU the DCASE front-end (resample 44.1 → 32 kHz, 4096-point STFT, 256 mels) costs more
per clip than a 30 M-MAC model's training step, so training must never compute a spectrogram. The
first request for a file list computes every clip in parallel (joblib) straight into a ``.npy``
file; later requests map that file and a batch of 256 clips is a memory gather.

A cache folder is trusted only when its ``meta.json`` names the same key and files, the array file
has exactly the expected size, and a sampled checksum matches. Anything else is logged and rebuilt.

The DCASE front-end (``FrontEndSettings``) is what students train on. A teacher may need another
(PaSST was pretrained on 128 mels at a 10 ms hop): any frozen dataclass with the ``FrontEnd``
members below is cached the same way, and ``FeatureSet.computed_with`` gives the same clips'
features under it, so a teacher still sees only the files it was given.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from joblib import Parallel, delayed

from asc_search.data.audio import read_clip
from asc_search.errors import CacheError

log = logging.getLogger(__name__)

#: Bump when the computation changes in a way the settings do not capture.
FEATURE_FORMAT_VERSION = 1
_ARRAY = "features.npy"
_META = "meta.json"
_CHECK_BLOCKS = 64
_CHECK_BLOCK_BYTES = 4096


class FrontEnd(Protocol):
    """What the feature cache needs from a front-end's settings (a frozen, hashable dataclass)."""

    sample_rate: int
    hop_length: int
    clip_seconds: float
    dtype: str

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def silence(self) -> float:
        """The feature value of a silent bin: what a mask writes."""
        ...

    @property
    def log_scale(self) -> float:
        """Feature units per natural-log unit of mel power (1 for a plain log; PaSST's ⅕)."""
        ...

    def key(self) -> str: ...

    def build(self) -> torch.nn.Module:
        """The module mapping (samples, source_rate) to features (mels, frames)."""
        ...


@dataclass(frozen=True)
class FrontEndSettings:
    """The DCASE 2024 baseline front-end; defaults are the published settings (DESIGN.md §4)."""

    sample_rate: int = 32_000
    n_fft: int = 4096
    win_length: int = 3072
    hop_length: int = 500
    n_mels: int = 256
    f_min: float = 0.0
    f_max: float = 16_000.0
    log_offset: float = 1e-5
    clip_seconds: float = 1.0
    #: Stored dtype. float16 halves disk and page cache; log-mels span about ±12, where its
    #: resolution (≈0.008) is far below the augmentation noise the recipe adds anyway.
    dtype: str = "float16"

    @property
    def frames(self) -> int:
        samples = round(self.sample_rate * self.clip_seconds)
        return samples // self.hop_length + 1  # centred STFT

    @property
    def shape(self) -> tuple[int, int]:
        """Per-clip feature shape (mels, frames): 256 × 65 for the defaults."""
        return (self.n_mels, self.frames)

    @property
    def silence(self) -> float:
        return math.log(self.log_offset)

    @property
    def log_scale(self) -> float:
        return 1.0

    def key(self) -> str:
        payload = json.dumps({"v": FEATURE_FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def build(self) -> LogMelFrontEnd:
        return LogMelFrontEnd(self)


class ClipResampler(torch.nn.Module):
    """A clip at the front-end's rate and exactly its length: resampled, then padded or cut."""

    def __init__(self, sample_rate: int, clip_seconds: float) -> None:
        super().__init__()
        self.sample_rate, self.samples = sample_rate, round(sample_rate * clip_seconds)
        self._resamplers: dict[int, torch.nn.Module] = {}

    def resampler(self, source_rate: int) -> torch.nn.Module:
        import torchaudio  # imported here: loading it costs a second that most commands never need

        if source_rate not in self._resamplers:
            self._resamplers[source_rate] = (
                torch.nn.Identity() if source_rate == self.sample_rate
                else torchaudio.transforms.Resample(source_rate, self.sample_rate)
            )
        return self._resamplers[source_rate]

    @torch.no_grad()
    def forward(self, samples: torch.Tensor, source_rate: int) -> torch.Tensor:
        audio = self.resampler(source_rate)(samples)
        if audio.shape[-1] < self.samples:  # read_clip allows 1 % slack in length
            audio = torch.nn.functional.pad(audio, (0, self.samples - audio.shape[-1]))
        return audio[..., :self.samples]


class LogMelFrontEnd(torch.nn.Module):
    """Resample to the target rate, mel spectrogram, ``log(x + offset)``: the baseline's front-end."""

    def __init__(self, settings: FrontEndSettings) -> None:
        super().__init__()
        import torchaudio

        self.settings = settings
        self.clip = ClipResampler(settings.sample_rate, settings.clip_seconds)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=settings.sample_rate,
            n_fft=settings.n_fft,
            win_length=settings.win_length,
            hop_length=settings.hop_length,
            n_mels=settings.n_mels,
            f_min=settings.f_min,
            f_max=settings.f_max,
        )

    @torch.no_grad()
    def forward(self, samples: torch.Tensor, source_rate: int) -> torch.Tensor:
        """Map a mono waveform (samples,) or batch (B, samples) to log-mels (…, mels, frames)."""
        return (self.mel(self.clip(samples, source_rate)) + self.settings.log_offset).log()


@dataclass(frozen=True)
class FeatureOrigin:
    """Where a cached list came from: enough to compute the same clips under another front-end."""

    root: Path
    files: tuple[str, ...]  # the whole cached list; a subset's rows index into it
    cache_dir: Path


@dataclass(frozen=True)
class FeatureSet:
    """Cached features for a file list: ``array[i]`` belongs to ``files[i]``."""

    files: tuple[str, ...]
    array: np.ndarray | _RowView  # memory-mapped (N, mels, frames), or rows of one
    directory: Path
    cache_hit: bool
    #: For a subset: a digest of its file list. ``directory`` names the whole cached list, so
    #: anything keyed by the features (the teacher cache) must add this to tell subsets apart.
    selection: str | None = None
    origin: FeatureOrigin | None = None
    #: For a subset: its rows in ``origin.files``.
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {name: row for row, name in enumerate(self.files)}

    def subset(self, rows: Sequence[int] | np.ndarray) -> FeatureSet:
        """The features of ``rows`` (ascending) without copying the memory-mapped array."""
        rows = np.asarray(rows)
        files = tuple(self.files[r] for r in rows)
        selection = hashlib.sha256("\n".join(files).encode()).hexdigest()[:20]
        return FeatureSet(files=files, array=_RowView(self.array, rows), directory=self.directory,
                          cache_hit=self.cache_hit, selection=selection, origin=self.origin,
                          rows=rows if self.rows is None else self.rows[rows])

    def computed_with(self, settings: FrontEnd, *, progress: Callable[[int], None] | None = None,
                      n_jobs: int = -1) -> FeatureSet:
        """The same clips under another front-end, cached like these (for a subset, the whole
        list is computed once and the same rows taken, so K folds compute it once)."""
        if self.origin is None:
            raise CacheError("these features do not record their audio folder")
        whole = build_features(self.origin.files, root=self.origin.root,
                               cache_dir=self.origin.cache_dir, settings=settings,
                               n_jobs=n_jobs, progress=progress)
        return whole if self.rows is None else whole.subset(self.rows)

    def batch(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Gather rows as a float32 tensor (B, 1, mels, frames), the model's input layout."""
        rows = np.asarray(rows)
        order = np.argsort(rows, kind="stable")  # sorted reads are kinder to the page cache
        gathered = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        gathered[order] = self.array[rows[order]]
        return torch.from_numpy(gathered).float().unsqueeze(1)


class _RowView:
    """Rows of an array, indexed like the array itself (``FeatureSet.subset``)."""

    def __init__(self, base: np.ndarray | _RowView, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows
        self.shape = (len(rows), *base.shape[1:])
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.base[self.rows[index]]


def list_key(files: Sequence[str], root: Path, settings: FrontEnd) -> str:
    """Key a file list by names, sizes and modification times, so edited audio is recomputed."""
    digest = hashlib.sha256(settings.key().encode())
    digest.update(str(root.resolve()).encode())
    for name in files:
        stat = (root / name).stat()
        digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def build_features(
    files: Sequence[str],
    *,
    root: Path,
    cache_dir: Path,
    settings: FrontEnd | None = None,
    n_jobs: int = -1,
    progress: Callable[[int], None] | None = None,
) -> FeatureSet:
    """Return cached features for ``files`` (paths relative to ``root``), computing them if needed.

    ``settings`` is the DCASE log-mel front-end by default."""
    settings = settings or FrontEndSettings()
    files = tuple(files)
    key = list_key(files, root, settings)
    directory = cache_dir / "features" / key
    origin = FeatureOrigin(root=root, files=files, cache_dir=cache_dir)
    if directory.exists():
        try:
            return _open_verified(directory, key=key, files=files, settings=settings,
                                  origin=origin)
        except CacheError as exc:
            log.warning("feature cache %s is unusable (%s); rebuilding it", directory, exc)
            shutil.rmtree(directory, ignore_errors=True)
    _compute(files, root=root, directory=directory, key=key, settings=settings, n_jobs=n_jobs,
             progress=progress)
    return _open_verified(directory, key=key, files=files, settings=settings, hit=False,
                          origin=origin)


def _open_verified(
    directory: Path,
    *,
    key: str,
    files: tuple[str, ...],
    settings: FrontEnd,
    hit: bool = True,
    origin: FeatureOrigin | None = None,
) -> FeatureSet:
    meta_path, array_path = directory / _META, directory / _ARRAY
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"{meta_path} unreadable: {exc}") from exc
    if meta.get("key") != key or tuple(meta.get("files", ())) != files:
        raise CacheError("key or file list differs from the request")
    if meta.get("settings") != asdict(settings):
        raise CacheError("front-end settings differ")
    try:
        array = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CacheError(f"{array_path} unreadable: {exc}") from exc
    expected_shape = (len(files), *settings.shape)
    if array.shape != expected_shape or array.dtype != np.dtype(settings.dtype):
        raise CacheError(f"array is {array.shape} {array.dtype}, expected {expected_shape}")
    if array_path.stat().st_size != meta.get("bytes"):
        raise CacheError(f"{array_path} is {array_path.stat().st_size} bytes, expected {meta.get('bytes')}")
    if _sampled_checksum(array_path) != meta.get("checksum"):
        raise CacheError(f"{array_path} content does not match its checksum")
    return FeatureSet(files=files, array=array, directory=directory, cache_hit=hit, origin=origin)


def _sampled_checksum(path: Path) -> str:
    """Hash 64 evenly spaced 4 KiB blocks plus the size: cheap on GBs, catches truncation and
    corruption that touches the header or any sampled block, without reading the whole file."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as handle:
        for block in range(_CHECK_BLOCKS):
            handle.seek(block * max(size - _CHECK_BLOCK_BYTES, 0) // max(_CHECK_BLOCKS - 1, 1))
            digest.update(handle.read(_CHECK_BLOCK_BYTES))
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _front_end(settings: FrontEnd) -> torch.nn.Module:
    return settings.build()


def _compute_rows(paths: list[Path], start: int, array_path: Path, settings: FrontEnd) -> int:
    """Compute rows ``start : start + len(paths)`` straight into the shared array file.

    Always single-threaded: joblib already runs one worker per core, and threaded FFTs round
    differently, which would make the cached bytes depend on the number of workers.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        front_end = _front_end(settings)
        array = np.load(array_path, mmap_mode="r+")
        for offset, path in enumerate(paths):
            audio = read_clip(path, expected_seconds=settings.clip_seconds)
            mels = front_end(torch.from_numpy(audio.samples), audio.sample_rate)
            array[start + offset] = mels.numpy().astype(settings.dtype)
        array.flush()
    finally:
        torch.set_num_threads(threads)
    return len(paths)


def _compute(
    files: tuple[str, ...],
    *,
    root: Path,
    directory: Path,
    key: str,
    settings: FrontEnd,
    n_jobs: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Fill a temporary folder next to ``directory`` and rename it into place when complete.

    The rename is the commit: an interrupted or failed build leaves no folder under the final name,
    and two processes racing for the same key both end up reading one complete copy.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=directory.parent))
    try:
        array_path = partial / _ARRAY
        array = np.lib.format.open_memmap(
            array_path, mode="w+", dtype=settings.dtype, shape=(len(files), *settings.shape)
        )
        del array
        chunk = 32
        workers = n_jobs if len(files) > 4 * chunk else 1
        jobs = [
            delayed(_compute_rows)([root / f for f in files[i : i + chunk]], i, array_path, settings)
            for i in range(0, len(files), chunk)
        ]
        runner = Parallel(n_jobs=workers, return_as="generator_unordered")
        for done in runner(jobs):
            if progress is not None:
                progress(done)
        meta = {
            "key": key,
            "settings": asdict(settings),
            "files": list(files),
            "bytes": array_path.stat().st_size,
            "checksum": _sampled_checksum(array_path),
        }
        (partial / _META).write_text(json.dumps(meta))
        try:
            os.rename(partial, directory)
        except OSError:
            if not directory.exists():
                raise
            log.info("another process finished %s first; using its copy", directory)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
