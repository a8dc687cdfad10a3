"""Reads a folder in the TAU Urban Acoustic Scenes 2022 Mobile layout and yields file lists per split.

Layout (DCASE 2024 Task 1): ``meta.csv`` (tab-separated: filename, scene_label, identifier,
source_label), ``audio/<scene>-<city>-<location>-<segment>-<device>.wav``, split lists
``split5/10/25/50.csv`` and ``test.csv`` (filename, scene_label) in the folder itself, in its
``split_setup/`` subfolder (where the baseline downloads them) or in an explicit folder. 100 % is the
whole training fold: every file of meta.csv not in the test or validation list.

Validation is a list called ``validation.csv`` when the folder has one (the embedded corpus does), or
a seeded hold-out of whole recording locations of the split otherwise. Real clips come ten to a
10-s recording, and the test fold's locations never occur in training; a hold-out of single 1-s
files would share its recordings and locations with the training clips and so reward memorising
them. Held-out files never reach training, and no list shares a file with another (checked on
every split, not only by ``data check``), so a search that selects on validation never looks at
test.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asc_search.data.fingerprints import FileStat, stat_files
from asc_search.errors import DataError
from asc_search.plugin_types import DatasetSource  # noqa: F401  (plugins import it from here)

SPLITS: tuple[int, ...] = (5, 10, 25, 50, 100)
SCENES: tuple[str, ...] = (
    "airport", "bus", "metro", "metro_station", "park", "public_square",
    "shopping_mall", "street_pedestrian", "street_traffic", "tram",
)
SEEN_DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3")
UNSEEN_DEVICES: tuple[str, ...] = ("s4", "s5", "s6")
DEVICES: tuple[str, ...] = SEEN_DEVICES + UNSEEN_DEVICES
#: Validation devices made by colouring device-a clips with responses no training draws from
#: (``sim1``, ``sim2``, …; ``training.device_responses.with_simulated_devices``): unseen ones.
SIMULATED_DEVICE_PREFIX = "sim"
META_COLUMNS: tuple[str, ...] = ("filename", "scene_label")
LIST_COLUMNS: tuple[str, ...] = ("filename", "scene_label")
VALIDATION_LIST = "validation.csv"
HOLD_OUT_RESTARTS = 8
TEST_LIST = "test.csv"


def scene_classes(labels: Iterable[str]) -> tuple[str, ...]:
    """The class list of a corpus, in output order: the ten DCASE scenes in their order when
    every label is one of them (so DCASE models, caches and exports keep their layout), else
    the corpus's own labels sorted."""
    found = set(labels)
    return SCENES if found <= set(SCENES) else tuple(sorted(found))


def split_list_name(percent: int) -> str:
    """File name of a split list as the DCASE baseline names it (``split5.csv``)."""
    return f"split{percent}.csv"


@dataclass(frozen=True)
class Clip:
    """One row of meta.csv with the fields that the file name encodes parsed out."""

    filename: str
    scene: str
    location: str  # the "identifier" column: city-location
    device: str

    @property
    def city(self) -> str:
        return self.location.split("-", 1)[0]

    @property
    def recording(self) -> str:
        return recording_of(self.filename)


def recording_of(filename: str) -> str:
    """The 10-s recording a clip was cut from: its name without the 1-s index and device
    (``airport-lisbon-1000-40000``); parallel recordings by several devices share it."""
    parts = Path(filename).stem.split("-")
    return "-".join(parts[:-2] if len(parts) >= 6 else parts[:-1])


@dataclass(frozen=True)
class SplitFiles:
    """The three disjoint file lists one experiment uses."""

    percent: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    #: "validation.csv", or how it was held out: "held out of split5: whole locations, 770 clips
    #: (10 %, seed 0)"
    validation_source: str


