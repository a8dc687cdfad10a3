"""The command line's imports run one way: ``main`` → command modules → ``shared``.

A command module that reaches into another's private helpers (or into ``main``) is how the command
line became an import circle once; these checks read the files' import statements (an AST walk, so
imports inside functions count too) and fail on the first step back.
"""

from __future__ import annotations

import ast
from pathlib import Path

from asc_search.plugin_manager import build_plugin_manager, describe_plugins
from conftest import REPO

CLI = REPO / "search" / "cli"
CLI_PACKAGE = "asc_search.cli"
#: The two modules that are not commands: the group's assembly and what every command shares.
ASSEMBLY, SHARED = f"{CLI_PACKAGE}.main", f"{CLI_PACKAGE}.shared"


def _module_name(path: Path) -> str:
    return f"{CLI_PACKAGE}.{path.stem}" if path.stem != "__init__" else CLI_PACKAGE


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The dotted module an ``ImportFrom`` reads, with relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    # ``from . import x`` in a package's __init__ reads the package; in a module, its parent.
    package = parts if module == CLI_PACKAGE else parts[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_problems(source: str, module: str) -> list[str]:
    """Every import in ``source`` (the text of ``module``) that breaks the command line's rules:
    a private name of another asc_search module, a built-in plugin, or a step against the one
    direction (command modules import ``shared`` and nothing else of ``asc_search.cli``)."""
    problems: list[str] = []
    imported: dict[str, str] = {}  # local name -> the asc_search module or object it stands for
    tree = ast.parse(source, module)
    for node in ast.walk(tree):
        where = f"{module}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            read = [(alias.name, alias.name, alias.asname or alias.name.split(".")[0])
                    for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source_module = _absolute(node, module)
            read = [(source_module, f"{source_module}.{alias.name}", alias.asname or alias.name)
                    for alias in node.names]
            if source_module.startswith("asc_search"):
                problems += [f"{where}: private {alias.name} from {source_module}"
                             for alias in node.names if _is_private(alias.name)]
        else:
            continue
        for source_module, target, local in read:
            if not source_module.startswith("asc_search"):
                continue
            imported[local] = target
            if any(_is_private(part) for part in source_module.split(".")):
                problems.append(f"{where}: private module {source_module}")
            plugin = next((m for m in (source_module, target)
                           if m.startswith("asc_search.plugins")), None)
            if plugin is not None:
                problems.append(f"{where}: built-in plugin {plugin} (ask the plugin manager)")
            cli_target = next((m for m in (source_module, target)
                               if m.startswith(f"{CLI_PACKAGE}.") and m != module), None)
            if cli_target is None or module == ASSEMBLY:
                continue
            if module == SHARED or not cli_target.startswith(SHARED):
                problems.append(f"{where}: {module} imports {cli_target} (command modules "
                                f"import {SHARED} alone; {SHARED} imports no command module)")
    for node in ast.walk(tree):  # module._helper, through a name bound by an import above
        if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in imported):
            problems.append(f"{module}:{node.lineno}: private {node.attr} of "
                            f"{imported[node.value.id]}")
    return list(dict.fromkeys(problems))  # one line per import statement and rule


def test_cli_modules_import_shared_helpers_one_way() -> None:
    sources = sorted(CLI.glob("*.py"))
    assert {path.stem for path in sources} >= {"__init__", "main", "shared", "training",
                                               "pruning", "search"}  # the scan saw the CLI
    problems = [problem for path in sources
                for problem in import_problems(path.read_text(), _module_name(path))]
    assert problems == []


def test_the_scan_catches_every_step_back() -> None:
    sample = (
        "from asc_search.cli.main import Context\n"           # a command module reads main
        "from asc_search.cli.training import data_options\n"  # ... or another command module
        "from asc_search.cli.shared import _hidden\n"         # a private name
        "from .shared import stdout_console\n"                # fine: relative, public
        "from asc_search import __version__\n"                # fine: a dunder is not private
        "import asc_search.cli.shared as shared\n"            # fine
        "shared._hidden()\n"                                  # a private name by attribute
        "def synth():\n"
        "    from asc_search.plugins.embedded_corpus import write_corpus\n"  # a built-in plugin
    )
    lines = [problem.split(": ")[0] for problem in
             import_problems(sample, f"{CLI_PACKAGE}.pruning")]
    assert lines == [f"{CLI_PACKAGE}.pruning:{n}" for n in (1, 2, 3, 9, 7)]
    assert import_problems("from asc_search.cli.training import train_command\n", ASSEMBLY) == []
    assert import_problems("from asc_search.cli.data import data_group\n", SHARED) != []


def test_data_synth_comes_from_the_embedded_corpus_plugin() -> None:
    """The core's ``data`` group holds ``check``; the plugin adds ``synth`` through the public
    hook, so the command line never imports a built-in plugin."""
    pm = build_plugin_manager(load_entry_points=False)
    corpus = {info.name: info for info in describe_plugins(pm)}["asc_search.plugins.embedded_corpus"]
    assert "asc_register_commands" in corpus.hooks
