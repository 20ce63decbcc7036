"""Budgets: what a job may cost (tokens, decode time, money at a per-model price), per session and per
tenant, held at admission and settled when the job ends.

A job is charged its worst case when admitted: the prompt estimate plus `max_tokens`, at its model's
price. If that does not fit the remaining budget the job is refused (BUDGET_EXCEEDED) before it is
queued, so output is never cut short by a budget. A decode-time budget cannot be known up front: a job
is refused once none is left, and a job that runs over is never stopped; its real time is charged.

Holds are settled lazily, whenever a ledger is read: every held job that has ended since is charged
what it really used (a job whose record has expired is charged its hold, never less). This covers
every way a job can end (finished, failed, canceled while queued, evicted, expired) in one place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from orchestratord.core.budget import (
    Hold,
    Ledger,
    Limits,
    Remaining,
    Usage,
    hold,
    release,
    remaining,
    rolled,
    settle,
    shortfall,
)
from orchestratord.core.tasks import TaskSpec
from orchestratord.errors import BudgetExceeded
from orchestratord.state.base import JobRecord, JobRegistry, Ledgers

BUDGET_HEADERS = ("X-Budget-Tokens-Remaining", "X-Budget-Time-Remaining-Ms", "X-Budget-Cost-Remaining")


@dataclass(frozen=True, slots=True)
class Price:
    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_1k + tokens_out * self.output_per_1k) / 1000


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    session: Limits = field(default_factory=Limits)
    tenant_default: Limits = field(default_factory=Limits)
    tenants: Mapping[str, Limits] = field(default_factory=dict)
    window_s: float | None = 86400.0
    prices: Mapping[str, Price] = field(default_factory=dict)

    def tenant(self, tenant: str) -> Limits:
        return self.tenants.get(tenant, self.tenant_default)


def headers(left: Remaining) -> dict[str, str]:
    """X-Budget-* for the limited dimensions only."""
    values = (left.tokens, left.time_ms, None if left.cost is None else f"{left.cost:.6g}")
    return {name: str(v) for name, v in zip(BUDGET_HEADERS, values, strict=True) if v is not None}


def event_fields(left: Remaining) -> dict[str, object]:
    """The same, for `metrics` events."""
    fields = {
        "budget_tokens_remaining": left.tokens,
        "budget_time_remaining_ms": left.time_ms,
        "budget_cost_remaining": left.cost,
    }
    return {k: v for k, v in fields.items() if v is not None}


class _Store(Ledgers, JobRegistry, Protocol):
    """The roles budgets use: the ledgers, and the records of held jobs to settle them."""


class Budgets:
    def __init__(self, store: _Store, policy: BudgetPolicy, *, wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self.policy = policy
        self._wall = wall

    # -- what a job costs ------------------------------------------------------------------------
    def price(self, model_ref: str) -> Price:
        return self.policy.prices.get(model_ref, Price())

    def hold_for(self, spec: TaskSpec) -> Hold:
        """The job's worst case: its whole prompt estimate and every token it may generate."""
        prompt = spec.tokens_in_estimate
        worst = Usage(
            tokens=prompt + spec.max_tokens, cost=self.price(spec.model_ref).cost(prompt, spec.max_tokens)
        )
        return Hold(spec.job_id, spec.model_ref, prompt, worst)

    def used_by(self, job: Hold, record: JobRecord | None) -> Usage | None:
        """What an ended job used; None while it is still queued or running."""
        if record is None:
            return job.reserved
        if not record.state.terminal:
            return None
        if record.started_at is None:
            return Usage()
        end = record.finished_at if record.finished_at is not None else record.started_at
        return Usage(
            tokens=job.prompt_tokens + record.tokens_out,
            time_ms=max(0, math.ceil((end - record.started_at) * 1000)),
            cost=self.price(job.model_ref).cost(job.prompt_tokens, record.tokens_out),
        )

    async def ended(self, holds: Iterable[Hold]) -> dict[str, Usage]:
        """The real usage of the held jobs that have ended, by job id."""
        out: dict[str, Usage] = {}
        for job in holds:
            used = self.used_by(job, await self._store.get(job.job_id))
            if used is not None:
                out[job.job_id] = used
        return out

    # -- tenant ledgers --------------------------------------------------------------------------
    async def tenant_remaining(self, tenant: str) -> Remaining | None:
        limits = self.policy.tenant(tenant)
        if limits.unlimited:
            return None
        return remaining(limits, await self._settled(tenant))

    async def hold_tenant(self, spec: TaskSpec, job: Hold) -> Remaining | None:
        """Hold the job's worst case in its tenant's budget; BudgetExceeded if it does not fit."""
        limits = self.policy.tenant(spec.tenant)
        if limits.unlimited:
            return None
        current = await self._settled(spec.tenant)
        refused: list[str] = []

        def change(ledger: Ledger | None) -> Ledger:
            base = rolled(ledger or current, self._wall(), self.policy.window_s)
            why = shortfall(limits, base, job.reserved)
            refused[:] = [why] if why else []
            return base if why else hold(base, job)

        updated = await self._store.ledger_update(_tenant_key(spec.tenant), change)
        if refused:
            raise BudgetExceeded(
                f"tenant {spec.tenant!r} budget: {refused[0]}; lower max_tokens or wait for the budget "
                f"to reset",
                retry_after_ms=self._until_reset(updated),
            )
        return remaining(limits, updated)

    async def release_tenant(self, tenant: str, job_id: str) -> None:
        if not self.policy.tenant(tenant).unlimited:
            await self._store.ledger_update(
                _tenant_key(tenant), lambda ledger: release(ledger or Ledger(), job_id)
            )

    async def _settled(self, tenant: str) -> Ledger:
        ledger = await self._store.ledger_get(_tenant_key(tenant)) or Ledger()
        ended = await self.ended(ledger.holds)
        now, window = self._wall(), self.policy.window_s
        if not ended and rolled(ledger, now, window) == ledger:
            return ledger
        return await self._store.ledger_update(
            _tenant_key(tenant), lambda cur: rolled(settle(cur or Ledger(), ended), now, window)
        )

    def _until_reset(self, ledger: Ledger) -> int | None:
        if self.policy.window_s is None:
            return None
        left = ledger.window_start + self.policy.window_s - self._wall()
        return max(1, math.ceil(left * 1000))


def _tenant_key(tenant: str) -> str:
    return f"tenant:{tenant}"
