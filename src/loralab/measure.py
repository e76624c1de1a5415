"""Peak memory of a piece of work: resident memory on the CPU, allocations on a GPU."""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library already loaded, no search for it
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows)
        return None


def release_free_memory() -> bool:
    """Hand the C allocator's free heap pages back to the system (glibc's `malloc_trim`).

    glibc keeps freed blocks of up to 32 MB in its heaps, and pages between live blocks
    stay resident, so resident memory after a phase (an epoch, an evaluation) counts
    memory that nothing uses. False where the C library has no such call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - not Linux
        return 0


class PeakMemory:
    """Sample resident memory in a thread while the block runs: `peak_mb` after it, and on
    a GPU also `gpu_peak_mb` (`torch.cuda.max_memory_allocated`), two quantities kept apart.

    The whole process is measured, so work done before the block (a loaded model) counts
    too: that is what a user's machine must hold.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.05):
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self.gpu_peak: int | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self.device.type == "cuda":
            self.gpu_peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def peak_mb(self) -> float:
        """The process's peak resident (host) memory."""
        return self.peak / 2**20

    @property
    def gpu_peak_mb(self) -> float | None:
        """The GPU memory allocated at the peak; None off a GPU."""
        return self.gpu_peak / 2**20 if self.gpu_peak is not None else None
