"""Where asc-search may write: the cache folder and the studies folder, nowhere else.

Both are resolved in one place so that a test (or a cautious user) can point them at a temporary
folder with an environment variable and be sure nothing lands anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ASC_SEARCH_CACHE"
STUDIES_ENV = "ASC_SEARCH_STUDIES"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder for derived data (embedded corpus, features, teacher logits).

    Order: explicit override, ``$ASC_SEARCH_CACHE``, ``$XDG_CACHE_HOME/asc-search``,
    ``~/.cache/asc-search``. Everything in it can be rebuilt, so it is safe to delete.
    """
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "asc-search"


def studies_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding study storages and their artifacts (default ``./studies``)."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(STUDIES_ENV):
        return Path(os.environ[STUDIES_ENV]).expanduser()
    return Path.cwd() / "studies"


def keep_library_files_in(cache: Path) -> None:
    """Point the libraries that keep files of their own into ``cache``, unless the user chose.

    matplotlib writes its font list under ``~/.cache`` and ``~/.config``; importing
    ``torch._dynamo`` (the optimisers do) creates a compile cache under ``$TMPDIR``; Triton, on a
    GPU, one under ``~/.triton``. Routed here, a run writes only to its cache and studies folders.
    """
    for variable, folder in (("MPLCONFIGDIR", "matplotlib"),
                             ("TORCHINDUCTOR_CACHE_DIR", "torchinductor"),
                             ("TRITON_CACHE_DIR", "triton")):
        os.environ.setdefault(variable, str(cache / "libraries" / folder))
