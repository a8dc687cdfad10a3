"""Where studies live: an Optuna storage URL, resolved, opened and never printed with its password.

Order: ``--storage``, then ``$ASC_SEARCH_STORAGE``, then one SQLite file under the studies folder.
SQLite is opened in write-ahead-log mode with a long busy timeout, so several local processes
(``--n-jobs``) write to it at once without "database is locked" errors. PostgreSQL URLs are passed
to Optuna unchanged. The studies are plain Optuna studies: ``optuna studies --storage URL`` lists
them and optuna-dashboard reads them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial

from asc_search.errors import AscSearchError
from asc_search.paths import studies_dir
from asc_search.study.heartbeat import GRACE_HEARTBEATS

STORAGE_ENV = "ASC_SEARCH_STORAGE"
DEFAULT_DB = "asc-search.db"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class StorageError(AscSearchError):
    """A storage URL that cannot be opened, or a study name that cannot be used."""


def resolve_storage(url: str | None, *, studies: Path | None = None) -> str:
    """The storage URL to use (see the module docstring for the order)."""
    if url:
        return url
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    folder = studies or studies_dir()
    return f"sqlite:///{(folder / DEFAULT_DB).resolve()}"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for every line a user or log may see."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: mask anything between ':' and '@' after '//'
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str, *, heartbeat: int | None = None,
                 on_lost_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 ) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage at ``url``; one clear error if it cannot be reached.

    ``heartbeat``: seconds between a running trial's heartbeats, for workers. A trial silent for
    ``GRACE_HEARTBEATS`` heartbeats (its worker was killed, or its machine went away) is marked
    FAIL by the next worker to start a trial, which then calls ``on_lost_trial`` (re-queue it).
    """
    engine_kwargs: dict = {}
    if url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        path = Path(make_url(url).database or "")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path, timeout=60) as connection:  # WAL persists in the file
                connection.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open study storage {mask_url(url)}: {exc}") from None
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        with warnings.catch_warnings(), _creation_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats
            beats: dict[str, Any] = {} if heartbeat is None else {
                "heartbeat_interval": heartbeat, "grace_period": GRACE_HEARTBEATS * heartbeat,
                "heartbeat_stale_trial_callback": on_lost_trial}
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beats)
    except Exception as exc:  # SQLAlchemy / driver errors carry the URL; never print it raw
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"cannot open study storage {mask_url(url)}: "
                           f"{reason.replace(url, mask_url(url))}") from None
    if url.startswith("sqlite:///"):
        _serialise_sqlite_transactions(storage.engine)
    return storage


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` while Optuna opens a SQLite file.

    Opening creates the tables when they are missing, outside any transaction we control: two
    processes opening a new file at once (``run`` and a worker, or two workers) would both try to
    create them, and one fails with "table ... already exists".
    """
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite:///") else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    try:
        handle = Path(database + ".lock").open("a")
    except OSError:  # a read-only folder: nothing can create tables there anyway
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _serialise_sqlite_transactions(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins.

    Python's sqlite3 driver starts a transaction only at the first write, so Optuna's "read the
    queued trial, then mark it running" ran as two: two processes could both read it as queued
    and both train it (seen with two local workers and the seed trials). SQLAlchemy's documented
    remedy: the driver begins nothing, and SQLAlchemy emits ``BEGIN IMMEDIATE`` itself. Workers
    then queue for the lock (60 s busy timeout) instead of racing. Reads queue too, which is fine
    for the few workers one machine runs; many workers belong on PostgreSQL.
    """
    from sqlalchemy import event

    def on_connect(connection: sqlite3.Connection, _record: Any) -> None:
        connection.isolation_level = None

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # connections made before the listeners go; new ones get them


def check_study_name(name: str) -> str:
    """A study name is also an artifact folder name: letters, digits, '.', '_', '-' only."""
    if not _NAME.match(name) or ".." in name:
        raise StorageError(f"study name {name!r} is not allowed: use letters, digits, '.', '_' "
                           "and '-' (no '/', no '..', at most 100 characters)")
    return name


def artifact_store(studies: Path | None = None) -> FileSystemArtifactStore:
    """Checkpoints and cards of trials, under the studies folder (``studies/artifacts``).

    Workers on other machines need this folder shared (or synced) to export their trials.
    """
    folder = (studies or studies_dir()) / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def scratch(studies: Path | None = None) -> tempfile.TemporaryDirectory:
    """A temporary folder inside the studies folder: files on their way into the artifact store
    never touch ``$TMPDIR``, so nothing is written outside the studies and cache folders."""
    folder = (studies or studies_dir()) / ".tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=folder)


def load_study(name: str, url: str) -> optuna.Study:
    """An existing study, or one line naming the known ones."""
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=check_study_name(name), storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(f"no study {name!r} in {mask_url(url)} "
                           f"(studies: {', '.join(known) or 'none'})") from None
