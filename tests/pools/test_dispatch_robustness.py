"""The dispatch path when things go wrong: jobs only some pools fit, pools that drain or change model
under queued jobs, client-caused engine errors, failover records, crashes between queue and run,
engines that do not take a cancel, drains racing a dispatch, and stopping with runs in flight.

Every test runs orchestratord under real uvicorn on loopback; a few wrap one piece of the running
service (an adapter, the placement hooks, the store's `start`) to reach a window no request can."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from orchestratord.core.tasks import TaskSpec
from orchestratord.shutdown import drain_and_stop
from tests.api.helpers import state_of, submit, wait_for
from tests.control.helpers import ACME_KEY, ADMIN_KEY, KEYS
from tests.fakes.engines.llamacpp import MODEL as LLAMA_MODEL
from tests.fakes.engines.llamacpp import LlamaCppEngine
from tests.fakes.engines.server import serve
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.pools.test_pools_e2e import leases, pool, stats
from worker_adapters.base import SubmitRequest, TokenEvent, WorkerAdapter, WorkerHealth, WorkerProps

ServerFactory = Callable[..., LoopbackServer]
HANG = "[[mock hang]]"
# Long enough for several dispatch passes (one per admission, one per 0.25 s tick) to have run.
SEVERAL_PASSES_S = 0.6


def services(server: LoopbackServer) -> Any:
    return server.app.state.services


@contextmanager
def http(server: LoopbackServer, key: str | None = None) -> Iterator[httpx.Client]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as client:
        yield client


def hold(client: httpx.Client, pool_id: str) -> dict[str, Any]:
    """A job that holds one slot of `pool_id` until it is canceled."""
    pin = {"mode": "pin", "pin_pool_id": pool_id}
    job = submit(client, prompt=HANG, cancel_on_disconnect=False, placement=pin)
    wait_for(lambda: state_of(client, job["job_id"]) == "running")
    return job


def ended(client: httpx.Client, job: dict[str, Any], state: str = "failed") -> None:
    """Wait until the job is in `state` (before reading a stream that would otherwise wait for ever)."""
    wait_for(lambda: state_of(client, job["job_id"]) == state)


def status(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = client.get(job["status_url"]).json()
    return data


def rejected(client: httpx.Client, reason: str) -> float:
    """tasks_rejected_total for `reason`, summed over engines, as scraped."""
    pattern = re.compile(r'^tasks_rejected_total\{[^}]*reason="' + reason + r'"[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(client.get("/metrics").text))


def failed_logs(logs: list[Any], job_id: str) -> list[Any]:
    return [e for e in logs if e["event"] == "task_failed" and e.get("job_id") == job_id]


# -- a job only some pools fit waits for them --------------------------------------------------------


@pytest.mark.parametrize(
    ("small", "body"),
    [
        ({"ctx_max": 64}, {"prompt": "word " * 80, "max_tokens": 5}),  # ~100 prompt tokens
        ({"max_tokens_out": 8}, {"prompt": "hi", "max_tokens": 16}),
    ],
    ids=["context", "max_tokens_out"],
)
def test_a_job_only_a_busy_pool_fits_waits_for_it_and_runs_there(
    make_server: ServerFactory, small: dict[str, Any], body: dict[str, Any]
) -> None:
    server = make_server(pools=[pool("small", slots=1, **small), pool("big", slots=1)])
    with http(server) as client:
        blocker = hold(client, "big")
        job = submit(client, cancel_on_disconnect=False, **body)
        time.sleep(SEVERAL_PASSES_S)  # none of them may end it or run it on the pool it does not fit
        assert state_of(client, job["job_id"]) == "queued"
        assert stats(server, "small", "r0").started == 0
        client.post(f"/v1/tasks/{blocker['job_id']}/cancel")
        events = read_events(client, job["sse_url"])
        final = status(client, job)
    assert events[-1].event == "end" and events[-1].data["tokens_out"] == body["max_tokens"]
    assert final["state"] == "succeeded" and final["pool_id"] == "big"
    assert stats(server, "small", "r0").started == 0


# -- queued jobs no pool can take any more end -------------------------------------------------------


def test_drain_ends_the_queued_jobs_only_that_pool_could_take(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool("a", models=["mock", "solo"], slots=1), pool("b", slots=1)])
    with http(server) as client, capture_logs() as logs:
        hold(client, "a")
        b_blocker = hold(client, "b")
        shared = submit(client, cancel_on_disconnect=False)  # both pools serve `mock`
        solo = submit(client, model_ref="solo", cancel_on_disconnect=False)  # only `a` serves it
        drained = client.post("/v1/pools/a/drain", json={"deadline_ms": 60_000})
        assert drained.status_code == 202
        ended(client, solo)
        solo_events = read_events(client, solo["sse_url"])
        assert state_of(client, shared["job_id"]) == "queued"
        client.post(f"/v1/tasks/{b_blocker['job_id']}/cancel")
        shared_events = read_events(client, shared["sse_url"])
        final = status(client, shared)
        count = rejected(client, "POOL_UNAVAILABLE")
    error = solo_events[-1]
    assert error.event == "error" and error.data["code"] == "POOL_UNAVAILABLE"
    assert error.data["retriable"] is True and error.data["pool_id"] == "a" and "'a'" in error.data["message"]
    assert shared_events[-1].event == "end" and final["pool_id"] == "b"
    assert count == 1
    (line,) = failed_logs(logs, solo["job_id"])
    assert line["code"] == "POOL_UNAVAILABLE" and line["pool_id"] == "a" and line["model_ref"] == "solo"


def test_reload_ends_the_queued_jobs_for_a_model_no_pool_serves_any_more(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool(slots=1, options={"loadable": "mock,mock-v2"})])
    with http(server) as client:
        running = hold(client, "default")
        waiting = submit(client, cancel_on_disconnect=False)
        done = client.post("/v1/pools/default/reload", json={"new_model_ref": "mock-v2"})
        assert done.status_code == 200
        ended(client, waiting)
        events = read_events(client, waiting["sse_url"])
        assert state_of(client, running["job_id"]) == "running"  # a running job finishes on the old model
        client.post(f"/v1/tasks/{running['job_id']}/cancel")
    assert events[-1].event == "error" and events[-1].data["code"] == "POOL_UNAVAILABLE"
    assert events[-1].data["retriable"] is True and events[-1].data["pool_id"] == "default"
    assert "no longer serves 'mock'" in events[-1].data["message"]


def test_housekeeping_ends_queued_jobs_no_pool_serves(make_server: ServerFactory) -> None:
    """The safety net, for a model that went away without a drain or reload through PoolOps."""
    server = make_server(pools=[pool(slots=1)])
    with http(server) as client:
        hold(client, "default")
        waiting = submit(client, cancel_on_disconnect=False)
        registry = services(server).registry
        server.loop.call_soon_threadsafe(registry.set_models, "default", ("mock-v2",))
        ended(client, waiting)
        events = read_events(client, waiting["sse_url"])
    assert events[-1].event == "error" and events[-1].data["code"] == "POOL_UNAVAILABLE"
    assert events[-1].data["retriable"] is True


def test_undrain_takes_work_again_and_cancels_the_drain_deadline(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool(options={"tokens_per_s": 20})], auth={"keys": KEYS})
    with http(server, ADMIN_KEY) as admin, http(server, ACME_KEY) as acme:
        long_job = submit(admin, max_tokens=2000, cancel_on_disconnect=False)
        wait_for(lambda: state_of(admin, long_job["job_id"]) == "running")
        assert admin.post("/v1/pools/default/drain", json={"deadline_ms": 1000}).status_code == 202
        refused = acme.post("/v1/pools/default/undrain")
        undrained = admin.post("/v1/pools/default/undrain")
        time.sleep(1.5)  # past the drain's deadline
        still = state_of(admin, long_job["job_id"])
        events = read_events(admin, submit(admin)["sse_url"])
        missing = admin.post("/v1/pools/nope/undrain")
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    assert undrained.status_code == 200
    assert undrained.json()["draining"] is False and undrained.json()["ready"] is True
    assert still == "running"
    assert events[-1].event == "end"
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


# -- the circuit breaker counts only the replica's faults -------------------------------------------


def test_client_caused_engine_errors_do_not_open_the_circuit_breaker(make_server: ServerFactory) -> None:
    engine = LlamaCppEngine()
    with serve(engine) as url:
        llama = {
            "id": "llama", "engine": "llamacpp", "models": ["qwen"], "engine_model": LLAMA_MODEL,
            "replicas": [{"id": "l0", "url": url}], "slots": 2,
        }  # fmt: skip
        server = make_server(pools=[llama], health_interval_s=3600)  # no probe closes the breaker
        with http(server) as client:
            engine.behaviour.http_status = 400  # the engine refuses each request as invalid
            for _ in range(4):  # one more than the breaker's threshold
                job = submit(client, model_ref="qwen")
                ended(client, job)
                assert read_events(client, job["sse_url"])[-1].data["code"] == "INVALID_PARAMS"
            after_rejections = client.get("/v1/pools/llama/health").json()
            engine.behaviour.http_status = 503  # now the engine itself is unavailable
            for _ in range(3):
                read_events(client, submit(client, model_ref="qwen")["sse_url"])
            after_outages = client.get("/v1/pools/llama/health").json()
    assert after_rejections["ready"] is True, "the client's invalid requests say nothing about the replica"
    assert after_outages["ready"] is False, "the replica's own failures still open its breaker"


# -- failover: the record and cancels -------------------------------------------------------------


class Hooks:
    """Wraps the placement hooks' session affinity (the control gate's) to act at the moment of a
    placement; installed as the gate's `affinity`."""

    def __init__(self, inner: Any, on_affinity: Callable[[TaskSpec, int], Any]) -> None:
        self._inner_affinity = inner.affinity
        self._on_affinity = on_affinity
        self.calls: dict[str, int] = {}

    async def affinity(self, spec: TaskSpec) -> tuple[str, str] | None:
        self.calls[spec.job_id] = self.calls.get(spec.job_id, 0) + 1
        await self._on_affinity(spec, self.calls[spec.job_id])
        result: tuple[str, str] | None = await self._inner_affinity(spec)
        return result


