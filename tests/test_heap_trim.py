"""HeapTrim: the heap is trimmed once purges have freed enough jobs, at most once per interval."""

from __future__ import annotations

import platform

import pytest

from orchestratord.memory import HeapTrim, malloc_trim, resident_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(interval_s: float = 60.0) -> tuple[HeapTrim, list[int], Clock]:
    calls: list[int] = []
    clock = Clock()
    heap = HeapTrim(lambda: calls.append(1), interval_s=interval_s, min_jobs=100, clock=clock)
    return heap, calls, clock


def test_trims_once_enough_jobs_were_purged_then_at_most_once_per_interval() -> None:
    heap, calls, clock = make()
    assert not heap.purged(60)
    assert not heap.purged(0)
    assert heap.purged(40)  # 100 in all
    assert calls == [1]
    clock.now += 59
    assert not heap.purged(5000)  # too soon: it waits, and counts them
    clock.now += 1
    assert heap.purged(0)
    assert calls == [1, 1]
    clock.now += 600
    assert not heap.purged(99)  # long after, but too few since the last trim


def test_an_interval_of_zero_never_trims() -> None:
    heap, calls, _ = make(interval_s=0)
    assert not heap.purged(10_000)
    assert calls == []


def test_no_trim_where_the_c_library_has_none() -> None:
    heap = HeapTrim(None, interval_s=60)
    assert not heap.purged(10_000)


def test_the_rss_is_read_here() -> None:
    if platform.system() == "Linux":
        assert (resident_bytes() or 0) > 10 * 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_has_malloc_trim() -> None:
    trim = malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)  # 1: memory was given back
