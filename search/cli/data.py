"""``asc-search data check`` and ``asc-search features build``: the clips a study reads, and
their log-mel cache.

``data check`` names every problem of a TAU22-layout folder before a study spends hours on it;
``features build`` fills the cache that every later command reads. ``data synth`` belongs to the
embedded-corpus plugin, which adds it to this ``data`` group through ``asc_register_commands``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table

from asc_search.cli.shared import Context, pass_context, stdout_console
from asc_search.data.dataset import DEVICES, load_dataset
from asc_search.errors import AscSearchError
from asc_search.progress import progress_bar

# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@click.group("data")
def data_group() -> None:
    """Write the embedded corpus or check a TAU22-layout folder."""


@data_group.command("check")
@click.argument("folder", type=click.Path(path_type=Path), required=False)
@click.option("--lists", type=click.Path(path_type=Path), default=None,
              help="Folder holding split lists [default: FOLDER or FOLDER/split_setup].")
@click.option("--quick", is_flag=True, help="Check lists only; do not decode the audio.")
@click.option("--jobs", type=int, default=-1,
              help="Worker processes for decoding (-1: one per usable core, at most 8).")
@pass_context
def data_check(obj: Context, folder: Path | None, lists: Path | None, quick: bool, jobs: int) -> None:
    """Count clips per list × device and name every problem (default: the embedded corpus)."""
    from asc_search.data.check import check_dataset
    from asc_search.data.source import resolve_data

    root = folder if folder is not None else resolve_data(None, pm=obj.pm, cache_dir=obj.cache)
    if not root.is_dir():
        raise AscSearchError(f"{root}: data folder not found")
    total = 0 if quick else _count_present(root, lists)
    with progress_bar("decoding clips", total=total, enabled=not (quick or obj.quiet)) as advance:
        report = check_dataset(root, lists_dir=lists, decode=not quick, n_jobs=jobs,
                               progress=advance)
    if report.counts:
        table = Table("list", *DEVICES, "total", title=str(root))
        for name, counts in report.counts.items():
            table.add_row(name, *(f"{counts.get(d, 0):,}" for d in DEVICES),
                          f"{sum(counts.values()):,}")
        stdout_console().print(table)
    for note in report.notes[:20]:
        stdout_console().print(f"note: {note}", highlight=False)
    if len(report.notes) > 20:
        stdout_console().print(f"note: … and {len(report.notes) - 20} more", highlight=False)
    for problem in report.problems[:50]:
        stdout_console().print(f"problem: {problem}", highlight=False, soft_wrap=True)
    if len(report.problems) > 50:
        stdout_console().print(f"problem: … and {len(report.problems) - 50} more", highlight=False)
    if report.problems:
        raise AscSearchError(f"{root}: {len(report.problems)} problem(s) found (listed above)")
    stdout_console().print("no problems found")


def _count_present(root: Path, lists: Path | None) -> int:
    """How many clips the check will decode, for the progress bar's total."""
    try:
        dataset = load_dataset(root, lists_dir=lists)
    except AscSearchError:
        return 0
    listed = set(dataset.training_fold) | set(dataset.test) | set(dataset.validation or ())
    return sum(dataset.audio_path(name).is_file() for name in listed)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


@click.group("features")
def features_group() -> None:
    """Build or inspect the log-mel feature cache."""


@features_group.command("build")
@click.option("--data", default=None, help="Data folder or source name [default: embedded].")
@click.option("--split", type=click.Choice(["5", "10", "25", "50", "100"]), default="5")
@click.option("--jobs", type=int, default=-1,
              help="Worker processes (-1: one per usable core, at most 8).")
@pass_context
def features_build(obj: Context, data: str | None, split: str, jobs: int) -> None:
    """Compute (or find cached) log-mels for a split's train, validation and test lists."""
    from asc_search.data.source import resolve_data
    from asc_search.features.logmel import build_features

    root = resolve_data(data, pm=obj.pm, cache_dir=obj.cache)
    dataset = load_dataset(root)
    files = dataset.split(int(split))
    table = Table("list", "clips", "seconds", "cache", "folder")
    for name, listed in (("train", files.train), ("validation", files.validation),
                         ("test", files.test)):
        started = time.perf_counter()
        with progress_bar(f"log-mel {name}", total=len(listed), enabled=not obj.quiet) as advance:
            features = build_features(listed, root=root, cache_dir=obj.cache, n_jobs=jobs,
                                      progress=advance, stats=dataset.file_stats)
        table.add_row(name, f"{len(listed):,}", f"{time.perf_counter() - started:.2f}",
                      "hit" if features.cache_hit else "built", str(features.directory))
    stdout_console().print(table)