def test_a_job_canceled_between_attempts_is_not_submitted_again(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool(replicas=[{"id": "a", "options": {"refuse": True}}, {"id": "b"}])])
    svc = services(server)

    async def cancel_on_failover(spec: TaskSpec, call: int) -> None:
        if call == 2:  # the failover's placement: the client's cancel lands now
            await svc.jobs.cancel(spec.job_id, None)

    svc.control.gate.affinity = Hooks(svc.control.gate, cancel_on_failover).affinity
    with http(server) as client:
        job = submit(client)
        events = read_events(client, job["sse_url"])
        wait_for(lambda: leases(server) == 0)
    assert events[-1].event == "end" and events[-1].data["stop_reason"] == "canceled"
    assert stats(server, "default", "b").started == 0, "the canceled job never reached replica b"


def test_an_error_between_taking_a_job_and_running_it_ends_the_job(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool(slots=1)])
    svc = services(server)

    async def explode(spec: TaskSpec, call: int) -> None:
        if "[[explode]]" in spec.prompt_text:
            raise RuntimeError("a bug between the queue and the run")

    svc.control.gate.affinity = Hooks(svc.control.gate, explode).affinity
    with http(server) as client, capture_logs() as logs:
        doomed = submit(client, prompt="[[explode]] hi", cancel_on_disconnect=False)
        ended(client, doomed)
        events = read_events(client, doomed["sse_url"])
        after = read_events(client, submit(client)["sse_url"])  # the loop carries on
        count = rejected(client, "INTERNAL")
    assert events[-1].event == "error" and events[-1].data["code"] == "INTERNAL"
    assert events[-1].data["retriable"] is False
    assert after[-1].event == "end"
    assert leases(server) == 0 and count == 1
    assert [e["job_id"] for e in logs if e["event"] == "dispatch_failed"] == [doomed["job_id"]]
    (line,) = failed_logs(logs, doomed["job_id"])
    assert line["code"] == "INTERNAL" and line["tenant"] == "default"