def parse_filename(filename: str) -> tuple[str, str, str, str]:
    """Split ``audio/<scene>-<city>-<location>-<segment…>-<device>.wav`` into its fields.

    Returns (scene, city, location, device). Scene labels use underscores, never hyphens, so the
    first and last hyphen-separated parts are unambiguous.
    """
    stem = Path(filename).stem
    parts = stem.split("-")
    if len(parts) < 5:
        raise DataError(
            f"{filename}: name does not follow <scene>-<city>-<location>-<segment>-<device>.wav"
        )
    return parts[0], parts[1], parts[2], parts[-1]


def read_table(path: Path, *, required: Sequence[str]) -> list[dict[str, str]]:
    """Read a tab-separated list with a header, refusing it when a required column is missing.

    A list saved by a spreadsheet starts with a UTF-8 byte-order mark and ends its lines with
    CRLF: ``utf-8-sig`` drops the mark (which would otherwise glue itself to the first column's
    name) and the csv reader takes either line end."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns = reader.fieldnames or []
        missing = [name for name in required if name not in columns]
        if missing:
            raise DataError(
                f"{path}: missing column {', '.join(missing)} (has: {', '.join(columns) or 'none'};"
                " lists are tab-separated)"
            )
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if not row.get("filename") or not row.get(required[-1]):
            raise DataError(f"{path}: line {number} has an empty {required[-1]} or filename")
    return rows


def write_table(path: Path, rows: Iterable[Sequence[str]], *, header: Sequence[str]) -> None:
    """Write a tab-separated list the way the DCASE lists are written."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


@dataclass
class TAU22Dataset:
    """A TAU22-layout folder: every clip of meta.csv plus the lists that partition them."""

    root: Path
    lists_dir: Path
    clips: dict[str, Clip]
    split_lists: dict[int, tuple[str, ...]] = field(default_factory=dict)
    test: tuple[str, ...] = ()
    validation: tuple[str, ...] | None = None
    #: Rows a list repeats (list file name -> the repeated clip names, once each): loading keeps
    #: each clip once; ``data check`` names them.
    repeated: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Size and modification time of every audio file ``require_audio`` has seen: the one stat
    #: pass a start makes, handed on to the feature cache (``build_features(stats=)``).
    file_stats: dict[str, FileStat] = field(default_factory=dict, repr=False)

    def audio_path(self, filename: str) -> Path:
        return self.root / filename

    @property
    def classes(self) -> tuple[str, ...]:
        """The scene labels of meta.csv in output order (``scene_classes``)."""
        return scene_classes(clip.scene for clip in self.clips.values())

    @property
    def training_fold(self) -> tuple[str, ...]:
        """The 100 % split: ``split100.csv`` where the folder has it (the baseline's release
        ships one: 139,620 clips), else derived from meta.csv.

        TAU22's meta.csv holds more than the two folds (230,350 clips against 139,620 + 29,680):
        clips of the simulated devices s4–s6 outside the test fold, and clips from test
        locations. Neither may enter training: s4–s6 are the "unseen" devices the test measures,
        and a test location heard in training is a leak. The derived fold therefore keeps only
        clips of the training devices (a, b, c, s1–s3) at locations absent from the test list;
        validation files are excluded too.
        """
        if 100 in self.split_lists:
            return self.split_lists[100]
        excluded = set(self.test) | set(self.validation or ())
        held_locations = {self.clips[name].location for name in self.test}
        return tuple(name for name, clip in self.clips.items()
                     if name not in excluded and clip.device in SEEN_DEVICES
                     and clip.location not in held_locations)

    def split(self, percent: int, *, validation_fraction: float = 0.1, seed: int = 0) -> SplitFiles:
        """The train / validation / test lists for a split (5, 10, 25, 50 or 100 %)."""
        if percent not in SPLITS:
            raise DataError(f"split {percent}: unknown, choose one of {', '.join(map(str, SPLITS))}")
        if percent == 100:
            listed = self.training_fold
        elif percent in self.split_lists:
            listed = self.split_lists[percent]
        else:
            raise DataError(
                f"{self.lists_dir / split_list_name(percent)}: split list not found"
                f" (looked in {self.root} and {self.root / 'split_setup'})"
            )
        if not self.test:
            raise DataError(f"{self.lists_dir / TEST_LIST}: test list not found")
        self.require_audio((*listed, *(self.validation or ())))
        if self.validation is not None:
            validation = self.validation
            held = set(validation)
            train = tuple(name for name in listed if name not in held)
            source = VALIDATION_LIST
        else:
            train, validation, unit = hold_out_locations(
                listed, self.clips, fraction=validation_fraction, seed=seed)
            source = (f"held out of split{percent}: whole {unit}, {len(validation):,} clips "
                      f"({validation_fraction:.0%}, seed {seed})")
        check_disjoint({split_list_name(percent): train, "validation": validation,
                        TEST_LIST: self.test}, self.clips)
        return SplitFiles(percent=percent, train=tuple(train), validation=tuple(validation),
                          test=self.test, validation_source=source)

    def require_audio(self, filenames: Iterable[str]) -> None:
        """Fail with the first missing file's name (and how many more) before any work starts;
        each file is stat'ed once per dataset (``file_stats``)."""
        unseen = [name for name in dict.fromkeys(filenames) if name not in self.file_stats]
        self.file_stats.update(stat_files(self.root, unseen))

    def device_counts(self, filenames: Iterable[str]) -> Counter[str]:
        return Counter(self.clips[name].device for name in filenames)


