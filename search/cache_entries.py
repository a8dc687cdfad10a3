"""Rules every cache entry follows, so several workers, and several machines, can share a cache.

An entry (a feature array, a teacher ensemble) is a folder named by its content key. It is built
under a lock file (``filelock``: an OS lock that dies with its process), so of several
workers that want the same entry at once one builds it and the others wait and read it; before,
two workers started together both computed the features and both fitted the teachers. It is
built in a partial folder and renamed into place, so a reader never sees half an entry.

A build that is killed or interrupted leaves its partial folder behind (one that fails is deleted
by its builder). Where the builder can resume (features, the corpus), the partial is kept and the
next request for the same key continues it; partials of other keys
are kept for a day, for a user who comes back to that list, then deleted by the next build in the
folder. Folders that cannot be resumed (an earlier version's temporary folders, a teacher fit's
partial) are deleted by the next build once nobody holds their lock.

An entry found unusable is never deleted in place: on a shared or network filesystem another
process may have its array memory-mapped, and deleting it under that process breaks its reads.
It is renamed aside (``.KEY.stale-…``) and deleted a day later.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
#: Folders a later build continues from: a partial entry, a teacher fit's resume files.
RESUMABLE_SUFFIXES = (PARTIAL_SUFFIX, ".resume")
STALE_MARK = ".stale-"
#: How long a resumable partial of another key, or an entry set aside, is kept.
KEEP_SECONDS = 24 * 3600
#: Temporary folders that cannot be resumed are deleted once untouched this long (a live writer
#: of an earlier version, which takes no lock, touches its files far more often).
ORPHAN_SECONDS = 3600


LOCKS_FOLDER = "locks"


def _lock_path(folder: Path, key: str) -> Path:
    """Locks live in the cache's ``locks/`` folder, not beside the entries: a lock file outlives
    its lock (deleting it would race), and the entries' folders hold nothing but entries."""
    return folder.parent / LOCKS_FOLDER / f"{folder.name}-{key}.lock"


def entry_lock(entry: Path) -> FileLock:
    """The lock that guards building ``entry`` (``CACHE/locks/KIND-KEY.lock``)."""
    path = _lock_path(entry.parent, entry.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


def partial_folder(entry: Path) -> Path:
    """Where ``entry`` is built before it is renamed into place (one per key: resumable)."""
    return entry.parent / f".{entry.name}{PARTIAL_SUFFIX}"


@contextmanager
def resumable(partial: Path) -> Iterator[None]:
    """Keep ``partial`` when the build inside is interrupted (Ctrl-C, a stop), for the next
    build to resume; delete it when the build fails (bad audio, a full disk): a failed build's
    rows are not what a fixed one computes, and bad input leaves nothing half-written."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def recorded_chunks(record: Path) -> set[int]:
    """The chunk indices a resumable build recorded as finished (``record_chunk``)."""
    return {int(line) for line in record.read_text().split("\n") if line.strip()}


def record_chunk(record: IO[str], index: int) -> None:
    """Record chunk ``index`` as finished, on disk before the call returns: only written, closed
    or flushed work may be recorded, so a kill loses at most the chunk in flight."""
    record.write(f"{index}\n")
    record.flush()
    os.fsync(record.fileno())


def set_aside(entry: Path) -> Path:
    """Move an unusable entry out of the way instead of deleting it under a reader."""
    aside = entry.parent / f".{entry.name}{STALE_MARK}{time.time_ns()}"
    entry.rename(aside)
    return aside


def _age_seconds(folder: Path) -> float:
    """Seconds since anything in ``folder`` (one level deep) was last written."""
    newest = folder.stat().st_mtime
    for item in folder.iterdir():
        try:
            newest = max(newest, item.stat().st_mtime)
        except OSError:
            continue
    return time.time() - newest


def _lock_is_free(key: str, folder: Path) -> bool:
    path = _lock_path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


def clean_leftovers(folder: Path, *, keep: str) -> None:
    """Delete what killed builds and set-aside entries left in ``folder`` (see the module
    docstring for what is kept and how long); ``keep`` is the key being built now."""
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        name = item.name
        if not name.startswith(".") or not item.is_dir():
            continue
        key = name[1:].split(".", 1)[0]
        try:
            age = _age_seconds(item)
        except OSError:
            continue  # removed by someone else meanwhile
        if STALE_MARK in name:
            expired = age > KEEP_SECONDS
        elif name.endswith(RESUMABLE_SUFFIXES):
            expired = key != keep and age > KEEP_SECONDS and _lock_is_free(key, folder)
        else:
            expired = age > ORPHAN_SECONDS and _lock_is_free(key, folder)
        if expired:
            size = sum(f.stat().st_size for f in item.rglob("*") if f.is_file())
            log.info("deleting %s, left by an interrupted build (%.1f MB)", item, size / 1e6)
            shutil.rmtree(item, ignore_errors=True)
