"""Logging and progress bars: informative by default, warnings only with --quiet."""

from __future__ import annotations

import logging
import os


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
