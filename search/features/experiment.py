"""One experiment's data, assembled once: a split's labelled train, validation and test features.

``train``, ``teachers fit`` and (later) every search trial need the same three cached feature sets
for a split; this module is the one place that resolves the data folder, builds or finds the
features and attaches labels, so no command computes a spectrogram twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pluggy

from asc_search.data.dataset import SplitFiles, TAU22Dataset, load_dataset
from asc_search.data.source import resolve_data
from asc_search.features.logmel import build_features
from asc_search.progress import progress_bar
from asc_search.training.train import LabelledSet, labelled_set


@dataclass(frozen=True)
class SplitData:
    root: Path
    dataset: TAU22Dataset
    files: SplitFiles
    train: LabelledSet
    validation: LabelledSet
    test: LabelledSet | None  # None when asked for without test (search trials never look at it)


def load_split_data(data: str | None, split: int, *, pm: pluggy.PluginManager, cache_dir: Path,
                    validation_seed: int = 0, progress: bool = True,
                    with_test: bool = True) -> SplitData:
    """Resolve ``data``, read the split, and return its cached, labelled feature sets."""
    root = resolve_data(data, pm=pm, cache_dir=cache_dir)
    dataset = load_dataset(root)
    files = dataset.split(split, seed=validation_seed)
    sets = {}
    lists = {"train": files.train, "validation": files.validation}
    if with_test:
        lists["test"] = files.test
    for name, listed in lists.items():
        with progress_bar(f"log-mel {name}", total=len(listed), enabled=progress) as advance:
            features = build_features(listed, root=root, cache_dir=cache_dir, progress=advance,
                                      stats=dataset.file_stats)
        sets[name] = labelled_set(dataset, features)
    return SplitData(root=root, dataset=dataset, files=files, train=sets["train"],
                     validation=sets["validation"], test=sets.get("test"))
