"""Sessions: a tenant's conversation, created on the first job that names its `session_id`.

A session lives `ttl_s` after its last turn and takes at most `max_turns` jobs. It remembers the
replica its last turn ran on: placement prefers that replica (its KV cache may still hold the
conversation), and `kv_warmth` says whether the latest turn landed there. It carries its own budget
ledger. Session ids are the client's, so they are scoped by tenant: two tenants' "chat-1" are two
sessions, and neither can see the other's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from orchestratord.budgets import Budgets
from orchestratord.core.budget import (
    Hold,
    Limits,
    Remaining,
    hold,
    release,
    remaining,
    settle,
    shortfall,
    tightest,
)
from orchestratord.core.placement import Assigned
from orchestratord.core.tasks import TaskSpec
from orchestratord.errors import BudgetExceeded, NotFound
from orchestratord.state.base import Ledgers, SessionRecord


@dataclass(frozen=True, slots=True)
class SessionView:
    record: SessionRecord
    max_turns: int
    ttl_ms_remaining: int
    remaining: Remaining  # the tighter of the session's and the tenant's budgets


def session_key(tenant: str, session_id: str) -> str:
    return f"{len(tenant)}:{tenant}:{session_id}"


class Sessions:
    def __init__(
        self,
        store: Ledgers,
        budgets: Budgets,
        *,
        ttl_s: float,
        max_turns: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._budgets = budgets
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._wall = wall

    @property
    def limits(self) -> Limits:
        return self._budgets.policy.session

    async def current(self, tenant: str, session_id: str) -> SessionRecord | None:
        """The live session, with the jobs of it that have ended charged what they really used."""
        key = session_key(tenant, session_id)
        record = await self._store.session_get(key)
        if record is None:
            return None
        ended = await self._budgets.ended(record.ledger.holds)
        if not ended:
            return record
        return await self._store.session_update(
            key, lambda cur: None if cur is None else replace(cur, ledger=settle(cur.ledger, ended))
        )

    async def view(self, tenant: str, session_id: str) -> SessionView:
        record = await self.current(tenant, session_id)
        if record is None:
            raise NotFound(f"no session {session_id!r}: it never existed, has expired, or was deleted")
        left = tightest(remaining(self.limits, record.ledger), await self._budgets.tenant_remaining(tenant))
        ttl_ms = max(0, math.ceil((record.expires_at - self._wall()) * 1000))
        return SessionView(record, self.max_turns, ttl_ms, left)

    async def delete(self, tenant: str, session_id: str) -> None:
        if not await self._store.session_delete(session_key(tenant, session_id)):
            raise NotFound(f"no session {session_id!r}: it never existed, has expired, or was deleted")

    # -- the job path ----------------------------------------------------------------------------
    async def begin_turn(self, spec: TaskSpec, job: Hold) -> Remaining:
        """Count the turn and hold the job's worst case; BudgetExceeded when either does not fit."""
        assert spec.session_id is not None
        await self.current(spec.tenant, spec.session_id)  # settle what has ended first
        refused: list[str] = []

        def change(cur: SessionRecord | None) -> SessionRecord | None:
            now = self._wall()
            base = cur or SessionRecord(
                spec.session_id or "",
                spec.tenant,
                spec.model_ref,
                created_at=now,
                expires_at=now + self.ttl_s,
            )
            why = self._refusal(base, job)
            refused[:] = [why] if why else []
            if why:
                return cur
            ledger = hold(base.ledger, job)
            return replace(base, turns=base.turns + 1, expires_at=now + self.ttl_s, ledger=ledger)

        updated = await self._store.session_update(session_key(spec.tenant, spec.session_id), change)
        if refused or updated is None:
            raise BudgetExceeded(f"session {spec.session_id!r}: {refused[0] if refused else 'expired'}")
        return remaining(self.limits, updated.ledger)

    def _refusal(self, record: SessionRecord, job: Hold) -> str | None:
        if record.turns >= self.max_turns:
            return f"it has used all {self.max_turns} of its turns; start a new session"
        why = shortfall(self.limits, record.ledger, job.reserved)
        return None if why is None else f"budget: {why}; lower max_tokens or start a new session"

    async def undo_turn(self, spec: TaskSpec) -> None:
        """Take back a turn whose job was not queued after all (refused by a later check)."""
        assert spec.session_id is not None

        def change(cur: SessionRecord | None) -> SessionRecord | None:
            if cur is None:
                return None
            back = replace(cur, turns=max(0, cur.turns - 1), ledger=release(cur.ledger, spec.job_id))
            return None if back.turns == 0 and not back.ledger.holds else back

        await self._store.session_update(session_key(spec.tenant, spec.session_id), change)

    async def affinity(self, spec: TaskSpec) -> tuple[str, str] | None:
        """The (pool, replica) that served the session's previous turn."""
        if spec.session_id is None:
            return None
        record = await self._store.session_get(session_key(spec.tenant, spec.session_id))
        if record is None or record.last_pool_id is None or record.last_replica_id is None:
            return None
        return record.last_pool_id, record.last_replica_id

    async def placed(self, spec: TaskSpec, assigned: Assigned) -> SessionRecord | None:
        """Remember where this turn runs; it is warm when that is where the previous turn ran."""
        if spec.session_id is None:
            return None

        def change(cur: SessionRecord | None) -> SessionRecord | None:
            if cur is None:
                return None
            return replace(
                cur,
                last_pool_id=assigned.pool_id,
                last_replica_id=assigned.replica_id,
                kv_warmth=assigned.affinity_hit,
            )

        return await self._store.session_update(session_key(spec.tenant, spec.session_id), change)
