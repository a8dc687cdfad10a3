"""asc-search: find, prune and distil tiny acoustic-scene classifiers under DCASE budgets."""

from asc_search.errors import AscSearchError

__all__ = ["AscSearchError", "__version__"]
__version__ = "0.1.0"
