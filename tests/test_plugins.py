"""The plugin manager: built-ins, ad-hoc ``--plugin`` modules and installed entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from asc_search.data.source import dataset_sources, resolve_data
from asc_search.errors import PluginError
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager, describe_plugins
from conftest import one_line_error

PLUGIN_SOURCE = textwrap.dedent('''
    from pathlib import Path

    import click

    from asc_search.plugin_types import DatasetSource
    from asc_search.hookspecs import hookimpl

    PREPARED = []


    @hookimpl
    def asc_register_commands(cli):
        @cli.command("hello")
        def hello():
            """Say hello from a plugin."""
            click.echo("hello from {name}")


    @hookimpl
    def asc_dataset_sources():
        def prepare(cache_dir):
            folder = Path(cache_dir) / "{name}-data"
            folder.mkdir(parents=True, exist_ok=True)
            PREPARED.append(folder)
            return folder

        return [DatasetSource(name="{name}-data", description="test data", prepare=prepare)]
''')


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable plugin module written into a temporary folder on sys.path."""
    name = f"adhoc_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN_SOURCE.replace("{name}", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_builtins_register_through_hooks() -> None:
    pm = build_plugin_manager(load_entry_points=False)
    infos = {info.name: info for info in describe_plugins(pm)}
    corpus = infos["asc_search.plugins.embedded_corpus"]
    assert corpus.origin == "builtin"
    assert "asc_dataset_sources" in corpus.hooks
    assert {"embedded", "embedded-small", "embedded-tiny"} <= set(dataset_sources(pm))


def test_adhoc_plugin_adds_command_and_source(cli, plugin_module: str, tmp_path: Path) -> None:
    result = cli("--plugin", plugin_module, "hello")
    assert result.code == 0 and f"hello from {plugin_module}" in result.out
    listing = cli("--plugin", plugin_module, "plugins", "list")
    assert plugin_module in listing.out and "--plugin" in listing.out
    assert f"{plugin_module}-data" in listing.out

    pm = build_plugin_manager(extra_modules=[plugin_module], load_entry_points=False)
    folder = resolve_data(f"{plugin_module}-data", pm=pm, cache_dir=tmp_path / "cache")
    assert folder == tmp_path / "cache" / f"{plugin_module}-data" and folder.is_dir()


def test_entry_point_plugin_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = "ep_plugin_for_tests"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE.replace("{name}", module))
    dist = tmp_path / "ep_plugin_for_tests-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-for-tests\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(f"[asc_search]\nep = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        pm = build_plugin_manager()
        infos = {info.name: info for info in describe_plugins(pm)}
        assert infos["ep"].origin == "entry point (ep-plugin-for-tests 1.2)"
        assert f"{module}-data" in dataset_sources(pm)

        monkeypatch.setenv("ASC_SEARCH_LOAD_PLUGINS", "")
        assert "ep" not in {info.name for info in describe_plugins(build_plugin_manager())}
    finally:
        sys.modules.pop(module, None)


def test_unknown_plugin_is_one_line(cli) -> None:
    one_line_error(cli("--plugin", "no_such_module.anywhere", "plugins", "list"),
                   "unknown plugin module 'no_such_module.anywhere'")


def test_plugin_that_raises_on_import_is_one_line(cli, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exploding_plugin.py").write_text("raise RuntimeError('kaboom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    one_line_error(cli("--plugin", "exploding_plugin", "plugins", "list"),
                   "exploding_plugin", "kaboom")


def test_duplicate_source_names_are_refused() -> None:
    class Twin:
        @hookimpl
        def asc_dataset_sources(self):
            from asc_search.plugin_types import DatasetSource

            return [DatasetSource("embedded", "a clash", lambda cache: cache)]

    pm = build_plugin_manager(load_entry_points=False)
    pm.register(Twin())
    with pytest.raises(PluginError, match="two plugins register a data source called 'embedded'"):
        dataset_sources(pm)


def test_unknown_data_source_lists_known_ones(cli) -> None:
    one_line_error(cli("features", "build", "--data", "no-such-source"),
                   "no-such-source", "embedded-tiny")


def test_plugin_with_an_unknown_hook_is_one_line(cli, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "future_plugin.py").write_text(
        "from asc_search.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef asc_hook_from_the_future():\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        one_line_error(cli("--plugin", "future_plugin", "plugins", "list"),
                       "future_plugin", "asc_hook_from_the_future")
    finally:
        sys.modules.pop("future_plugin", None)


PRUNING_PLUGIN = '''
from asc_search.hookspecs import hookimpl
from asc_search.plugin_types import ImportanceMetric, PruningSchedule


@hookimpl
def asc_importance_metrics():
    return [ImportanceMetric("mine_metric", "a metric of this test", make=lambda: None)]


@hookimpl
def asc_pruning_schedules():
    return [PruningSchedule("mine_schedule", "a schedule of this test",
                            ratios=lambda final, steps: [0.0, final])]
'''


def test_plugins_list_shows_metrics_and_schedules_with_the_plugin_that_gives_them(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ``prune --help`` knows the importance metrics and schedules; ``plugins list`` must too.
    (tmp_path / "mine_pruning.py").write_text(PRUNING_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    listing = cli("--plugin", "mine_pruning", "plugins", "list").out
    rows = {line.split("│")[1].strip(): line for line in listing.splitlines() if line.count("│") >= 3}
    for name in ("l1", "taylor", "fpgm", "agp", "one_shot"):
        assert "asc_search.plugins.pruning: builtin" in rows[name], name
    for name in ("mine_metric", "mine_schedule"):
        assert "mine_pruning: --plugin" in rows[name], name
    assert "importance metric" in listing and "pruning schedule" in listing
    assert "asc_search.plugins.teachers: builtin" in rows["wide_cp_mobile"]
    assert "asc_search.plugins.embedded_corpus: builtin" in rows["embedded"]
    # The MAC counters the pre-check asks (issue 32) are named too.
    assert "MAC counter" in listing
    assert "asc_search.plugins.counters: builtin" in rows["fvcore"]


def test_the_plugin_guide_describes_what_is_built_in_now() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    assert "later release" not in text  # they are built in: the guide said otherwise
    pm = build_plugin_manager(load_entry_points=False)
    from asc_search.architecture import architectures

    for name in architectures(pm):
        if name != "patchout_transformer":  # a teacher's network, named with the teachers
            assert f"`{name}`" in text, name
    assert "PaSST" in text


def test_builtins_register_by_their_entry_point_group_and_every_one_is_listed() -> None:
    """The engine names no built-in plugin: the installed package's ``asc_search.builtin``
    group lists them, and a module added to plugins/ without an entry there would never load."""
    import importlib.metadata

    from asc_search.plugin_manager import BUILTIN_GROUP, DEFAULT_PLUGINS

    listed = {entry.value for entry in importlib.metadata.entry_points(group=BUILTIN_GROUP)}
    folder = Path(__file__).resolve().parents[1] / "plugins"
    on_disk = {f"asc_search.plugins.{path.stem}" for path in folder.glob("*.py")
               if path.stem != "__init__"}
    assert listed == set(DEFAULT_PLUGINS) == on_disk


def test_plugin_option_naming_an_installed_plugin_is_not_an_error(cli) -> None:
    """Before, ``--plugin`` on a module its entry point had registered already raised pluggy's
    ValueError (a traceback). The example pruner is installed by CI (``.ci/run``)."""
    result = cli("--plugin", "asc_search_example_pruner", "plugins", "list")
    assert result.code == 0, result.err
    assert "example_pruner" in result.out
