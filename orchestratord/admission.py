"""Admission: check a task against what the pools can serve, apply limits, and enqueue it fairly.

Refusals are typed errors raised before anything is stored: INVALID_PARAMS (nothing can ever serve
it), POOL_UNREADY (a pinned pool cannot take work now), DEADLINE_UNMET (it cannot start in time),
ADMISSION_REJECT (queue full, rate limit, a predicted wait past the class's `queue.max_wait_s`; with a
retry hint from the measured drain rate). A client refused from a full queue (`full_policy: reject`)
with an Idempotency-Key is promised the place its hint points at: its retry with the same key takes it
before any new arrival (`core.queue` rule 7), for `queue.retry_hold_s` past the hint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orchestratord.core.capacity import serving_pools
from orchestratord.core.placement import allowed_pools
from orchestratord.core.prediction import predict_start_ms, retry_hint_ms
from orchestratord.core.queue import Admitted, Place, QueueEntry, QueuePolicy, Rejected, prospective_place
from orchestratord.core.ratelimit import TokenBucket
from orchestratord.core.route import Route
from orchestratord.core.tasks import TOOL_MESSAGES, JobState, TaskSpec, spec_json
from orchestratord.endings import Endings
from orchestratord.errors import (
    DEFAULT_RETRY_AFTER_MS,
    AdmissionRejected,
    BudgetExceeded,
    DeadlineUnmet,
    InvalidParams,
    OrchestratorError,
    PoolUnavailable,
    PoolUnready,
    QueueFullDropLru,
    ShuttingDown,
)
from orchestratord.logs import bind_job, get_logger
from orchestratord.loop_lag import LoopLag
from orchestratord.metrics import NONE, Metrics
from orchestratord.outlook import Outlook
from orchestratord.presence import Presence
from orchestratord.state.base import EventLog, JobQueue, JobRecord, JobRegistry
from orchestratord.state.shared import SharedState
from pool_manager.registry import PoolRegistry, PoolState
from worker_adapters.registry import honours, seed_limit

log = get_logger(__name__)
# With shared state, how old a view of the slots admission predicts from may be: the dispatcher reads
# them at every busy round and housekeeping at every tick (0.25 s), so under load admission reads none
# of its own (a Redis call per admitted job, mostly)
SHARED_SNAPSHOT_AGE_S = 0.25
HOLD_HORIZON_MS = 60_000  # no place is promised further out (the OpenAI SDKs wait at most 60 s)


class _Store(JobRegistry, EventLog, JobQueue, Protocol):
    """The roles admission uses."""


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    job_id: str
    queue_position: int
    predicted_start_ms: int | None
    backoff_ms: int
    headers: Mapping[str, str] = field(default_factory=dict)  # from the checks, e.g. X-Budget-*


@dataclass(frozen=True, slots=True)
class AdmissionHold:
    """What an admission check granted: headers for the 202, and how to take it back if the job is
    not queued after all."""

    headers: Mapping[str, str] = field(default_factory=dict)
    undo: Callable[[], Awaitable[None]] | None = None


class AdmissionCheck(Protocol):
    """A check run just before a job is queued (sessions, budgets, catalog). It raises a typed error
    to refuse the job, or returns what it holds for it."""

    async def hold(self, spec: TaskSpec) -> AdmissionHold: ...


@dataclass(frozen=True, slots=True)
class TenantLimits:
    rps: float | None = None
    burst: int | None = None


class Admission:
    def __init__(
        self,
        store: _Store,
        registry: PoolRegistry,
        outlook: Outlook,
        endings: Endings,
        wake: Callable[[], None],
        presence: Presence,
        metrics: Metrics,
        policy: QueuePolicy,
        *,
        max_tokens: int,
        tenant_limits: Mapping[str, TenantLimits] | None = None,
        checks: Sequence[AdmissionCheck] = (),
        shared: SharedState | None = None,
        unready_limit_s: float | None = None,
        max_wait_s: Mapping[str, float] | None = None,
        lag: LoopLag | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._unready_limit = unready_limit_s
        self._max_wait = dict(max_wait_s or {})
        self._store = store
        self._registry = registry
        self._outlook = outlook
        self._endings = endings
        self._wake = wake
        self._presence = presence
        self._metrics = metrics
        self._policy = policy
        self._max_tokens = max_tokens
        self._limits = dict(tenant_limits or {})
        self._checks = tuple(checks)
        self._buckets: dict[str, TokenBucket] = {}
        self._shared = shared  # several replicas: rate limits are counted in the shared backend
        self._wall = wall
        self._clock = clock
        self._accepting = True
        self._lag = lag  # this process's event loop: past its limit, new jobs are refused

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        """Refuse every new job from now on (SHUTTING_DOWN). A plain attribute write: safe from a
        signal handler, and immediate."""
        self._accepting = False

    async def admit(self, spec: TaskSpec, ticket: Callable[[], str] | None = None) -> AdmissionResult:
        """Admit `spec`, or raise the typed error that refuses it. `ticket()` names the request for a
        place held in a full queue (the tenant and its Idempotency-Key); None: it holds none."""
        bind_job(spec)
        try:
            return await self._admit(spec, ticket)
        except OrchestratorError as exc:
            self._refused(spec, exc)
            raise

    def check(self, spec: TaskSpec) -> None:
        """Raise what admission would refuse `spec` for as a request (its model, its limits, what no
        engine serving it takes, every pool draining), without admitting it: a job prepared, not run."""
        self._validate(spec)

    async def _admit(self, spec: TaskSpec, ticket: Callable[[], str] | None) -> AdmissionResult:
        if not self._accepting:
            raise ShuttingDown(
                "this orchestrator is shutting down; retry on another replica",
                retry_after_ms=DEFAULT_RETRY_AFTER_MS,
            )
        key = self._validate(spec)
        self._check_load()
        await self._rate_limit(spec)
        now = self._wall()
        entry = QueueEntry(
            job_id=spec.job_id,
            tenant=spec.tenant,
            priority=spec.priority,
            route=key,
            cost=self._cost(spec),
            deadline=None if spec.deadline_ms is None else now + spec.deadline_ms / 1000,
            enqueued_at=now,
            unit=self._policy.unit,
            tokens_in=spec.tokens_in_estimate,
            tokens_out=self._outlook.expected_tokens(spec),
        )
        await self._check_deadline(spec, entry)
        most_ahead = self._check_wait(spec, entry)
        holds = await self._hold(spec)
        try:
            # A job this replica can serve is its own to take: its dispatcher looks at once (`_announce`)
            # and the job's readers here are served from this process. With no ready pool for it in
            # this replica's view (its breakers, its health checks), it wakes the other replicas'
            # dispatchers. Slots are counted deployment-wide: one busy here is busy everywhere.
            mine = any(pool.ready for pool in serving_pools(key, self._outlook.snapshots))
            outcome = await self._store.create(
                self._record(spec, now), entry, ticket, wake_all=not mine, most_ahead=most_ahead
            )
            if isinstance(outcome, Rejected) and outcome.reason == "max_wait":
                place = outcome.place or Place(0)
                raise self._too_late(spec, place, *self._expected_wait(entry, place))
            if not isinstance(outcome, Admitted):
                raise await self._rejected(spec, key, outcome, ticket)
        except BaseException:
            await _undo(holds)
            raise
        self._outlook.admitted(entry)
        if outcome.evicted is not None:
            await self._evict(outcome.evicted)
        headers = {k: v for h in holds for k, v in h.headers.items()}
        return await self._announce(spec, key, headers, outcome.place)

    async def _hold(self, spec: TaskSpec) -> list[AdmissionHold]:
        """Run the checks in order; if one refuses, undo what the earlier ones held."""
        holds: list[AdmissionHold] = []
        try:
            for check in self._checks:
                holds.append(await check.hold(spec))
        except BaseException:
            await _undo(holds)
            raise
        return holds

    # -- checks ----------------------------------------------------------------------------------
    def _validate(self, spec: TaskSpec) -> Route:
        served = self._registry.models()
        if spec.model_ref not in served:
            raise InvalidParams(
                f"model_ref {spec.model_ref!r} is not served here; served models: {', '.join(served)}"
            )
        if spec.max_tokens > self._max_tokens:
            raise InvalidParams(
                f"max_tokens {spec.max_tokens} exceeds this server's limit of {self._max_tokens}"
            )
        pools = [p for p in self._registry.pools.values() if spec.model_ref in p.spec.models]
        allowed, _ = allowed_pools(spec.placement, [p.spec.id for p in pools])
        if spec.placement.mode == "pin":
            self._check_pin(spec, [p.spec.id for p in pools])
        candidates = [p for p in pools if p.spec.id in allowed]
        if not candidates:
            raise InvalidParams(f"placement preferences leave no pool that serves {spec.model_ref!r}")
        candidates = _honouring(spec, candidates)
        if all(p.draining for p in candidates):
            raise PoolUnavailable(
                f"every pool serving {spec.model_ref!r} is draining; retry later or on another deployment",
                retry_after_ms=DEFAULT_RETRY_AFTER_MS,
            )
        self._check_serving(spec, key_pools=candidates)
        needed = spec.tokens_needed
        fitting = [p for p in candidates if needed <= p.ctx_max and spec.max_tokens <= p.max_tokens_out]
        if not fitting:
            raise InvalidParams(self._too_large(spec, candidates))
        if all(p.draining for p in fitting):
            raise PoolUnavailable(
                f"every pool that fits this job ({', '.join(sorted(p.spec.id for p in fitting))}) is "
                "draining; retry later or on another deployment",
                retry_after_ms=DEFAULT_RETRY_AFTER_MS,
            )
        # The route names the pools whenever the job may not run on every pool that serves its
        # model (placement preferences, or a context or output only some pools take), so that the
        # queue offers it only to free slots placement will accept.
        restricted = (
            spec.placement.mode == "pin"
            or (spec.placement.mode == "prefer" and not spec.placement.allow_fallback)
            or bool(spec.placement.avoid_pools)
            or len(fitting) < len(pools)
        )
        return Route.to(spec.model_ref, [p.spec.id for p in fitting] if restricted else None)

    def _check_serving(self, spec: TaskSpec, key_pools: Sequence[PoolState]) -> None:
        """503 at once when no replica serving the model has been able to take a job for longer than
        `queue.unready_limit_s`: such a job would only wait to be failed."""
        if self._unready_limit is None:
            return
        serving = [p for p in key_pools if not p.draining]
        if not serving:
            return
        down = min(self._registry.down_for(p.spec.id, spec.model_ref) for p in serving)
        if down > self._unready_limit:
            raise PoolUnavailable(
                f"no replica serving {spec.model_ref!r} has been able to take a job for {down:.0f} s "
                f"(queue.unready_limit_s is {self._unready_limit:g}); GET /v1/pools says why; retry later",
                retry_after_ms=DEFAULT_RETRY_AFTER_MS,
            )

    @staticmethod
    def _too_large(spec: TaskSpec, candidates: Sequence[PoolState]) -> str:
        needed = spec.tokens_needed
        largest = max(candidates, key=lambda p: p.ctx_max)
        said = ", as its engine reports it" if largest.ctx_max_source == "engine" else ""
        if spec.inputs is not None:
            return (
                f"an input of ~{needed} tokens exceeds the largest context ({largest.ctx_max}{said}) of "
                f"the pools serving {spec.model_ref!r}; split it"
            )
        if any(needed <= p.ctx_max for p in candidates):
            best = max((p for p in candidates if needed <= p.ctx_max), key=lambda p: p.max_tokens_out)
            said = ", as its engine reports it" if best.max_tokens_out_source == "engine" else ""
            return (
                f"max_tokens {spec.max_tokens} exceeds the largest max_tokens_out ({best.max_tokens_out}"
                f"{said}) of the pools serving {spec.model_ref!r} with a context of {needed} tokens"
            )
        return (
            f"prompt (~{spec.tokens_in_estimate} tokens) plus max_tokens {spec.max_tokens} exceeds "
            f"the largest context ({largest.ctx_max}{said}) of the pools serving {spec.model_ref!r}"
        )

    def _check_pin(self, spec: TaskSpec, serving: list[str]) -> None:
        pin = spec.placement.pin_pool_id
        if pin is None:
            raise InvalidParams("placement.mode 'pin' needs placement.pin_pool_id")
        if pin not in self._registry.pools:
            raise InvalidParams(
                f"placement.pin_pool_id {pin!r} is not a pool; pools: {', '.join(self._registry.pools)}"
            )
        if pin not in serving:
            raise InvalidParams(f"pinned pool {pin!r} does not serve model {spec.model_ref!r}")
        pool = self._registry.pools[pin]
        if pool.draining or not any(r.ready for r in pool.replicas.values()):
            state = "draining" if pool.draining else "not ready"
            raise PoolUnready(
                f"pinned pool {pin!r} is {state}", pool_id=pin, retry_after_ms=DEFAULT_RETRY_AFTER_MS
            )

    def _check_load(self) -> None:
        lag = self._lag
        if lag is None or not lag.overloaded or lag.limit_s is None:
            return
        behind = round(lag.behind_s * 1000)
        retry = max(DEFAULT_RETRY_AFTER_MS, 2 * behind)
        raise AdmissionRejected(
            f"this orchestrator is overloaded: its event loop or its state backend answers {behind} ms "
            f"late (the limit, limits.max_loop_lag_ms, is {round(lag.limit_s * 1000)} ms); retry in "
            f"{retry} ms or on another replica",
            policy_label="overload",
            retry_after_ms=retry,
        )

    async def _rate_limit(self, spec: TaskSpec) -> None:
        limits = self._limits.get(spec.tenant)
        if limits is None or limits.rps is None:
            return
        burst = limits.burst or max(1, math.ceil(limits.rps))
        if self._shared is not None:
            wait = await self._shared.take_rate(spec.tenant, limits.rps, burst)
        else:
            bucket = self._buckets.get(spec.tenant)
            if bucket is None:
                bucket = self._buckets[spec.tenant] = TokenBucket(limits.rps, burst)
            wait = bucket.take(self._clock())
        if wait > 0:
            retry = max(1, math.ceil(wait * 1000))
            raise AdmissionRejected(
                f"tenant {spec.tenant!r} exceeds its rate of {limits.rps} requests/s; retry in {retry} ms",
                policy_label="rate-limit",
                retry_after_ms=retry,
            )

    async def _check_deadline(self, spec: TaskSpec, entry: QueueEntry) -> None:
        """Refuse a job whose predicted start, were it admitted now, falls after its deadline."""
        if spec.deadline_ms is None:
            return
        await self._outlook.refresh()
        place = prospective_place(await self._store.queued(), self._policy, entry)
        predicted = self._outlook.predict(entry.route, place)
        if predicted is not None and predicted > spec.deadline_ms:
            raise DeadlineUnmet(
                f"predicted start in {predicted} ms is after the deadline of {spec.deadline_ms} ms "
                f"({place.ahead} jobs ahead for {spec.model_ref!r})"
            )

    def _check_wait(self, spec: TaskSpec, entry: QueueEntry) -> int | None:
        """429 at once for a job not expected to start within its class's longest wait
        (`queue.max_wait_s`): it would only be failed from the queue later, or outwaited by its client.
        The prediction counts the free slots and the queue's measured pace, in the queue as
        housekeeping last read it (at most a tick ago: no walk of the queue per request), stretched by
        how late the recent starts came against their predictions (`Outlook.assured`: the job is
        admitted only if it starts in time about 9 times in 10). Returns the most jobs that may be
        ahead of it at that pace (`Outlook.most_ahead`), for a shared queue to check where it queues
        the job: other replicas admit between this one's reads, and a burst of admissions on several
        replicas would pass a queue that only their sum makes too long."""
        limit = self._max_wait.get(spec.priority)
        if limit is None:
            return None
        limit_ms = round(limit * 1000)
        place = self._outlook.place_if_admitted(entry, self._policy)
        predicted, expected = self._expected_wait(entry, place)
        if expected > limit_ms:
            raise self._too_late(spec, place, predicted, expected)
        # only a shared queue checks it (the embedded queue has no other admitter)
        return self._outlook.most_ahead(limit_ms) if self._shared is not None else None

    def _expected_wait(self, entry: QueueEntry, place: Place) -> tuple[int, int]:
        """The predicted start (ms) of a job at `place`, and that stretched by how late the recent
        starts came; (0, 0) while nothing can be predicted."""
        predicted = self._outlook.predict(entry.route, place) or 0
        return predicted, self._outlook.assured(predicted) if predicted > 0 else 0

    def _too_late(self, spec: TaskSpec, place: Place, predicted: int, expected: int) -> AdmissionRejected:
        """The 429 for a job at `place` predicted to start later than its class may wait."""
        limit = self._max_wait[spec.priority]
        pace = self._outlook.dispatch_per_s()
        paced = "" if pace is None else f", the dispatchers starting {pace:.0f} jobs/s"
        stretched = "" if expected == predicted else f", {expected} ms as late as recent starts came"
        retry = max(DEFAULT_RETRY_AFTER_MS, expected - round(limit * 1000))
        return AdmissionRejected(
            f"a job admitted now is predicted to start in {predicted} ms{stretched} ({place.ahead} jobs "
            f"ahead for {spec.model_ref!r}{paced}), later than a {spec.priority} job may wait "
            f"(queue.max_wait_s: {limit:g} s); retry in {retry} ms",
            policy_label="max-wait",
            retry_after_ms=retry,
        )

    def _cost(self, spec: TaskSpec) -> float:
        if self._policy.unit == "tokens":
            return float(spec.tokens_in_estimate + spec.tokens_out_estimate)
        return 1.0

    # -- outcomes --------------------------------------------------------------------------------
    def _record(self, spec: TaskSpec, now: float) -> JobRecord:
        return JobRecord(
            job_id=spec.job_id,
            tenant=spec.tenant,
            model_ref=spec.model_ref,
            priority=spec.priority,
            state=JobState.QUEUED,
            created_at=now,
            spec=spec_json(spec),
            session_id=spec.session_id,
            correlation_id=spec.correlation_id,
            cancel_on_disconnect=spec.cancel_on_disconnect,
        )

    async def _rejected(
        self, spec: TaskSpec, key: Route, outcome: Rejected, ticket: Callable[[], str] | None
    ) -> AdmissionRejected:
        tenant_bound = outcome.reason == "tenant_capacity"
        if not tenant_bound and ticket is not None and self._holds_places():
            return await self._held(key, outcome, ticket())
        hint = await self._retry_hint(key, spec.tenant if tenant_bound else None)
        scope = f"tenant {spec.tenant!r}'s share of the queue" if tenant_bound else "the queue"
        return AdmissionRejected(
            f"{scope} is full (policy {outcome.policy}); retry in {hint} ms, when a queued job is "
            "expected to start and free its place",
            policy_label=outcome.policy,
            retry_after_ms=hint,
        )

    def _holds_places(self) -> bool:
        return self._policy.full_policy == "reject" and self._policy.retry_hold_s > 0

    async def _held(self, key: Route, outcome: Rejected, ticket: str) -> AdmissionRejected:
        """Refused from a full queue: hold for this request the place that frees after those already
        held (a request that holds one keeps it), and tell it when to come back for it."""
        hint = self._outlook.assured(await self._retry_hint(key, None, held=await self._store.places_held()))
        if hint > HOLD_HORIZON_MS:  # too far out to promise; the plain hint
            return AdmissionRejected(
                f"the queue is full (policy {outcome.policy}); retry in {hint} ms, when a queued job is "
                "expected to start and free its place",
                policy_label=outcome.policy,
                retry_after_ms=hint,
            )
        hold_s = self._policy.retry_hold_s + hint / 10_000  # a tenth of the wait, for the hint's error
        due_ms = math.ceil(await self._store.hold_place(ticket, hint / 1000, hold_s) * 1000)
        if due_ms <= 0:  # its place is overdue: it comes with the next job that starts
            due_ms = await self._retry_hint(key, None)
        return AdmissionRejected(
            f"the queue is full (policy {outcome.policy}); a place is held for this request: retry in "
            f"{due_ms} ms with the same Idempotency-Key, within "
            f"{self._policy.retry_hold_s:g} s of it",
            policy_label=outcome.policy,
            retry_after_ms=due_ms,
        )

    async def _retry_hint(self, key: Route, tenant: str | None, *, held: int = 0) -> int:
        """When a place in the queue (or in `tenant`'s share) is expected to free, from the measured
        drain rate: the earliest predicted start among the queued jobs in scope, plus a small margin;
        with `held` places promised to others, the start that frees the one after theirs (those
        places that are free already aside). The queued jobs hold the slots for their expected
        service; the jobs of the clients promised places for the pools' typical one.

        A job still queued now waits for a slot to free (or for its tenant's running jobs to end),
        so its wait counts from the next release even when a slot is free."""
        await self._outlook.refresh()
        depths = await self._store.depths(tenant)  # per route, never a walk of the queue
        ahead = max(0, held + sum(depths.by_route.values()) - self._policy.capacity)  # still to free
        # Every route with queued jobs has one at position 0; a tenant's share frees with its first.
        first = dict.fromkeys(depths.by_route, 0) if tenant is None else depths.first
        hints = []
        for route, position in (first or {key: 0}).items():
            cap = self._outlook.capacity(route)
            at = max(position, cap.slots_free)
            wait = predict_start_ms(at + ahead, cap, known=depths.by_route.get(route, 0))
            hint = None if wait is None else retry_hint_ms(wait, cap)
            if hint is not None:
                hints.append(hint)
        return min(hints, default=DEFAULT_RETRY_AFTER_MS)  # the default only before anything is measured

    def _refused(self, spec: TaskSpec, exc: OrchestratorError) -> None:
        """Every refusal, of any kind, is one `task_rejected` event and one count; backpressure (a full
        queue, a rate limit, a predicted wait past the class's limit, an overloaded loop) and a spent
        budget (`quota`) are counted under their policy too."""
        engine = self._endings.engine_serving(spec.model_ref)
        self._metrics.tasks_rejected.labels(engine=engine, reason=exc.kind.value).inc()
        if isinstance(exc, AdmissionRejected | BudgetExceeded):
            self._metrics.backpressure.labels(engine=engine, policy=exc.policy_label).inc()
        log.info(
            "task_rejected", reason=exc.kind.value, policy=exc.policy_label, message=exc.message,
            engine=engine, tokens_in=spec.tokens_in_estimate, prompt=spec.prompt_text,
        )  # fmt: skip

    async def _evict(self, victim: QueueEntry) -> None:
        policy = self._policy.full_policy
        evicted = QueueFullDropLru(
            f"evicted from a full queue by policy {policy} to admit a newer job; retry",
            retry_after_ms=await self._retry_hint(victim.route, None),
            policy_label=policy,
        )
        if await self._endings.fail(victim.job_id, evicted):
            engine = self._endings.engine_serving(victim.route.model)
            self._metrics.backpressure.labels(engine=engine, policy=policy).inc()

    async def _announce(
        self, spec: TaskSpec, key: Route, headers: Mapping[str, str], place: Place | None
    ) -> AdmissionResult:
        # With shared state, reading the slots is a Redis call: the dispatcher's or housekeeping's view
        # of a moment ago predicts as well.
        await self._outlook.refresh(SHARED_SNAPSHOT_AGE_S if self._shared is not None else 0.0)
        if place is None:  # the store did not find it with the job's creation
            place = await self._store.place(spec.job_id) or Place(0)
        position = place.ahead
        predicted = self._outlook.predict(key, place)
        self._outlook.promised(spec.job_id, predicted)
        await self._store.append(
            spec.job_id,
            "started",
            {
                "job_id": spec.job_id,
                "queue_position": position,
                "predicted_start_ms": predicted,
                "correlation_id": spec.correlation_id,
            },
        )
        self._presence.admitted(spec.job_id)
        self._wake()
        backoff = self._outlook.backoff(key, predicted, spec.tokens_in_estimate)
        engine, version, pool_id = self._outlook.labels(key)
        self._metrics.tasks_enqueued.labels(
            engine=engine, engine_version=version, pool_id=pool_id, replica_id=NONE, priority=spec.priority
        ).inc()
        log.info(  # engine and pool: the ones it is queued (and counted in queue_depth) under
            "task_admitted", queue_position=position, predicted_start_ms=predicted, engine=engine,
            engine_version=version, pool_id=pool_id, tokens_in=spec.tokens_in_estimate,
            prompt=spec.prompt_text,
        )  # fmt: skip
        return AdmissionResult(spec.job_id, position, predicted, backoff, headers)


async def _undo(holds: Sequence[AdmissionHold]) -> None:
    for held in reversed(holds):
        if held.undo is not None:
            await held.undo()


def _honouring(spec: TaskSpec, candidates: list[PoolState]) -> list[PoolState]:
    """The pools whose engine honours every optional parameter the job sets; InvalidParams naming the
    parameter when none does (never silently dropped)."""
    for parameter in spec.engine_parameters:
        able = [p for p in candidates if honours(p.spec.engine, parameter, p.spec.options)]
        if not able:
            engines = ", ".join(sorted({p.spec.engine for p in candidates}))
            if parameter == TOOL_MESSAGES:
                raise InvalidParams(
                    f"messages with tool calls or tool results need an engine that takes tools; the "
                    f"engines serving {spec.model_ref!r} ({engines}) take none",
                    param="messages",
                )
            raise InvalidParams(
                f"{parameter} is not supported by the engines serving {spec.model_ref!r} ({engines}); "
                "leave it out",
                param=parameter,
            )
        candidates = able
    if spec.seed is not None:
        able = [p for p in candidates if spec.seed <= seed_limit(p.spec.engine, p.spec.max_seed)]
        if not able:
            limit = max(seed_limit(p.spec.engine, p.spec.max_seed) for p in candidates)
            raise InvalidParams(
                f"seed {spec.seed} is larger than the engines serving {spec.model_ref!r} take as given "
                f"(at most {limit}); use a smaller seed",
                param="seed",
            )
        candidates = able
    return candidates
