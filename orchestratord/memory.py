"""Giving back the memory that retention held, once housekeeping has purged the jobs.

A retained job's log and record live in glibc's heap. When the purge frees them, the freed chunks lie
between chunks still in use, so `free()` never hands their pages back to the system, and the RSS a
burst of jobs raised stays raised (70.5 MB idle, 126 MB after 5,000 retained jobs, still 126 MB once
they were purged; 92 MB after a trim: docs/operations.md#memory). glibc's `malloc_trim(0)` gives
those pages back.
Elsewhere (musl, macOS) there is no such call, and nothing is done.
"""

from __future__ import annotations

import ctypes
import resource
import time
from collections.abc import Callable

from orchestratord.logs import get_logger

log = get_logger(__name__)

MIN_JOBS = 100  # fewer purged jobs free too little to be worth a trim


def malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where the C library has none (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols of the process, the C library's among them
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


def resident_bytes() -> int | None:
    """This process's RSS (Linux), or None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return None


class HeapTrim:
    """After purges have freed at least `min_jobs` jobs in all, give the heap's free pages back to the
    system, at most once every `interval_s` (0: never).

    Housekeeping calls `purged` after each purge. A trim blocks the event loop while it walks the
    heap's free chunks, about 0.1 µs each: 7.5 ms after 5,000 jobs, once a minute at most."""

    def __init__(
        self,
        trim: Callable[[], object] | None,
        *,
        interval_s: float,
        min_jobs: int = MIN_JOBS,
        clock: Callable[[], float] = time.monotonic,
        rss: Callable[[], int | None] = resident_bytes,
    ) -> None:
        self._trim = trim if interval_s > 0 else None
        self._interval = interval_s
        self._min_jobs = min_jobs
        self._clock = clock
        self._rss = rss
        self._pending = 0  # jobs purged since the last trim
        self._last: float | None = None

    def purged(self, jobs: int) -> bool:
        """A purge freed `jobs` jobs; trim if that makes enough since the last trim and it is time.
        Returns whether it trimmed."""
        self._pending += jobs
        if self._trim is None or self._pending < self._min_jobs:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._run(self._trim)
        self._pending, self._last = 0, now
        return True

    def _run(self, trim: Callable[[], object]) -> None:
        before = self._rss()
        began = time.perf_counter()
        trim()
        took_ms = (time.perf_counter() - began) * 1000
        after = self._rss()
        log.info(
            "memory_trimmed",
            jobs=self._pending,
            took_ms=round(took_ms, 2),
            rss_before_mb=_mb(before),
            rss_after_mb=_mb(after),
        )


def _mb(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)
