"""How many worker processes a parallel step (features, corpus, data check) starts by default.

One per core is right on a laptop and wrong on a large GPU host: every worker imports numpy and
torch (about 300 MB each), and 64 of them would be started for a job that takes minutes. The
default is one per core this process may use (its CPU affinity, which container limits set), at
most ``MAX_DEFAULT_WORKERS``; ``--jobs`` chooses any other number.
"""

from __future__ import annotations

import os

MAX_DEFAULT_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (which ``taskset`` and container
    limits set), not the machine's count, which ``os.cpu_count`` gives."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, usable or 1)


def default_workers(n_jobs: int = -1) -> int:
    """``n_jobs`` when positive; for -1 (or 0) one per usable core, at most 8."""
    if n_jobs > 0:
        return n_jobs
    return min(usable_cores(), MAX_DEFAULT_WORKERS)