# -- cancels reach the engine through the adapter the run uses, one failure at a time ----------------


class CancelFaults:
    """A replica's adapter whose cancels fail for the jobs in `raising` and never answer for those in
    `stuck`; everything else goes to the real adapter."""

    def __init__(self, inner: WorkerAdapter) -> None:
        self.inner = inner
        self.engine = inner.engine
        self.raising: set[str] = set()
        self.stuck: set[str] = set()

    def submit(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        return self.inner.submit(req)

    async def cancel(self, task_id: str) -> None:
        if task_id in self.raising:
            raise RuntimeError("the engine refused the cancel")
        if task_id in self.stuck:
            await asyncio.Event().wait()
        await self.inner.cancel(task_id)

    def streaming(self, within_s: float) -> bool:
        return False

    async def health(self) -> WorkerHealth:
        return await self.inner.health()

    async def props(self) -> WorkerProps:
        return await self.inner.props()

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_failing_or_stuck_engine_cancel_blocks_no_other_cancel(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool(slots=4)])
    adapters = services(server).adapters
    mock = adapters[("default", "r0")]
    faulty = CancelFaults(mock)
    adapters.rebind(("default", "r0"), faulty, adapters.config(("default", "r0")))
    with http(server) as client, capture_logs() as logs:
        stuck, broken, fine = (hold(client, "default") for _ in range(3))
        faulty.stuck.add(stuck["job_id"])
        faulty.raising.add(broken["job_id"])
        for job in (stuck, broken, fine):
            assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
        wait_for(lambda: mock.stats.canceled >= 1)  # `fine`, through the engine's own cancel
        # The other two runs are stopped from this side: `broken` at once, `stuck` when its cancel
        # times out (dispatch.cancel_timeout_s, 5 s).
        wait_for(lambda: leases(server) == 0, timeout=30)
    assert mock.stats.canceled == 3 and mock.stats.active == 0
    failures = {e["job_id"] for e in logs if e["event"] == "engine_cancel_failed"}
    assert failures == {broken["job_id"], stuck["job_id"]}