def check_disjoint(lists: dict[str, Sequence[str]], clips: dict[str, Clip]) -> None:
    """Refuse lists that share a file, or a recording, pairwise (train, validation, test).

    A shared recording is a leak as real as a shared file: the ten 1-s clips of a recording are
    near copies of each other. (Shared locations are allowed: a user's own validation list may
    hold other recordings of a training location. The embedded corpus shares none; the hold-out
    shares none except in a scene recorded at one location only, which it splits by recording.)
    """
    names = list(lists)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = set(lists[first]) & set(lists[second])
            if shared:
                raise DataError(f"{first} and {second} share {len(shared)} file(s), e.g. "
                                f"{sorted(shared)[0]}")
            recordings = ({clips[n].recording for n in lists[first]}
                          & {clips[n].recording for n in lists[second]})
            if recordings:
                raise DataError(f"{first} and {second} share {len(recordings)} recording(s), "
                                f"e.g. {sorted(recordings)[0]}: their clips are near copies")


def hold_out_locations(filenames: Sequence[str], clips: dict[str, Clip], *, fraction: float,
                       seed: int) -> tuple[list[str], list[str], str]:
    """Hold out whole recording locations, about ``fraction`` of every scene and every device.

    Returns (kept, held out, the unit held out). Locations are visited in a seeded order and one
    is held out when that brings the held-out clips per scene and per device closer to their
    targets (``fraction`` of each); passes repeat until none helps. A scene with a single location
    in the list cannot lose it, so its recordings are held out instead (and the unit says so).
    """
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction {fraction}: must be between 0 and 1")
    by_scene: dict[str, set[str]] = defaultdict(set)
    for name in filenames:
        by_scene[clips[name].scene].add(clips[name].location)
    few = {scene for scene, locations in by_scene.items() if len(locations) < 2}

    def group(name: str) -> str:
        clip = clips[name]
        return f"{clip.scene}/{clip.recording if clip.scene in few else clip.location}"

    groups: dict[str, list[str]] = defaultdict(list)
    for name in filenames:
        groups[group(name)].append(name)
    scenes = Counter(clips[name].scene for name in filenames)
    devices = Counter(clips[name].device for name in filenames)
    target = {("scene", k): fraction * n for k, n in scenes.items()}
    target |= {("device", k): fraction * n for k, n in devices.items()}
    counts = {key: Counter((("scene", clips[n].scene)) for n in members)
              + Counter((("device", clips[n].device)) for n in members)
              for key, members in groups.items()}

    def cost(counts_now: Counter[tuple[str, str]]) -> float:
        return sum((counts_now[key] - goal) ** 2 / goal for key, goal in target.items())

    def greedy(order: list[str]) -> tuple[float, set[str]]:
        held: set[str] = set()
        held_counts: Counter[tuple[str, str]] = Counter()
        # Never empty a scene: at most all but one group of each scene may go.
        left = Counter(key.split("/", 1)[0] for key in groups)
        improved = True
        while improved:
            improved = False
            for key in order:
                scene = key.split("/", 1)[0]
                if key in held or left[scene] < 2:
                    continue
                candidate = held_counts + counts[key]
                if cost(candidate) < cost(held_counts):
                    held.add(key)
                    held_counts = candidate
                    left[scene] -= 1
                    improved = True
        return cost(held_counts), held

    # A few seeded visiting orders, the best-balanced kept: one greedy pass can overshoot a
    # scene early; the seed still decides which locations are held out.
    rng = random.Random(seed)
    best: tuple[float, set[str]] | None = None
    for _ in range(HOLD_OUT_RESTARTS):
        order = sorted(groups)
        rng.shuffle(order)
        result = greedy(order)
        if best is None or result[0] < best[0]:
            best = result
    assert best is not None
    held = best[1]
    kept = [name for name in filenames if group(name) not in held]
    unit = "locations" if not few else f"locations (recordings for {', '.join(sorted(few))})"
    return kept, [name for name in filenames if group(name) in held], unit


