"""The version of loralab (one place: the package, the CLI and environment.json read it)."""

__version__ = "0.1.0"
