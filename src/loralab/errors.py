"""The one exception type loralab raises for problems a user can fix.

The CLI prints these as a single message and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class LoralabError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class DataError(LoralabError):
    """Bad or missing data: the message names the file, the row or the column."""


class ModelLoadError(LoralabError):
    """A model or adapter could not be loaded: the message says why and how to fix it."""
