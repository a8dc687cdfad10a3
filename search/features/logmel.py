"""Log-mel features, computed once per (file list, front-end settings) and memory-mapped from disk.

On a 2-core CPU the DCASE front-end (resample 44.1 → 32 kHz, 4096-point STFT, 256 mels) costs more
per clip than a 30 M-MAC model's training step, so training must never compute a spectrogram. The
first request for a file list computes every clip in parallel (joblib) straight into a ``.npy``
file; later requests map that file and a batch of 256 clips is a memory gather.

A cache folder is trusted only when its ``meta.json`` names the same key and files, the array file
has exactly the expected size, and a sampled checksum matches. Anything else is logged, set aside
and rebuilt (``asc_search.cache_entries``: entries are built under a lock, so workers started
together build once).

The key is the front-end's settings plus every clip's name and content digest
(``asc_search.data.fingerprints``), not the folder's path: machines holding copies of the same data
share features, and so the teachers and parents keyed by them. A build commits its rows a chunk
at a time (computed in parallel, flushed, recorded); one that is killed, 20 minutes into the
139,620 clips of TAU22's split 100, resumes where it stopped and loses at most the chunk it was in.

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
import mmap
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from joblib import Parallel, delayed

from asc_search.cache_entries import (
    clean_leftovers,
    entry_lock,
    partial_folder,
    record_chunk,
    recorded_chunks,
    resumable,
    set_aside,
)
from asc_search.data.audio import read_clip
from asc_search.data.fingerprints import FileStat, content_digests
from asc_search.errors import CacheError
from asc_search.parallel import default_workers

log = logging.getLogger(__name__)

#: Bump when the computation changes in a way the settings do not capture.
FEATURE_FORMAT_VERSION = 1
_ARRAY = "features.npy"
_META = "meta.json"
_PLAN = "plan.json"
_DONE = "chunks.done"
_CHECK_BLOCKS = 64
_CHECK_BLOCK_BYTES = 4096
#: Clips each worker computes per chunk: a chunk (this × workers clips, a few seconds of work) is
#: the most a killed build loses.
CLIPS_PER_WORKER_CHUNK = 256


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
    #: The files' stats from the start's one stat pass (``TAU22Dataset.file_stats``), if known.
    stats: Mapping[str, FileStat] | None = field(default=None, compare=False, hash=False)


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
        selection = selection_digest(files)
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
                               n_jobs=n_jobs, progress=progress, stats=self.origin.stats)
        return whole if self.rows is None else whole.subset(self.rows)

    def batch(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Gather rows as a float32 tensor (B, 1, mels, frames), the model's input layout."""
        return torch.from_numpy(self.gather(rows)).float().unsqueeze(1)

    def gather(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored rows (B, mels, frames), in their stored dtype, read through the map.

        Pages a process touches through a map stay in its resident set: an epoch over TAU22's
        split 100 would grow every training process by the whole 4.65 GB file. An array above
        ``MAPPED_BYTES_KEPT`` gives its pages back every ``READ_BETWEEN_RELEASES`` read (the
        kernel's page cache keeps them, shared by every worker); smaller arrays stay mapped, where
        a batch is a memory copy (2 ms for 256 clips here, against 35 ms to fault them in or to
        ``pread`` them).
        """
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")  # sorted reads are kinder to the page cache
        gathered = np.empty((len(rows), *self.array.shape[1:]), dtype=self.array.dtype)
        gathered[order] = self.array[rows[order]]
        _count_mapped(self.array, gathered.nbytes)
        return gathered


#: A cached array up to this size stays mapped whole (``gather``): a batch is a memory copy.
MAPPED_BYTES_KEPT = 1 << 30
#: A larger one gives its pages back after every this many bytes read through it. The pages
#: mapped are about 2.5 times the bytes read (rows do not start on page boundaries, and the
#: kernel maps the pages around a fault): at TAU22's split 100 (4.65 GB) a 1 GiB step let the
#: map reach 2 GB; this one keeps it between 0.1 and 0.65 GB.
READ_BETWEEN_RELEASES = 256 << 20
#: Bytes read through each large map since its pages were last given back, by map.
_READ_SINCE_RELEASE: dict[int, int] = {}


def _count_mapped(array: np.ndarray | _RowView, nbytes: int) -> None:
    while isinstance(array, _RowView):
        array = array.base
    mapping = getattr(array, "base", None)
    if not isinstance(mapping, mmap.mmap) or array.nbytes <= MAPPED_BYTES_KEPT:
        return
    read = _READ_SINCE_RELEASE.get(id(mapping), 0) + nbytes
    if read > READ_BETWEEN_RELEASES:
        mapping.madvise(mmap.MADV_DONTNEED)  # read-only: the pages stay in the page cache
        read = 0
    _READ_SINCE_RELEASE[id(mapping)] = read


def selection_digest(files: Sequence[str]) -> str:
    """A digest of a file list: what a ``FeatureSet`` that is not a whole cached list is told
    apart by (``FeatureSet.selection``)."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:20]


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


def list_key(files: Sequence[str], root: Path, settings: FrontEnd, *, cache_dir: Path,
             stats: Mapping[str, FileStat] | None = None) -> str:
    """Key a file list by the front-end and every clip's name and content digest: edited audio is
    recomputed, and a copy of the same data elsewhere (another path, machine or mtime) is not."""
    digest = hashlib.sha256(settings.key().encode())
    for name, content in zip(files, content_digests(root, files, cache_dir=cache_dir,
                                                    stats=stats), strict=True):
        digest.update(f"\0{name}\0{content}".encode())
    return digest.hexdigest()[:24]


def build_features(
    files: Sequence[str],
    *,
    root: Path,
    cache_dir: Path,
    settings: FrontEnd | None = None,
    n_jobs: int = -1,
    progress: Callable[[int], None] | None = None,
    stats: Mapping[str, FileStat] | None = None,
    chunk_clips: int | None = None,
) -> FeatureSet:
    """Return cached features for ``files`` (paths relative to ``root``), computing them if needed.

    ``settings`` is the DCASE log-mel front-end by default. ``stats`` are the files' stats when
    the caller has them (``TAU22Dataset.file_stats``). ``chunk_clips`` overrides the commit unit
    of a new build (tests); a resumed build keeps the one it started with."""
    settings = settings or FrontEndSettings()
    files = tuple(files)
    key = list_key(files, root, settings, cache_dir=cache_dir, stats=stats)
    directory = cache_dir / "features" / key
    origin = FeatureOrigin(root=root, files=files, cache_dir=cache_dir, stats=stats)
    if directory.exists():
        try:
            return _open_verified(directory, key=key, files=files, settings=settings,
                                  origin=origin)
        except CacheError:
            pass  # looked at again, and reported, under the lock
    directory.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(directory):
        if directory.exists():
            try:  # built by another worker while this one waited, or unusable
                return _open_verified(directory, key=key, files=files, settings=settings,
                                      origin=origin)
            except CacheError as exc:
                log.warning("feature cache %s is unusable (%s); rebuilding it", directory, exc)
                set_aside(directory)
        clean_leftovers(directory.parent, keep=key)
        _compute(files, root=root, directory=directory, key=key, settings=settings,
                 workers=default_workers(n_jobs), progress=progress, chunk_clips=chunk_clips)
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
    workers: int,
    progress: Callable[[int], None] | None,
    chunk_clips: int | None,
) -> None:
    """Fill the key's partial folder a chunk at a time, then rename it into place.

    Each chunk's rows are computed in parallel straight into the array file, flushed, and only
    then recorded in ``chunks.done``: a kill at any moment loses at most the chunk in progress,
    and the next build of the same key (under the same lock) continues from the record. The
    rename is the commit: no folder exists under the final name until every row is computed.
    """
    workers = workers if len(files) > 4 * 32 else 1
    partial = partial_folder(directory)
    array_path, done_path = partial / _ARRAY, partial / _DONE
    shape = (len(files), *settings.shape)
    plan = {"key": key, "files": len(files), "settings": asdict(settings),
            "chunk": chunk_clips or CLIPS_PER_WORKER_CHUNK * workers}
    done = _resumable_chunks(partial, plan, shape)
    if done is None:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        array = np.lib.format.open_memmap(array_path, mode="w+", dtype=settings.dtype,
                                          shape=shape)
        del array  # the header is written; workers map the file themselves
        (partial / _PLAN).write_text(json.dumps(plan))
        done = set()
    else:
        plan = json.loads((partial / _PLAN).read_text())  # its chunk size, not today's
    with resumable(partial):
        chunk = int(plan["chunk"])
        chunks = range(0, len(files), chunk)
        already = sum(min(chunk, len(files) - start) for start in chunks if start // chunk in done)
        if already:
            log.info("resuming the feature build of %s: %d of %d clips were computed before",
                     directory.name, already, len(files))
            if progress is not None:
                progress(already)
        with Parallel(n_jobs=workers, return_as="generator_unordered") as parallel, \
                done_path.open("a") as record:
            for start in chunks:
                if start // chunk in done:
                    continue
                rows = files[start : start + chunk]
                share = math.ceil(len(rows) / workers)
                jobs = [delayed(_compute_rows)([root / f for f in rows[i : i + share]], start + i,
                                               array_path, settings)
                        for i in range(0, len(rows), share)]
                for count in parallel(jobs):
                    if progress is not None:
                        progress(count)
                record_chunk(record, start // chunk)  # the rows are flushed: now they count
        meta = {
            "key": key,
            "settings": asdict(settings),
            "files": list(files),
            "bytes": array_path.stat().st_size,
            "checksum": _sampled_checksum(array_path),
        }
        (partial / _META).write_text(json.dumps(meta))
        for name in (_PLAN, _DONE):
            (partial / name).unlink()
        os.rename(partial, directory)


def _resumable_chunks(partial: Path, plan: dict[str, Any],
                      shape: tuple[int, ...]) -> set[int] | None:
    """The chunks an interrupted build of the same plan committed, or None: start afresh."""
    try:
        before = json.loads((partial / _PLAN).read_text())
        if {k: v for k, v in before.items() if k != "chunk"} != {
                k: v for k, v in plan.items() if k != "chunk"}:
            return None
        array = np.load(partial / _ARRAY, mmap_mode="r")
        if array.shape != shape or array.dtype != np.dtype(plan["settings"]["dtype"]):
            return None
        return recorded_chunks(partial / _DONE)
    except (OSError, ValueError, KeyError, TypeError):
        return None