def test_a_cancel_after_a_reload_reaches_the_engine_the_job_runs_on(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool(options={"loadable": "mock,mock-v2"})])
    with http(server) as client:
        job = hold(client, "default")
        old = services(server).adapters[("default", "r0")]
        assert client.post("/v1/pools/default/reload", json={"new_model_ref": "mock-v2"}).status_code == 200
        assert services(server).adapters[("default", "r0")] is not old
        client.post(f"/v1/tasks/{job['job_id']}/cancel")
        wait_for(lambda: leases(server) == 0)
    assert old.stats.canceled == 1 and old.stats.active == 0


# -- drain ends every job on the pool, counted and logged ---------------------------------------------


def test_drain_ends_a_job_dispatched_a_moment_before_counted_and_logged(make_server: ServerFactory) -> None:
    server = make_server(pools=[pool()])
    store = services(server).store
    original = store.start
    gate = server.call(_event())

    async def start_after_the_gate(job_id: str, **placed: str) -> Any:
        await gate.wait()  # placed and leased, but its attempt has not started yet
        return await original(job_id, **placed)

    store.start = start_after_the_gate
    with http(server) as client, capture_logs() as logs:
        job = submit(client, cancel_on_disconnect=False)
        wait_for(lambda: leases(server) == 1)
        drained = client.post("/v1/pools/default/drain", json={"deadline_ms": 0})
        ended(client, job)
        server.loop.call_soon_threadsafe(gate.set)
        events = read_events(client, job["sse_url"])
        wait_for(lambda: leases(server) == 0)
        count = rejected(client, "POOL_UNAVAILABLE")
    assert drained.json()["running"] == 1
    assert events[-1].event == "error" and events[-1].data["code"] == "POOL_UNAVAILABLE"
    assert "drained" in events[-1].data["message"] and events[-1].data["retriable"] is True
    assert stats(server, "default", "r0").started == 0, "it never reached the engine"
    assert count == 1
    (line,) = failed_logs(logs, job["job_id"])
    assert line["code"] == "POOL_UNAVAILABLE" and line["pool_id"] == "default" and line["engine"] == "mock"


async def _event() -> asyncio.Event:
    return asyncio.Event()


# -- stop and shutdown ---------------------------------------------------------------------------------


def test_stopping_the_dispatcher_stops_every_run(make_server: ServerFactory) -> None:
    server = make_server()
    svc = services(server)
    with http(server) as client:
        job = hold(client, "default")
        (run,) = svc.runs.tasks([job["job_id"]])
        server.call(svc.dispatcher.stop())
    assert run.done()
    assert len(svc.runs) == 0 and leases(server) == 0


def test_queued_jobs_stay_at_shutdown_when_the_state_is_shared(make_server: ServerFactory) -> None:
    """Whether queued jobs end at shutdown is the store's `shared` capability, not its class."""
    server = make_server(pools=[pool(slots=1)])
    svc = services(server)
    svc.store.shared = object()  # as a backend other replicas share says: it offers their SharedState
    with http(server) as client:
        hold(client, "default")
        waiting = submit(client, cancel_on_disconnect=False)
        server.call(drain_and_stop(svc), timeout=30)
        assert state_of(client, waiting["job_id"]) == "queued"
