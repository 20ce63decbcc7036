"""When a failed call is sent again, and after how long: one policy for both clients."""

from __future__ import annotations

from dataclasses import dataclass

from orchestratord_client.errors import OrchestratordError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry only what the server (or the transport) marks retriable, at most `max_retries` times.

    The wait is the server's hint when it gave one (it knows its queue's drain rate), else an
    exponential backoff. A hint longer than `max_wait_s` is not slept through: the error is raised
    at once, for the caller to decide (a spent tenant budget may name hours)."""

    max_retries: int = 3
    max_wait_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, retries_done: int, error: OrchestratordError) -> float | None:
        """Seconds to wait before the next attempt; None to give up and raise `error`."""
        if retries_done >= self.max_retries or not error.retriable:
            return None
        wait = error.retry_after_s if error.retry_after_s is not None else self.backoff(retries_done)
        return wait if wait <= self.max_wait_s else None

    def backoff(self, retries_done: int) -> float:
        return min(self.backoff_s * 2.0**retries_done, self.max_backoff_s)
