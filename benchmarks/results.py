"""The benchmarks' result files: one JSON object per line, appended as each run finishes.

Appending line by line lets an interrupted benchmark keep what it finished and skip it when rerun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result recorded in ``path`` (none if it does not exist yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, entry: dict[str, Any]) -> None:
    """Print ``entry`` and append it to ``path``."""
    print(json.dumps(entry), flush=True)
    with path.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
