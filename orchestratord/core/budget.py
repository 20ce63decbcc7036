"""Budget arithmetic: usage, limits, and a ledger of what is spent and what is held for running jobs.

Pure values and functions. A job's worst case (prompt estimate + max_tokens, and its price) is held in
the ledger when it is admitted, so two concurrent jobs can never together overspend; when the job ends
the hold is replaced by what it really used. Nothing here ever shortens a job: a job that does not fit
is refused before it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

N = TypeVar("N", int, float)
COST_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Usage:
    tokens: int = 0
    time_ms: int = 0
    cost: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.tokens + other.tokens, self.time_ms + other.time_ms, self.cost + other.cost)


@dataclass(frozen=True, slots=True)
class Limits:
    """A budget; None in a dimension means unlimited."""

    tokens: int | None = None
    time_ms: int | None = None
    cost: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.tokens is None and self.time_ms is None and self.cost is None


@dataclass(frozen=True, slots=True)
class Hold:
    """The worst case of one admitted job, held until it ends."""

    job_id: str
    model_ref: str
    prompt_tokens: int
    reserved: Usage


@dataclass(frozen=True, slots=True)
class Ledger:
    used: Usage = Usage()
    holds: tuple[Hold, ...] = ()
    window_start: float = 0.0

    @property
    def held(self) -> Usage:
        total = Usage()
        for hold in self.holds:
            total = total + hold.reserved
        return total


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left; None in a dimension that has no limit."""

    tokens: int | None = None
    time_ms: int | None = None
    cost: float | None = None


def remaining(limits: Limits, ledger: Ledger) -> Remaining:
    spent = ledger.used + ledger.held
    return Remaining(
        tokens=None if limits.tokens is None else max(0, limits.tokens - spent.tokens),
        time_ms=None if limits.time_ms is None else max(0, limits.time_ms - spent.time_ms),
        cost=None if limits.cost is None else max(0.0, round(limits.cost - spent.cost, 9)),
    )


def shortfall(limits: Limits, ledger: Ledger, need: Usage) -> str | None:
    """Why a job needing `need` does not fit, naming what remains; None when it fits."""
    left = remaining(limits, ledger)
    if left.tokens is not None and need.tokens > left.tokens:
        return f"this job needs up to {need.tokens} tokens and {left.tokens} tokens remain"
    if left.time_ms is not None and (left.time_ms <= 0 or need.time_ms > left.time_ms):
        return f"{left.time_ms} ms of decode time remain"
    if left.cost is not None and need.cost > left.cost + COST_EPSILON:
        return f"this job may cost up to {need.cost:.6g} and {left.cost:.6g} remains"
    return None


def tightest(*parts: Remaining | None) -> Remaining:
    """The smallest remaining amount in each dimension over several budgets (session and tenant)."""

    given = [p for p in parts if p is not None]
    return Remaining(
        tokens=_lowest([p.tokens for p in given]),
        time_ms=_lowest([p.time_ms for p in given]),
        cost=_lowest([p.cost for p in given]),
    )


def _lowest(values: list[N | None]) -> N | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def hold(ledger: Ledger, job: Hold) -> Ledger:
    return replace(ledger, holds=(*ledger.holds, job))


def release(ledger: Ledger, job_id: str) -> Ledger:
    """Drop a job's hold without charging it (its admission was undone)."""
    return replace(ledger, holds=tuple(h for h in ledger.holds if h.job_id != job_id))


def settle(ledger: Ledger, actual: dict[str, Usage]) -> Ledger:
    """Replace the holds of the jobs in `actual` (ended jobs) with what they really used."""
    if not actual:
        return ledger
    used = ledger.used
    for h in ledger.holds:
        if h.job_id in actual:
            used = used + actual[h.job_id]
    return replace(ledger, used=used, holds=tuple(h for h in ledger.holds if h.job_id not in actual))


def rolled(ledger: Ledger, now: float, window_s: float | None) -> Ledger:
    """Start a new window (usage back to zero, holds kept) once `window_s` has passed."""
    if window_s is None:
        return ledger
    if ledger.window_start == 0.0:
        return replace(ledger, window_start=now)
    if now - ledger.window_start < window_s:
        return ledger
    return replace(ledger, used=Usage(), window_start=now)
