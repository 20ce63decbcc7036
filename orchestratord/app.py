"""The composition root: builds every service from Settings, wires the routes, owns start and stop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from orchestratord.admission import SHARED_SNAPSHOT_AGE_S, Admission, TenantLimits
from orchestratord.api import (
    capabilities,
    catalog,
    errors,
    middleware,
    ops,
    pools,
    sessions,
    stream,
    task_list,
    tasks,
    ui,
)
from orchestratord.api.deps import guard, guard_ops
from orchestratord.api.openai import embeddings as openai_embeddings
from orchestratord.api.openai import responses as openai_responses
from orchestratord.api.openai import routes as openai_routes
from orchestratord.api.openai import tokenize as openai_tokenize
from orchestratord.api.openai import websocket as openai_websocket
from orchestratord.api.openapi import contract_document
from orchestratord.control import build_control_plane
from orchestratord.core.queue import QueuePolicy
from orchestratord.dispatch import DispatchConfig, Dispatcher
from orchestratord.endings import Endings
from orchestratord.execution import Execution, RunConfig
from orchestratord.housekeeping import Housekeeper
from orchestratord.idempotency import Idempotency
from orchestratord.jobs import JobControl
from orchestratord.logs import get_logger
from orchestratord.loop_lag import LoopLag
from orchestratord.memory import HeapTrim, malloc_trim
from orchestratord.metrics import Metrics, hashed_tenant
from orchestratord.outlook import Outlook
from orchestratord.placing import Placer
from orchestratord.pool_ops import PoolOps
from orchestratord.presence import Presence
from orchestratord.reachability import Reachability
from orchestratord.runs import Runs
from orchestratord.services import Services
from orchestratord.settings import Settings, redact_url
from orchestratord.shutdown import drain_and_stop
from orchestratord.state.base import StateStore
from orchestratord.state.memory import MemoryStore
from orchestratord.tracing import Tracer
from pool_manager.health import HealthProber
from pool_manager.registry import BreakerPolicy, PoolRegistry
from pool_manager.specs import PoolSpec
from worker_adapters.base import AdapterConfig
from worker_adapters.host import AdapterHost

log = get_logger(__name__)


def queue_policy(settings: Settings) -> QueuePolicy:
    q = settings.queue
    return QueuePolicy(
        capacity=q.capacity,
        tenant_capacity=q.tenant_capacity,
        full_policy=q.full_policy,
        class_weights=dict(q.class_weights),
        tenant_weights={t.id: t.weight for t in settings.tenants},
        unit=q.fairness_unit,
        retry_hold_s=q.retry_hold_s,
    )


def adapter_configs(specs: list[PoolSpec]) -> dict[tuple[str, str], AdapterConfig]:
    return {
        (spec.id, replica.id): AdapterConfig(
            engine=spec.engine,
            base_url=replica.url,
            model=spec.engine_name(spec.models[0]),
            models=tuple(spec.engine_name(m) for m in spec.models),
            replica_id=replica.id,
            api=spec.api,  # type: ignore[arg-type]
            read_timeout_s=spec.read_timeout_s,
            first_token_timeout_s=spec.first_token_timeout_s,
            ctx_max=spec.ctx_max,
            options={**spec.options, **replica.options},
        )
        for spec in specs
        for replica in spec.replicas
    }


def build_tracer(settings: Settings) -> Tracer | None:
    """OpenTelemetry's job spans when an OTLP endpoint is configured; None (nothing loaded) otherwise."""
    t = settings.tracing
    return None if t.otlp_endpoint is None else Tracer(endpoint=t.otlp_endpoint, service_name=t.service_name)


def build_store(settings: Settings) -> StateStore:
    """The state backend `state_url` names: in this process's memory, or shared in Redis."""
    if settings.state_url.startswith(("redis://", "rediss://")):
        from orchestratord.state.redis import RedisStore  # lazy: the embedded default never loads redis
        from orchestratord.state.redis_client import RedisOptions

        r = settings.redis
        return RedisStore(
            settings.state_url,
            queue_policy(settings),
            retention_s=settings.stream.retention_s,
            options=RedisOptions(
                key_prefix=r.key_prefix,
                cluster=r.cluster,
                lease_ttl_s=r.lease_ttl_s,
                timeout_s=r.timeout_s,
                max_connections=r.max_connections,
            ),
            tenant_max_concurrent={t.id: t.max_concurrent for t in settings.tenants if t.max_concurrent},
            unread_within_s=settings.stream.attach_timeout_s,
        )
    return MemoryStore(queue_policy(settings), retention_s=settings.stream.retention_s)


def build_heap_trim(settings: Settings, store: StateStore) -> HeapTrim | None:
    """Memory held by the embedded backend's retention goes back to the system after its purge; with
    shared state, retention lives in Redis, not here."""
    if store.shared is not None or settings.memory.trim_interval_s == 0:
        return None
    return HeapTrim(malloc_trim(), interval_s=settings.memory.trim_interval_s)


def tenant_label(settings: Settings) -> Callable[[str], str]:
    """Tenant names appear in metric labels as they are only where /metrics is as protected as the
    rest of the API (it needs a key, or there are no keys at all); an open /metrics beside keyed
    tenants gets their hashes instead (`metrics.hashed_tenant`)."""
    keyed = bool(settings.auth.keys)
    return hashed_tenant if keyed and "/metrics" in settings.auth.open_paths else str