def find_lists_dir(root: Path, explicit: Path | None = None) -> Path:
    """Where the split lists are: an explicit folder, the dataset folder, or its split_setup/."""
    if explicit is not None:
        if not explicit.is_dir():
            raise DataError(f"{explicit}: split-list folder not found")
        return explicit
    for candidate in (root, root / "split_setup"):
        if (candidate / TEST_LIST).is_file() or (candidate / split_list_name(5)).is_file():
            return candidate
    return root


def load_dataset(root: Path | str, *, lists_dir: Path | str | None = None) -> TAU22Dataset:
    """Read meta.csv and every split list found; raise ``DataError`` on the first fatal problem."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    meta_path = root / "meta.csv"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found (is {root} a TAU22-layout folder?)")
    clips = {}
    for row in read_table(meta_path, required=META_COLUMNS):
        name = row["filename"]
        _scene, city, location, device = parse_filename(name)
        clips[name] = Clip(
            filename=name,
            scene=row["scene_label"],
            location=row.get("identifier") or f"{city}-{location}",
            device=row.get("source_label") or device,
        )
    found = find_lists_dir(root, Path(lists_dir).expanduser() if lists_dir else None)
    dataset = TAU22Dataset(root=root, lists_dir=found, clips=clips)
    for percent in SPLITS:
        path = found / split_list_name(percent)
        if path.is_file():
            dataset.split_lists[percent] = _listed(path, clips, dataset.repeated)
    if (found / TEST_LIST).is_file():
        dataset.test = _listed(found / TEST_LIST, clips, dataset.repeated)
    if (found / VALIDATION_LIST).is_file():
        dataset.validation = _listed(found / VALIDATION_LIST, clips, dataset.repeated)
    return dataset


def _listed(path: Path, clips: dict[str, Clip],
            repeated: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The list's clip names in order, each once (a repeated row would weigh a clip double in
    training and count it twice in a score); repeats are noted in ``repeated``."""
    names: dict[str, None] = {}
    again: dict[str, None] = {}
    for row in read_table(path, required=LIST_COLUMNS):
        name = row["filename"]
        clip = clips.get(name)
        if clip is None:
            raise DataError(f"{path}: lists {name}, which is not in meta.csv")
        if clip.scene != row["scene_label"]:
            raise DataError(
                f"{path}: {name} is labelled {row['scene_label']!r} here but {clip.scene!r}"
                " in meta.csv"
            )
        if name in names:
            again[name] = None
        names[name] = None
    if again:
        repeated[path.name] = tuple(again)
    return tuple(names)
