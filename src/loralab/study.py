"""`loralab run`: the lab study as one job (built up issue by issue)."""

from __future__ import annotations

import logging

logger = logging.getLogger("loralab")


def run_study(args) -> None:
    raise NotImplementedError
