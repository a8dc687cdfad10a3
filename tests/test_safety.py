"""Safety: nothing is unpickled from disk, plugins come only from where the user put them, and a
run writes only to its studies and cache folders."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asc_search.plugin_manager import DEFAULT_PLUGINS, build_plugin_manager, describe_plugins
from conftest import ASC_SEARCH, REPO

SOURCES = sorted([*(REPO / "search").rglob("*.py"), *(REPO / "plugins").rglob("*.py"),
                  *(REPO / "benchmarks").rglob("*.py")])
#: Calls that unpickle whatever the file holds.
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "joblib.load", "dill.load",
              "cloudpickle.load", "torch.serialization.load", "np.lib.format.read_array"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _keyword(call: ast.Call, name: str) -> object:
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else None


def _unsafe_calls(source: str, where: str) -> list[str]:
    unsafe = []
    for node in ast.walk(ast.parse(source, where)):
        if not isinstance(node, ast.Call):
            continue
        name, line = _dotted(node.func), f"{where}:{node.lineno}"
        if name == "torch.load" and _keyword(node, "weights_only") is not True:
            unsafe.append(f"{line}: torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is True:
            unsafe.append(f"{line}: np.load with allow_pickle=True")
        elif name in UNPICKLERS:
            unsafe.append(f"{line}: {name}")
    return unsafe


def test_nothing_is_unpickled_from_disk() -> None:
    unsafe = [found for path in SOURCES
              for found in _unsafe_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert unsafe == []
    assert len(SOURCES) > 30  # the scan saw the code


def test_the_scan_catches_every_unsafe_load() -> None:
    sample = ("torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
              "pickle.loads(b)\nnp.load(p, allow_pickle=True)\nnp.load(p)\njoblib.load(p)\n")
    assert [line.split(": ")[0] for line in _unsafe_calls(sample, "x")] == [
        "x:1", "x:2", "x:4", "x:5", "x:7"]


def test_plugins_come_only_from_entry_points_or_the_plugin_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A plugin-looking module on sys.path, named the way auto-discovery would look for, is inert.
    (tmp_path / "asc_search_plugin_sneaky.py").write_text(
        "from asc_search.hookspecs import hookimpl\nLOADED = True\n\n"
        "@hookimpl\ndef asc_architectures():\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ASC_SEARCH_LOAD_PLUGINS", "")  # no entry points either
    names = {info.name for info in describe_plugins(build_plugin_manager())}
    assert names == set(DEFAULT_PLUGINS)
    assert "asc_search_plugin_sneaky" not in sys.modules
    chosen = build_plugin_manager(extra_modules=["asc_search_plugin_sneaky"])
    assert "asc_search_plugin_sneaky" in {info.name for info in describe_plugins(chosen)}
    sys.modules.pop("asc_search_plugin_sneaky", None)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.slow
def test_a_run_writes_only_to_its_studies_and_cache_folders(tiny_corpus: Path,
                                                            tmp_path: Path) -> None:
    home, temp, work = tmp_path / "home", tmp_path / "tmp", tmp_path / "work"
    for folder in (home, temp, work):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ASC_SEARCH_", "XDG_", "MPL", "TORCHINDUCTOR", "TRITON"))}
    env.update(HOME=str(home), TMPDIR=str(temp))  # defaults: ./studies, ~/.cache/asc-search
    corpus_before = _files(tiny_corpus)
    for args in (["run", "--data", str(tiny_corpus), "--split", "25", "--proxy-epochs", "1",
                  "--teacher-epochs", "1", "--promote-epochs", "1", "--trials", "3",
                  "--n-jobs", "2"],
                 ["studies", "show", "asc-search"], ["report", "asc-search"]):
        done = subprocess.run([ASC_SEARCH, "-q", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
    assert {p.split(os.sep)[0] for p in _files(work)} == {"studies"}
    assert {os.sep.join(p.split(os.sep)[:2]) for p in _files(home)} == {".cache",
                                                                      ".cache/asc-search"}
    assert _files(temp) == set()
    assert _files(tiny_corpus) == corpus_before  # the data is only read
