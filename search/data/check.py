"""``asc-search data check``: read a whole TAU22-layout folder and name every problem in it.

Unlike ``load_dataset``, which stops at the first fatal problem, the check collects all of them so a
user fixing a corpus sees the full list at once. It decodes every listed clip (in parallel) because
NaN, silence and truncation only show in the samples.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from joblib import Parallel, delayed

from asc_search.data.audio import read_clip
from asc_search.data.dataset import (
    SCENES,
    SPLITS,
    TAU22Dataset,
    load_dataset,
    split_list_name,
)
from asc_search.errors import DataError
from asc_search.parallel import default_workers


@dataclass
class CheckReport:
    """Counts per list × device, problems (fatal for some use) and notes (handled, worth knowing)."""

    root: Path
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(
    root: Path,
    *,
    lists_dir: Path | None = None,
    decode: bool = True,
    n_jobs: int = -1,
    progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Load ``root``, count every list by device, and collect all problems found."""
    report = CheckReport(root=root)
    try:
        dataset = load_dataset(root, lists_dir=lists_dir)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    _check_lists(dataset, report)
    if decode:
        _check_audio(dataset, report, n_jobs=n_jobs, progress=progress)
    return report


def _check_lists(dataset: TAU22Dataset, report: CheckReport) -> None:
    lists: dict[str, tuple[str, ...]] = {
        split_list_name(p): files for p, files in sorted(dataset.split_lists.items())
    }
    lists["100 % fold"] = dataset.training_fold
    if dataset.validation is not None:
        lists["validation.csv"] = dataset.validation
    lists["test.csv"] = dataset.test
    for name, files in lists.items():
        report.counts[name] = dataset.device_counts(files)
    for name, names in sorted(dataset.repeated.items()):
        report.problems.append(
            f"{name}: {len(names)} clip(s) listed more than once, e.g. {names[0]}"
            " (each is used once)")
    # A corpus may have its own scenes (they become its classes), but one that uses the DCASE
    # scenes and a few labels besides has most likely a typo, which would train as a class.
    labels = Counter(clip.scene for clip in dataset.clips.values())
    unknown = {scene: n for scene, n in labels.items() if scene not in SCENES}
    if unknown and len(unknown) < len(labels):
        for scene, count in sorted(unknown.items()):
            example = next(c.filename for c in dataset.clips.values() if c.scene == scene)
            report.problems.append(
                f"meta.csv: scene label {scene!r} ({count:,} clip(s), e.g. {example}) is not one "
                f"of the {len(SCENES)} DCASE scenes the other labels are ({', '.join(SCENES)}); "
                "a corpus of other scenes uses none of them")
    elif unknown:
        report.notes.append(f"classes from meta.csv: {', '.join(dataset.classes)} "
                            f"({len(dataset.classes)}, not the DCASE scenes)")
    for percent in SPLITS[:-1]:
        if percent not in dataset.split_lists:
            report.problems.append(f"{dataset.lists_dir / split_list_name(percent)}: not found")
    if not dataset.test:
        report.problems.append(f"{dataset.lists_dir / 'test.csv'}: not found or empty")
    test = set(dataset.test)
    present = sorted(dataset.split_lists)
    for smaller, larger in itertools.pairwise(present):
        outside = set(dataset.split_lists[smaller]) - set(dataset.split_lists[larger])
        if outside:
            report.problems.append(
                f"{split_list_name(smaller)}: {len(outside)} file(s) not in"
                f" {split_list_name(larger)} (splits must be nested), e.g. {sorted(outside)[0]}"
            )
    for percent, files in dataset.split_lists.items():
        leaked = test.intersection(files)
        if leaked:
            report.problems.append(
                f"{split_list_name(percent)}: {len(leaked)} file(s) also in test.csv,"
                f" e.g. {sorted(leaked)[0]}"
            )
    if dataset.validation is not None:
        overlap = test.intersection(dataset.validation)
        if overlap:
            report.problems.append(
                f"validation.csv: {len(overlap)} file(s) also in test.csv, e.g. {sorted(overlap)[0]}"
            )
    listed = set(dataset.training_fold) | test | set(dataset.validation or ())
    missing = sorted(name for name in listed if not dataset.audio_path(name).is_file())
    if missing:
        report.problems.append(
            f"{len(missing):,} listed file(s) not found under {dataset.root},"
            f" e.g. {dataset.audio_path(missing[0])}"
        )
    unseen_in_training = {"s4", "s5", "s6"} & set(report.counts["100 % fold"])
    if unseen_in_training:
        report.notes.append(
            f"devices {', '.join(sorted(unseen_in_training))} appear in the training fold;"
            " DCASE keeps them for the test set only"
        )


def _decode_one(path: Path) -> tuple[str | None, str | None]:
    """Return (problem, note) for one file; run in worker processes."""
    try:
        audio = read_clip(path)
    except DataError as exc:
        return str(exc), None
    notes = []
    if audio.downmixed_from > 1:
        notes.append(f"{audio.downmixed_from} channels (downmixed)")
    if audio.sample_rate != 44100:
        notes.append(f"{audio.sample_rate} Hz (resampled)")
    return None, f"{path}: {', '.join(notes)}" if notes else None


def _check_audio(
    dataset: TAU22Dataset,
    report: CheckReport,
    *,
    n_jobs: int,
    progress: Callable[[int], None] | None,
) -> None:
    listed = set(dataset.training_fold) | set(dataset.test) | set(dataset.validation or ())
    paths = [dataset.audio_path(name) for name in sorted(listed)]
    paths = [path for path in paths if path.is_file()]  # missing files are reported once, above
    runner = Parallel(n_jobs=default_workers(n_jobs) if len(paths) > 200 else 1,
                      return_as="generator", batch_size=64)
    for problem, note in runner(delayed(_decode_one)(path) for path in paths):
        if problem:
            report.problems.append(problem)
        if note:
            report.notes.append(note)
        if progress is not None:
            progress(1)
