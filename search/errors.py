"""The project's one exception type.

Everything a user can get wrong (a missing folder, a broken WAV, a bad budget string) is raised as
``AscSearchError`` with a message that names the culprit in one line. The CLI prints that line and
exits non-zero; any other exception is a bug in asc-search or a plugin and keeps its traceback.
"""

from __future__ import annotations


class AscSearchError(Exception):
    """A user-facing error whose message is one line naming the culprit."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Folding to one line keeps the CLI promise even when a caller formats a multi-line text.
        super().__init__(" ".join(str(message).split()))


class DataError(AscSearchError):
    """The data folder, a list or an audio file is unusable."""


class CacheError(AscSearchError):
    """A cache file is unusable; callers rebuild it rather than show this to the user."""


class PluginError(AscSearchError):
    """A plugin could not be found, loaded or asked for something it does not provide."""
