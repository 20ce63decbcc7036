"""The per-tenant token bucket that admission's rate limit (429 `rate-limit`) is built on."""

from __future__ import annotations

from orchestratord.core.ratelimit import TokenBucket


def test_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == 0.5  # the next token comes after 1 / rate
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.75) == 0.25


def test_idle_time_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.take(0.0)
    bucket.take(0.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 1.0]
