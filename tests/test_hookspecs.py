"""Keeps the plugin API honest (datasette's two tests): every hook is documented and tested."""

from __future__ import annotations

import inspect

import pytest

from asc_search import hookspecs
from conftest import REPO

HOOKS = hookspecs.documented_hooks()
DOCS = (REPO / "docs" / "plugins.md").read_text() + (REPO / "README.md").read_text()
TEST_SOURCES = {
    path.name: path.read_text()
    for path in (REPO / "tests").glob("test_*.py")
    if path.name != "test_hookspecs.py"
}


def test_there_are_hooks() -> None:
    assert "asc_dataset_sources" in HOOKS and "asc_register_commands" in HOOKS


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_has_docstring(name: str) -> None:
    assert (inspect.getdoc(HOOKS[name]) or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    params = ", ".join(inspect.signature(HOOKS[name]).parameters)
    assert f"{name}({params})" in DOCS, f"docs/plugins.md lacks `{name}({params})`"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hook_has_a_test(name: str) -> None:
    users = [file for file, text in TEST_SOURCES.items() if f"def {name}(" in text]
    assert users, f"no test implements {name}; add one that registers it and checks its effect"
