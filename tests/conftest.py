"""Shared fixtures: every test writes only under its own temporary cache and studies folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asc_search.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SHARED_LISTS = REPO.parent / "shared" / "dcase2024"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache and studies folders at a temporary folder for every test."""
    monkeypatch.setenv("ASC_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ASC_SEARCH_STUDIES", str(tmp_path / "studies"))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus at size ``tiny`` (460 clips), written once per test session."""
    from asc_search.plugins.embedded_corpus import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "tiny", seed=0, size="tiny", n_jobs=1)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``asc-search ARGS`` in-process and return exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


#: The installed console script, for tests that need a real process (signals, kills, HOME).
ASC_SEARCH = str(Path(sys.executable).with_name("asc-search"))


def start(*args: str, env: dict[str, str] | None = None,
          **popen: object) -> subprocess.Popen[str]:
    """Start ``asc-search ARGS`` as its own process, output piped and unbuffered.

    Ctrl-C is set back to its default in the child first: a shell without job control starts a
    backgrounded command (``pytest &`` in a script) with SIGINT ignored, every child inherits
    that, and Python then installs no KeyboardInterrupt handler, so the Ctrl-C tests would
    see a run that cannot be interrupted (it finishes and exits 0)."""
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([ASC_SEARCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_default_ctrl_c, **popen)


def _default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_wav(path: Path, samples: np.ndarray, *, rate: int = 44_100,
              subtype: str = "PCM_24") -> Path:
    """Write a WAV the way the real corpus stores it (24-bit PCM, 44.1 kHz) unless told otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def noise(seconds: float = 1.0, *, rate: int = 44_100, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (round(seconds * rate), channels) if channels > 1 else (round(seconds * rate),)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def one_line_error(result: CliResult, *needles: str) -> None:
    """Assert the TAU-style bad-input contract: exit 2, one line on stderr naming the culprit."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])




@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on loopback for this test session (installed by ``.ci/run``).

    The URL carries a password, so tests can check that it is never printed. Run as root (CI
    containers), the server runs as the ``postgres`` user, since PostgreSQL refuses root.
    """
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    folder = binaries[-1] if binaries else os.path.dirname(shutil.which("initdb") or "")
    if not folder or not os.path.exists(os.path.join(folder, "initdb")):
        pytest.fail("PostgreSQL is not installed: .ci/run installs it (apt-get install postgresql)")
    # Not under pytest's temporary folder: as root that is mode 0700, closed to the postgres user.
    base = Path(tempfile.mkdtemp(prefix="asc-search-pg-"))
    data, password = base / "data", "s3cret-pw"
    (base / "pw").write_text(password + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(base / "pw", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True)

    run(os.path.join(folder, "initdb"), "-D", str(data), "-U", "asc", "--pwfile", str(base / "pw"),
        "-A", "scram-sha-256", "-E", "UTF8")
    run(os.path.join(folder, "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://asc:{password}@127.0.0.1:{port}/postgres"
    finally:
        run(os.path.join(folder, "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(base, ignore_errors=True)
