"""The engine is a house whose imports run one way: data up to the command line, plugins on top.

Read from the source (every import statement, at module level, inside functions and under
``TYPE_CHECKING`` alike: a type a hook passes is as much a dependency as a call), so a new
circle fails here before it becomes a knot that a plugin author has to untie.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where each package's source lives (the package-dir mapping of pyproject.toml).
PACKAGES = {"asc_search": ROOT / "search", "asc_search.plugins": ROOT / "plugins",
            "asc_search.spaces": ROOT / "spaces"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _imported(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every engine module ``path`` imports (``from a.b import c`` counts as ``a.b.c`` when that
    is a module, else ``a.b``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                yield name if name in modules else node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imported(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (networkx, which torch
    installs), each sorted, in a stable order."""
    import networkx

    found = networkx.strongly_connected_components(networkx.DiGraph(
        [(module, other) for module, imports in graph.items() for other in imports]))
    return sorted(sorted(component) for component in found if len(component) > 1)


def test_no_two_modules_import_each_other_through_any_path() -> None:
    """Before, hooks' types lived in the stages (architecture ↔ plugin_manager ↔ hookspecs ↔
    pruning ↔ space ↔ teachers ↔ mobile_nets), and the command modules imported each other's
    private helpers."""
    circles = _circles(_graph())
    assert not circles, "import circles: " + "; ".join(" ↔ ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_engine_module_imports_a_built_in_plugin_or_the_command_line() -> None:
    """The built-in plugins register like a third party's (entry points), so the engine reaches
    them only through the plugin manager; stages below never import the command line."""
    graph = _graph()
    for module, imports in graph.items():
        if module.startswith(("asc_search.plugins", "asc_search.cli")):
            continue
        bad = sorted(m for m in imports if m.startswith(("asc_search.plugins", "asc_search.cli")))
        assert not bad, f"{module} imports {', '.join(bad)}"
