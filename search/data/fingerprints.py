"""What a clip is, for the caches: a digest of its bytes, not where or when it was copied.

Features, teacher logits and parents are keyed by the clips they were computed from. A key made of
the absolute folder and every file's modification time (what this cache used before) changes
whenever the data is copied: two machines each holding a copy of TAU22 shared nothing, not even
teachers, and a cache folder carried to another machine was rebuilt from zero. A digest of each
file's bytes is the same wherever the file lies.

Reading 23 GB of WAV costs about a minute, so each digest is computed once per machine and kept
in the cache beside the size and modification time it was computed for (``fingerprints/``, one
file per data folder): later starts stat every file once and rehash only files that changed. The
stat is the one pass the data needs: ``stat_files`` also tells ``TAU22Dataset.require_audio``
which listed files are missing, and the same stats are handed on to the feature cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from asc_search.cache_entries import entry_lock
from asc_search.errors import DataError

FINGERPRINTS_FOLDER = "fingerprints"
#: Bump when the digest changes (algorithm or what it covers).
FINGERPRINT_VERSION = 1
#: Hashing is reading: threads overlap the reads, and blake2b releases the GIL on large buffers.
HASH_THREADS = 8


class FileStat(NamedTuple):
    """The two stat fields a digest is trusted for."""

    size: int
    mtime_ns: int


def stat_files(root: Path, names: Sequence[str]) -> dict[str, FileStat]:
    """One ``stat`` per file; the first missing file (and how many more) is refused by name."""
    stats: dict[str, FileStat] = {}
    missing: list[str] = []
    for name in names:
        try:
            found = os.stat(root / name)
        except OSError:
            missing.append(name)
            continue
        if not stat.S_ISREG(found.st_mode):
            missing.append(name)
            continue
        stats[name] = FileStat(found.st_size, found.st_mtime_ns)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{root / missing[0]}: listed but not found{more}")
    return stats


def content_digests(
    root: Path,
    names: Sequence[str],
    *,
    cache_dir: Path,
    stats: Mapping[str, FileStat] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The digest of every file in ``names`` (in order), hashing only files the machine has not
    hashed at their current size and modification time.

    ``stats`` are the files' stats when the caller has them already (no second stat pass).
    Workers starting together hash once: the record is read, completed and written under a lock.
    """
    stats = stats if stats is not None and all(n in stats for n in names) else stat_files(
        root, names)
    record_path = _record_path(root, cache_dir)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(record_path):
        known = _read_record(record_path)
        stale = [name for name in dict.fromkeys(names)
                 if known.get(name, (None, None, None))[:2] != tuple(stats[name])]
        if stale:
            with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
                for name, digest in zip(stale, pool.map(lambda n: _digest(root / n), stale),
                                        strict=True):
                    known[name] = (*stats[name], digest)
                    if progress is not None:
                        progress(1)
            _write_record(record_path, root, known)
    return [known[name][2] for name in names]


def _digest(path: Path) -> str:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _record_path(root: Path, cache_dir: Path) -> Path:
    """One record per data folder (by its resolved path: the stats are this machine's)."""
    folder = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir / FINGERPRINTS_FOLDER / f"{folder}.json"


#: Records already read by this process, by path, with the stat they were read at.
_READ: dict[Path, tuple[tuple[int, int], dict[str, tuple[int, int, str]]]] = {}


def _read_record(path: Path) -> dict[str, tuple[int, int, str]]:
    """The record's entries; an unreadable or old record counts as empty (it is only a memo)."""
    try:
        found = os.stat(path)
    except OSError:
        return {}
    stamp = (found.st_size, found.st_mtime_ns)
    if path in _READ and _READ[path][0] == stamp:
        return dict(_READ[path][1])
    try:
        payload = json.loads(path.read_text())
        if payload.get("version") != FINGERPRINT_VERSION:
            return {}
        entries = {name: (int(size), int(mtime), str(digest))
                   for name, (size, mtime, digest) in payload["files"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    _READ[path] = (stamp, entries)
    return dict(entries)


def _write_record(path: Path, root: Path, entries: dict[str, tuple[int, int, str]]) -> None:
    """Written beside and renamed into place: a reader never sees half a record."""
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump({"version": FINGERPRINT_VERSION, "root": str(root.resolve()),
                       "files": {name: list(entry) for name, entry in entries.items()}}, out)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    found = os.stat(path)
    _READ[path] = ((found.st_size, found.st_mtime_ns), dict(entries))
