"""A cache several workers and machines can share: built once under a lock, keyed by content,
resumed after a kill, and never deleted under a reader."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asc_search.data import fingerprints
from asc_search.data.dataset import load_dataset
from asc_search.features import logmel
from asc_search.features.experiment import load_split_data
from asc_search.features.logmel import build_features
from asc_search.hookspecs import hookimpl
from asc_search.plugin_manager import build_plugin_manager
from asc_search.teachers.ensemble import Teacher, TeacherContext, TeacherFit, ensemble_logits
from asc_search.training.recipe import TrainingRecipe

RECIPE = TrainingRecipe(epochs=1, batch_size=64, warmup_steps=1)


class MarkingTeachers:
    """A teacher that leaves one file per fit in ``marks`` (fits are counted across processes)
    and takes long enough that two workers started together would overlap."""

    def __init__(self, marks: Path) -> None:
        self.marks = marks

    @hookimpl
    def asc_teachers(self):
        def fit(context: TeacherContext) -> TeacherFit:
            (self.marks / f"fit-{os.getpid()}-{time.time_ns()}").touch()
            time.sleep(1.0)
            return TeacherFit(logits=np.eye(10, dtype=np.float32)[context.train.labels] * 4.0)

        return [Teacher("marking", "counts its fits", fit)]


def _worker(corpus: Path, cache: Path, marks: Path, barrier, results) -> None:
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(MarkingTeachers(marks))
    barrier.wait()
    data = load_split_data(str(corpus), 5, pm=pm, cache_dir=cache, progress=False,
                           with_test=False)
    ensemble = ensemble_logits(data.train, teacher_names=["marking"], pm=pm, cache_dir=cache,
                               recipe=RECIPE, progress=False)
    results.put((data.train.features.cache_hit, data.validation.features.cache_hit,
                 ensemble.cache_hit, ensemble.logits.tolist()))


def test_two_workers_started_together_build_features_and_fit_teachers_once(
        tiny_corpus: Path, tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    cache, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    workers = [context.Process(target=_worker, args=(tiny_corpus, cache, marks, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    found = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    train_hits, validation_hits, teacher_hits, logits = zip(*found, strict=True)
    assert sorted(train_hits) == [False, True], "the training features were built twice"
    assert sorted(validation_hits) == [False, True], "the validation features were built twice"
    assert sorted(teacher_hits) == [False, True] and len(list(marks.iterdir())) == 1, \
        "the teachers were fitted twice"
    assert logits[0] == logits[1]


def test_a_copy_of_the_data_elsewhere_shares_features_and_teachers(tiny_corpus: Path,
                                                                   tmp_path: Path) -> None:
    """Keys follow content, not the folder's path or the files' modification times."""
    cache, marks = tmp_path / "cache", tmp_path / "marks"
    marks.mkdir()
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(MarkingTeachers(marks))
    copy = Path(shutil.copytree(tiny_corpus, tmp_path / "elsewhere" / "TAU22"))
    later = time.time() + 3600
    for path in (copy / "audio").iterdir():
        os.utime(path, (later, later))
    first = load_split_data(str(tiny_corpus), 5, pm=pm, cache_dir=cache, progress=False)
    second = load_split_data(str(copy), 5, pm=pm, cache_dir=cache, progress=False)
    for name in ("train", "validation", "test"):
        one, other = getattr(first, name).features, getattr(second, name).features
        assert other.cache_hit and other.directory == one.directory
    for data in (first, second):
        ensemble_logits(data.train, teacher_names=["marking"], pm=pm, cache_dir=cache,
                        recipe=RECIPE, progress=False)
    assert len(list(marks.iterdir())) == 1


def test_digests_are_computed_once_per_machine_and_again_only_for_changed_files(
        tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(tiny_corpus, tmp_path / "data"))
    names = list(load_dataset(copy).split(100).train[:30])
    hashed: list[Path] = []
    real = fingerprints._digest
    monkeypatch.setattr(fingerprints, "_digest", lambda path: hashed.append(path) or real(path))
    first = fingerprints.content_digests(copy, names, cache_dir=tmp_path / "cache")
    assert len(hashed) == 30
    fingerprints._READ.clear()  # as a new process would start: from the record on disk
    assert fingerprints.content_digests(copy, names, cache_dir=tmp_path / "cache") == first
    assert len(hashed) == 30
    edited = copy / names[3]
    edited.write_bytes(edited.read_bytes()[:-2] + b"\x01\x02")
    again = fingerprints.content_digests(copy, names, cache_dir=tmp_path / "cache")
    assert hashed[30:] == [edited] and again[3] != first[3] and again[:3] == first[:3]


_KILLED_BUILD = """
import os, signal, sys, json
from pathlib import Path
from asc_search.features.logmel import build_features

