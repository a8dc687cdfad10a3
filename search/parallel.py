"""How many cores this process may use, and so how many threads and worker processes it starts.

One worker per core is right on a laptop and wrong on a large GPU host: every worker imports numpy
and torch (about 300 MB each), and 64 of them would be started for a job that takes minutes. The
default is one per core this process may use, at most ``MAX_DEFAULT_WORKERS``; ``--jobs`` chooses
any other number.

The cores it may use are its CPU affinity (``taskset``, ``docker --cpuset-cpus``) and its cgroup's
CPU quota (``docker --cpus``, a Kubernetes limit), whichever is fewer. The quota matters as much
as the affinity: torch starts one thread per core it sees, and threads beyond the quota are
throttled in turn while the others wait for them at every parallel loop. With a quota of 0.73 of
2 cores, 60 training steps of the DCASE baseline (fp32, batch 16) took 14.4–14.6 s on two threads
and 10.3–11.2 s on one (the same machine without the quota: 5.1–5.3 s on two, 6.8–7.0 on one;
benchmarks/README.md, "The default search, end to end"). ``respect_cpu_quota`` gives torch and
OpenMP the quota's cores before they start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MAX_DEFAULT_WORKERS = 8


def affinity_cores() -> int | None:
    """The cores of this process's CPU affinity (``taskset``, ``--cpuset-cpus``); None where the
    platform does not tell."""
    return max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, or its CPU quota rounded to whole
    cores (at least one) where that is fewer; not the machine's count, which ``os.cpu_count``
    gives."""
    usable = affinity_cores() or max(1, os.cpu_count() or 1)
    quota = cpu_quota()
    return usable if quota is None else min(usable, max(1, int(quota + 0.5)))


def cpu_quota(*, membership: Path = Path("/proc/self/cgroup"),
              hierarchy: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cores this process may use by its cgroup's CPU quota, or ``None`` without one
    (``membership`` and ``hierarchy``: where the kernel shows them, for the tests).

    Read by hand because joblib's (loky's) cgroup reading looks only at the root group, not
    this process's, and rounds the quota up to whole cores (0.73 would read as 1, 1.1 as 2)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if "cpu" in controllers.split(","):  # cgroup v1: cfs quota and period, in µs
            folder = hierarchy / "cpu" / group.lstrip("/")
            try:
                quota = int((folder / "cpu.cfs_quota_us").read_text())
                period = int((folder / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                return None
            return quota / period if quota > 0 else None
        if controllers == "":  # cgroup v2: "max PERIOD" or "QUOTA PERIOD"
            try:
                quota_text, period_text = (hierarchy / group.lstrip("/")
                                           / "cpu.max").read_text().split()
            except (OSError, ValueError):
                continue
            if quota_text != "max":
                return int(quota_text) / int(period_text)
    return None


#: Where the thread count of torch's and the BLAS libraries' pools is read, at their start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def respect_cpu_quota() -> int | None:
    """Give the thread pools the cores of the CPU quota where it is below the affinity; return
    that count, or ``None`` where nothing was changed (no quota below the affinity, or the user
    set ``OMP_NUM_THREADS``, which wins). Run before torch is imported (the command line's
    ``main``); the variables also reach every worker process started after."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores, affinity = usable_cores(), affinity_cores()
    if affinity is None or cores >= affinity:
        return None
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(cores))
    if "torch" in sys.modules:  # imported already (an in-process caller): set it directly
        sys.modules["torch"].set_num_threads(cores)
    return cores


def default_workers(n_jobs: int = -1) -> int:
    """``n_jobs`` when positive; for -1 (or 0) one per usable core, at most 8."""
    if n_jobs > 0:
        return n_jobs
    return min(usable_cores(), MAX_DEFAULT_WORKERS)


def cpu_seconds_of_machine(stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds every core of the machine has spent busy since boot (``/proc/stat``'s first line:
    user, nice, system, irq, softirq and steal; idle and iowait left out), or ``None`` where the
    file cannot be read (not Linux)."""
    try:
        fields = stat.read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cores_busy_elsewhere(seconds: float = 0.5, *, stat: Path = Path("/proc/stat")) -> float | None:
    """Cores other processes keep busy, over ``seconds`` of watching while this one waits: the
    machine's busy time minus this process's own (``None`` where it cannot be read)."""
    import time

    before, own_before, started = cpu_seconds_of_machine(stat), time.process_time(), time.monotonic()
    time.sleep(seconds)
    after, own_after = cpu_seconds_of_machine(stat), time.process_time()
    if before is None or after is None:
        return None
    return max(0.0, (after - before) - (own_after - own_before)) / (time.monotonic() - started)


def busy_machine_note(*, threads: int, usable: int, elsewhere: float | None) -> str | None:
    """A note where other processes take enough of the cores that torch's threads will wait for
    each other: beside two busy single-thread processes on 2 cores, one thread trained 2–3×
    faster than two (benchmarks/README.md, "The default search, end to end"). The thread count
    is left to the user (``OMP_NUM_THREADS``): chosen by the load, a run's numbers would change
    with its neighbours'."""
    if elsewhere is None or threads < 2 or usable - elsewhere >= threads - 0.5:
        return None
    free = max(1, int(usable - elsewhere + 0.5))
    return (f"note: other processes keep {elsewhere:.1f} of the {usable} usable cores busy; "
            f"torch's {threads} threads then wait for each other at every step (beside two busy "
            f"processes on 2 cores, one thread trained 2–3× faster than two): on a machine this "
            f"busy, start runs with OMP_NUM_THREADS={free}")
