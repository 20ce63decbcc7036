"""The control plane's services, and the gate they form on the job path.

`ControlPlane` holds the API keys, sessions, budgets and the model catalog. `ControlGate` is how the job
path consults them: admission asks it to `hold` a job before queueing it (catalog state, the session's
turn, the session's and the tenant's budgets; any refusal is typed, and nothing is queued), and the
dispatcher asks it for the job's affinity (its session's, or its prompt cache key's) before placement
and tells it where the job was placed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestratord.admission import AdmissionHold
from orchestratord.auth import ApiKeys
from orchestratord.budgets import BudgetPolicy, Budgets, Price, event_fields, headers
from orchestratord.cache_keys import CacheKeys
from orchestratord.catalog import Catalog
from orchestratord.core.budget import Limits, Remaining, remaining, tightest
from orchestratord.core.placement import Assigned
from orchestratord.core.tasks import TaskSpec
from orchestratord.sessions import Sessions
from orchestratord.settings import BudgetConfig, Settings
from orchestratord.state.base import StateStore


@dataclass(slots=True)
class ControlPlane:
    keys: ApiKeys
    budgets: Budgets
    sessions: Sessions
    catalog: Catalog
    gate: ControlGate


def build_control_plane(settings: Settings, store: StateStore) -> ControlPlane:
    keys = ApiKeys.from_digests((k.key_sha256, k.tenant, k.role) for k in settings.auth.keys)
    budgets = Budgets(store, budget_policy(settings))
    sessions = Sessions(store, budgets, ttl_s=settings.sessions.ttl_s, max_turns=settings.sessions.max_turns)
    catalog = Catalog(settings.catalog.dir, artifacts_dir=settings.catalog.artifacts_dir, shared=store.shared)
    gate = ControlGate(budgets, sessions, catalog, CacheKeys(shared=store.shared))
    return ControlPlane(keys, budgets, sessions, catalog, gate)


def budget_policy(settings: Settings) -> BudgetPolicy:
    b = settings.budgets
    return BudgetPolicy(
        session=_limits(b.session),
        tenant_default=_limits(b.tenant_default),
        tenants={tenant: _limits(c) for tenant, c in b.tenants.items()},
        window_s=b.window_s,
        prices={m: Price(p.input_per_1k, p.output_per_1k) for m, p in settings.prices.items()},
    )


def _limits(config: BudgetConfig) -> Limits:
    return Limits(tokens=config.tokens, time_ms=config.time_ms, cost=config.cost)


class ControlGate:
    """Admission's `AdmissionCheck` and the dispatcher's `PlacementHooks`."""

    def __init__(self, budgets: Budgets, sessions: Sessions, catalog: Catalog, cache_keys: CacheKeys) -> None:
        self._budgets = budgets
        self._sessions = sessions
        self._catalog = catalog
        self._cache_keys = cache_keys

    # -- admission -------------------------------------------------------------------------------
    async def hold(self, spec: TaskSpec) -> AdmissionHold:
        session = None
        if spec.session_id is not None:
            session = await self._sessions.current(spec.tenant, spec.session_id)
        self._catalog.check(spec.model_ref, new_session=session is None, override=spec.override)
        job = self._budgets.hold_for(spec)
        in_session = await self._sessions.begin_turn(spec, job) if spec.session_id is not None else None
        try:
            in_tenant = await self._budgets.hold_tenant(spec, job)
        except BaseException:
            if spec.session_id is not None:
                await self._sessions.undo_turn(spec)
            raise

        async def undo() -> None:
            await self._budgets.release_tenant(spec.tenant, spec.job_id)
            if spec.session_id is not None:
                await self._sessions.undo_turn(spec)

        return AdmissionHold(headers(tightest(in_session, in_tenant)), undo)

    # -- remaining budgets for a job's stream ----------------------------------------------------
    async def remaining_for(self, tenant: str, session_id: str | None) -> Remaining:
        in_session = None
        if session_id is not None:
            record = await self._sessions.current(tenant, session_id)
            if record is not None:
                in_session = remaining(self._sessions.limits, record.ledger)
        return tightest(in_session, await self._budgets.tenant_remaining(tenant))

    async def budget_headers(self, tenant: str, session_id: str | None) -> dict[str, str]:
        return headers(await self.remaining_for(tenant, session_id))

    # -- placement -------------------------------------------------------------------------------
    async def affinity(self, spec: TaskSpec) -> tuple[str, str] | None:
        """Where the job's session ran its last turn; for a job outside a session, where the last job
        of its prompt cache key was placed."""
        if spec.session_id is None and spec.cache_key is not None:
            return await self._cache_keys.last(spec.tenant, spec.cache_key)
        return await self._sessions.affinity(spec)

    async def placed(self, spec: TaskSpec, assigned: Assigned) -> Mapping[str, object]:
        """Fields for the job's dispatch `metrics` event: kv_warmth and the remaining budgets."""
        record = await self._sessions.placed(spec, assigned)
        fields = event_fields(await self.remaining_for(spec.tenant, spec.session_id))
        if record is not None:
            fields["kv_warmth"] = record.kv_warmth
        elif spec.cache_key is not None:
            await self._cache_keys.placed(spec.tenant, spec.cache_key, assigned.pool_id, assigned.replica_id)
            fields["kv_warmth"] = assigned.affinity_hit
        return fields