def build_services(settings: Settings, adapters: AdapterHost) -> Services:
    store = build_store(settings)
    b = settings.breaker
    breaker = BreakerPolicy(threshold=b.failures, backoff_s=b.backoff_s, max_backoff_s=b.max_backoff_s)
    registry = PoolRegistry(settings.pool_specs(), leases=store.leases, breaker=breaker)
    metrics = Metrics(
        tenant_label=tenant_label(settings), tenant_weights={t.id: t.weight for t in settings.tenants}
    )
    control = build_control_plane(settings, store)
    runs = Runs()
    # with shared state the slots are read within a tick too (admission.SHARED_SNAPSHOT_AGE_S); the
    # embedded backend reuses release times only while its runs and measures stay as they were
    outlook = Outlook(registry, runs, releases_age_s=SHARED_SNAPSHOT_AGE_S, releases_exact=not store.shared)
    endings = Endings(store, registry, metrics)
    reachability = Reachability()
    jobs = JobControl(store, endings, outlook)
    presence = Presence(
        store,
        jobs,
        attach_timeout_s=settings.stream.attach_timeout_s,
        grace_s=settings.stream.reconnect_grace_s,
        shared=store.shared,
    )
    housekeeper = Housekeeper(
        store, outlook, endings, metrics, reachability, shared=store.shared, presence=presence,
        max_wait_s=settings.queue.max_wait_s, unready_limit_s=settings.queue.unready_limit_s,
        heap=build_heap_trim(settings, store), holdback=settings.queue.holdback,
    )  # fmt: skip
    placer = Placer(
        registry, outlook, endings, metrics,
        hooks=control.gate, shared=store.shared, holdback=settings.queue.holdback,
    )  # fmt: skip
    execution = Execution(
        store, registry, adapters, metrics, runs=runs, outlook=outlook, endings=endings, placer=placer,
        config=RunConfig(metrics_interval_s=settings.stream.metrics_interval_s),
        tracer=build_tracer(settings),
    )  # fmt: skip
    dispatcher = Dispatcher(
        store, registry,
        runs=runs, outlook=outlook, endings=endings, placer=placer, execution=execution,
        housekeeper=housekeeper, reachability=reachability,
        config=DispatchConfig(
            tenant_max_concurrent={t.id: t.max_concurrent for t in settings.tenants if t.max_concurrent},
            heartbeat_s=settings.redis.heartbeat_s,
            holdback=settings.queue.holdback,
        ),
        shared=store.shared,
    )  # fmt: skip
    metrics.watch_pools(lambda: outlook.snapshots)
    max_lag = settings.limits.max_loop_lag_ms
    lag = LoopLag(
        None if max_lag is None else max_lag / 1000, probe=store.ping if store.shared is not None else None
    )
    metrics.loop_lag.set_function(lambda: lag.behind_s)
    admission = Admission(
        store, registry, outlook, endings, dispatcher.wake, presence, metrics, queue_policy(settings),
        max_tokens=settings.limits.max_tokens,
        tenant_limits={t.id: TenantLimits(t.rps, t.burst) for t in settings.tenants},
        checks=[control.gate],
        shared=store.shared,
        unready_limit_s=settings.queue.unready_limit_s,
        max_wait_s=settings.queue.max_wait_s,
        lag=lag,
    )  # fmt: skip
    prober = HealthProber(
        registry,
        adapters,
        interval_s=settings.health_interval_s,
        max_backoff_s=settings.health_max_backoff_s or settings.health_interval_s,
    )
    pools = PoolOps(
        registry, adapters, runs=runs, endings=endings, housekeeper=housekeeper, wake=dispatcher.wake,
        shared=store.shared,
    )  # fmt: skip
    # A key never outlives the finished job it names.
    window = min(settings.idempotency_window_s, settings.stream.retention_s)
    idempotency = Idempotency(store, admission, outlook, window_s=window)
    return Services(
        settings, store, registry, adapters, runs, outlook, endings, dispatcher, admission, jobs,
        presence, prober, metrics, pools, idempotency=idempotency, control=control, lag=lag,
    )  # fmt: skip


def create_app(settings: Settings, *, adapters: AdapterHost | None = None) -> FastAPI:
    """Build the app. Services are built and started in the lifespan and kept on `app.state.services`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        host = adapters or AdapterHost(adapter_configs(settings.pool_specs()))
        services = build_services(settings, host)
        app.state.services = services
        await services.control.catalog.open()
        await services.prober.probe_all()
        services.prober.start()
        services.lag.start()
        services.dispatcher.start()
        services.pools.start()
        await services.outlook.refresh()
        log.info(
            "orchestratord_started",
            pools=[p.id for p in settings.pools],
            state_url=redact_url(settings.state_url),
        )
        try:
            yield
        finally:
            if not services.shutdown.is_set():
                await drain_and_stop(services)
            await services.dispatcher.stop()
            await services.prober.stop()
            await services.lag.stop()
            await services.presence.aclose()
            await services.pools.aclose()
            await host.aclose()
            await services.store.aclose()
            await services.control.catalog.aclose()
            log.info("orchestratord_stopped")

    app = FastAPI(title="orchestratord", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.started_at = time.time()
    app.state.settings = settings
    # Data plane: client keys (and admin); control plane: admin keys; probes and metrics: open by default.
    data_plane = (
        tasks, stream, sessions, capabilities,
        openai_routes, openai_responses, openai_embeddings, openai_tokenize, openai_websocket,
    )  # fmt: skip
    for module in data_plane:
        app.include_router(module.router, **guard("client"))
    for module in (catalog, pools, task_list, ui):
        app.include_router(module.router, **guard("admin"))
    app.include_router(ops.router, **guard_ops())
    app.include_router(ui.page_router)
    errors.install(app)
    middleware.install(
        app, max_body_bytes=settings.limits.max_body_bytes, max_header_bytes=settings.limits.max_header_bytes
    )
    app.openapi = lambda: contract_document()  # type: ignore[method-assign]
    return app
