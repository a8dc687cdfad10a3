"""The commands as a user types them, in a fresh process (slow; still run in CI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("asc-search")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=300)


def test_synth_check_and_cached_features(tmp_path: Path) -> None:
    env = {**os.environ, "ASC_SEARCH_CACHE": str(tmp_path / "cache")}
    data = tmp_path / "corpus"
    assert _run("data", "synth", "--size", "small", "--out", str(data), env=env).returncode == 0
    check = _run("data", "check", str(data), env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no problems found" in check.stdout
    assert re.search(r"split5\.csv\s*│\s*30\s", check.stdout), check.stdout

    first = _run("features", "build", "--data", str(data), "--split", "25", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("built") == 3
    second = _run("features", "build", "--data", str(data), "--split", "25", env=env)
    assert second.returncode == 0 and second.stdout.count("hit") == 3


def test_default_data_is_the_embedded_corpus_in_the_cache(tmp_path: Path) -> None:
    env = {**os.environ, "ASC_SEARCH_CACHE": str(tmp_path / "cache")}
    result = _run("-q", "features", "build", "--data", "embedded-tiny", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache" / "corpus").is_dir() and (tmp_path / "cache" / "features").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing written elsewhere


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "ASC_SEARCH_CACHE": str(tmp_path / "cache")}
    result = _run("data", "check", str(tmp_path / "missing"), env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: data folder not found"]