root, cache, files = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
seen = 0

def progress(count):
    global seen
    seen += count
    if seen >= 20:  # two chunks of 8 committed, the third computed but not yet recorded
        os.kill(os.getpid(), signal.SIGKILL)

build_features(files, root=root, cache_dir=cache, n_jobs=1, progress=progress, chunk_clips=8)
"""


def test_a_killed_feature_build_resumes_losing_at_most_one_chunk(
        tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    files = list(load_dataset(tiny_corpus).split(100).train[:40])
    cache = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(tiny_corpus), str(cache),
                             json.dumps(files)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    computed: list[int] = []
    real = logmel._compute_rows
    monkeypatch.setattr(logmel, "_compute_rows",
                        lambda paths, *rest: computed.append(len(paths)) or real(paths, *rest))
    with caplog.at_level("INFO"):
        resumed = build_features(files, root=tiny_corpus, cache_dir=cache, n_jobs=1)
    assert "16 of 40 clips were computed before" in caplog.text
    assert sum(computed) == 24, "more than the one chunk in progress was computed again"
    fresh = build_features(files, root=tiny_corpus, cache_dir=tmp_path / "fresh", n_jobs=1)
    np.testing.assert_array_equal(resumed.array, fresh.array)
    leftovers = [p.name for p in (cache / "features").iterdir()
                 if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == [], f"left behind: {leftovers}"


def test_leftovers_of_killed_builds_are_cleaned_and_recent_partials_kept(
        tiny_corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "features"
    old = time.time() - 2 * 24 * 3600
    made = {}
    for name in (".0a1b2c.x7k2p9q1", ".otherkey.partial", ".gone.stale-123", ".recentkey.partial"):
        made[name] = folder / name
        made[name].mkdir(parents=True)
        (made[name] / "features.npy").write_bytes(b"\0" * 1000)
        if name != ".recentkey.partial":
            for path in (made[name] / "features.npy", made[name]):
                os.utime(path, (old, old))
    files = list(load_dataset(tiny_corpus).split(100).train[:12])
    build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    assert [name for name, path in made.items() if path.exists()] == [".recentkey.partial"]


def test_an_unusable_entry_is_set_aside_not_deleted_under_a_reader(
        tiny_corpus: Path, tmp_path: Path) -> None:
    files = list(load_dataset(tiny_corpus).split(100).train[:12])
    reader = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    held = reader.array  # another process's memory map of the entry
    (reader.directory / "meta.json").write_text("{not json")
    rebuilt = build_features(files, root=tiny_corpus, cache_dir=tmp_path, n_jobs=1)
    assert not rebuilt.cache_hit
    aside = [p for p in (tmp_path / "features").iterdir() if ".stale-" in p.name]
    assert len(aside) == 1 and (aside[0] / "features.npy").is_file()
    np.testing.assert_array_equal(held, rebuilt.array)


def test_a_start_stats_each_audio_file_once(tiny_corpus: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """TAU22 at split 100 is 169,300 files; the start made about 310,000 stat calls before."""
    stats: list[str] = []
    real = os.stat

    def counting(path, *args, **kwargs):
        if str(path).endswith(".wav"):
            stats.append(str(path))
        return real(path, *args, **kwargs)

    pm = build_plugin_manager(load_entry_points=False)
    load_split_data(str(tiny_corpus), 5, pm=pm, cache_dir=tmp_path, progress=False)  # builds
    monkeypatch.setattr(os, "stat", counting)  # every stat of the next start, by anyone
    data = load_split_data(str(tiny_corpus), 5, pm=pm, cache_dir=tmp_path, progress=False)
    listed = len(data.train) + len(data.validation) + len(data.test)
    assert len(stats) == listed and len(set(stats)) == listed


def test_default_workers_follow_the_usable_cores_up_to_eight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from asc_search import parallel

    monkeypatch.setattr(parallel, "cpu_quota", lambda: None)  # whatever the test machine's
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert parallel.default_workers(-1) == 8 and parallel.default_workers(12) == 12
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert parallel.default_workers(-1) == 2


def test_local_workers_share_the_usable_cores_not_the_machines(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``taskset -c 0`` on a 2-core machine two workers get a thread each, not 2 // 2."""
    from asc_search import parallel
    from asc_search.study.lifecycle import split_threads

    monkeypatch.setattr(parallel, "cpu_quota", lambda: None)  # whatever the test machine's
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert split_threads(2) == 1 and split_threads(1) == 2 and split_threads(4) == 1


