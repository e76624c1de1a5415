"""Logging and progress bars: informative by default, warnings only with --quiet."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator


def setup_logging(quiet: bool = False, debug: bool = False) -> None:
    """Configure loralab's logger and silence the libraries' routine chatter.

    Progress bars of long work (training, evaluation, sweeps, downloads) stay on unless
    `quiet`; the libraries' own bars for quick steps (loading weights, tokenizing a
    few thousand reviews) are turned off, as are their informational logs.
    """
    import datasets
    import transformers

    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s" if debug else "%(message)s")
    logging.getLogger("loralab").setLevel(level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    if quiet:
        datasets.disable_progress_bars()


# A study's runs share its warnings: what one said, the next (in this process or a child's)
# does not say again. A child process learns what was said from these variables.
SAID_VAR, NAME_VAR = "LORALAB_WARNED", "LORALAB_STUDY_NAME"


class OnceEach(logging.Filter):
    """Let each distinct warning through once, with the study's name (a suite's task)
    before it, so five runs reading one file say its problem once, naming the task."""

    def __init__(self, name: str = "", said=()):
        super().__init__()
        self.study = name
        self.said = set(said)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if text in self.said:
            return False
        self.said.add(text)
        if self.study:
            record.msg, record.args = f"{self.study}: {text}", None
        return True

    def environ(self) -> dict:
        """The variables that carry this filter into a child process (`from_environ`)."""
        import json

        return {SAID_VAR: json.dumps(sorted(self.said)), NAME_VAR: self.study}


@contextmanager
def warnings_once(name: str = "") -> Iterator[OnceEach]:
    """Within the block, each warning of loralab's logger once, named by `name`."""
    log = logging.getLogger("loralab")
    once = OnceEach(name)
    log.addFilter(once)
    try:
        yield once
    finally:
        log.removeFilter(once)


def active_once() -> OnceEach | None:
    return next((f for f in logging.getLogger("loralab").filters if isinstance(f, OnceEach)), None)


def once_from_environ() -> None:
    """In a run's child process: go on with the parent study's filter (see `OnceEach.environ`)."""
    import json

    if SAID_VAR in os.environ:
        logging.getLogger("loralab").addFilter(OnceEach(os.environ.get(NAME_VAR, ""),
                                                        json.loads(os.environ[SAID_VAR])))
