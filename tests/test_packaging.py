"""The distribution installs one import package, ``asc_search``, and nothing generic."""

from __future__ import annotations

import importlib.metadata
import tomllib

from conftest import REPO


def test_only_asc_search_packages_are_declared() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"], "packages must be listed explicitly"
    for package in config["packages"]:
        assert package == "asc_search" or package.startswith("asc_search."), package
    assert set(config["package-dir"]) <= set(config["packages"])
    assert config["package-dir"]["asc_search"] == "search"
    assert config["package-dir"]["asc_search.plugins"] == "plugins"


def test_every_stage_subpackage_is_declared() -> None:
    # A subpackage folder missing from ``packages`` would be left out of the wheel: an installed
    # asc-search would then fail to import the stage, while an editable install still works.
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"asc_search." + ".".join(init.parent.relative_to(REPO / "search").parts)
               for init in (REPO / "search").glob("*/__init__.py")}
    assert folders and folders <= set(config["packages"]), folders - set(config["packages"])


def test_console_script_points_at_cli() -> None:
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["asc-search"] == "asc_search.cli.main:main"


def test_pinned_torch_stack() -> None:
    # torchaudio 2.11.1 fails to load its library beside torch 2.11.0: 2.11.0 exactly.
    requires = importlib.metadata.requires("asc-search") or []
    assert "torch==2.11.*" in requires and "torchaudio==2.11.0" in requires
    import torch
    import torchaudio
    import torchaudio.functional  # loads libtorchaudio: the import that failed with 2.11.1

    assert torch.__version__.startswith("2.11") and torchaudio.__version__.startswith("2.11.0")
    assert torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 8, 16000).shape == (201, 8)