def test_a_cpu_quota_below_the_affinity_sets_the_usable_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``docker --cpus 0.73`` on two cores: one thread and one worker, not two throttled ones."""
    from asc_search import parallel

    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: {0, 1})
    for quota, cores in ((None, 2), (0.73, 1), (0.2, 1), (1.5, 2), (1.4, 1), (6.0, 2)):
        monkeypatch.setattr(parallel, "cpu_quota", lambda quota=quota: quota)
        assert parallel.usable_cores() == cores, quota
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 0.73)
    assert parallel.default_workers(-1) == 1


def test_the_cpu_quota_is_read_from_this_process_cgroup(tmp_path: Path) -> None:
    from asc_search.parallel import cpu_quota

    membership = tmp_path / "cgroup"
    v1 = tmp_path / "sys" / "cpu" / "asc-slow"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("72700\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    membership.write_text("12:memory:/\n1:cpu,cpuacct:/asc-slow\n")
    assert cpu_quota(membership=membership, hierarchy=tmp_path / "sys") == pytest.approx(0.727)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert cpu_quota(membership=membership, hierarchy=tmp_path / "sys") is None
    v2 = tmp_path / "sys" / "user.slice" / "job"
    v2.mkdir(parents=True)
    membership.write_text("0::/user.slice/job\n")
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(membership=membership, hierarchy=tmp_path / "sys") == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(membership=membership, hierarchy=tmp_path / "sys") is None
    assert cpu_quota(membership=tmp_path / "absent", hierarchy=tmp_path / "sys") is None


def test_the_thread_pools_get_the_quota_unless_the_user_chose(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from asc_search import parallel

    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(parallel, "cpu_quota", lambda: 0.73)
    for name in parallel.THREAD_VARIABLES:  # recorded, so the test leaves them as it found them
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    threads = torch.get_num_threads()
    try:
        assert parallel.respect_cpu_quota() == 1
        assert all(parallel.os.environ[name] == "1" for name in parallel.THREAD_VARIABLES)
        assert torch.get_num_threads() == 1  # torch was imported already: set directly
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
    assert parallel.respect_cpu_quota() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(parallel, "cpu_quota", lambda: None)  # no quota: nothing changes
    assert parallel.respect_cpu_quota() is None and "OMP_NUM_THREADS" not in parallel.os.environ


def test_the_cores_other_processes_use_come_from_the_machine_busy_time(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from asc_search import parallel

    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy
    stat.write_text(f"cpu  {3 * ticks} {ticks} {2 * ticks} {50 * ticks} {9 * ticks} 0 0 {ticks}\n"
                    "cpu0 1 2 3 4 5 6 7 8\n")
    assert parallel.cpu_seconds_of_machine(stat) == pytest.approx(7.0)
    assert parallel.cpu_seconds_of_machine(tmp_path / "absent") is None
    readings = iter([100.0, 100.8])  # 0.8 busy core-seconds over the 0.2-s watch: 4 cores
    monkeypatch.setattr(parallel, "cpu_seconds_of_machine", lambda stat: next(readings))
    assert 3.0 < parallel.cores_busy_elsewhere(0.2) <= 4.0


def test_a_busy_machine_gets_a_note_with_the_thread_count_to_use() -> None:
    from asc_search.parallel import busy_machine_note

    note = busy_machine_note(threads=2, usable=2, elsewhere=2.0)
    assert note is not None and "OMP_NUM_THREADS=1" in note and "2.0 of the 2" in note
    assert "OMP_NUM_THREADS=3" in busy_machine_note(threads=8, usable=8, elsewhere=5.2)
    assert busy_machine_note(threads=2, usable=2, elsewhere=0.3) is None  # room enough
    assert busy_machine_note(threads=1, usable=2, elsewhere=2.0) is None  # one thread waits for none
    assert busy_machine_note(threads=2, usable=2, elsewhere=None) is None  # not readable here
