"""Three `orchestratord serve` processes on one Redis behave as one service: a job posted to one is
streamed from another and canceled from a third; fairness, 429s, capacity and slots hold globally.
Every test runs twice: on one Redis, and on a three-node Redis Cluster (`redis.cluster: true`, the
URL naming the first node) with a deployment whose hash slot another node holds."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from orchestratord.core.queue import FairQueue, QueueEntry, QueuePolicy
from orchestratord.core.route import Route
from orchestratord.state.redis_client import tagged
from tests.fakes.sse import Event, parse_frames, read_events
from tests.redis.conftest import Deployment, LocalCluster, RedisTarget, prefix, start_deployment

pytestmark = pytest.mark.redis
KEYS = {"acme": "acme-key-0123456789", "beta": "beta-key-0123456789", "gamma": "gamma-key-0123456789"}
ADMIN = "ops-key-0123456789ab"  # an operator's key (tenant "ops")
CAPACITY, TENANT_CAPACITY = 24, 16
HANG = "[[mock hang]] hold the only slot"


def off_the_first_node(cluster: LocalCluster) -> str:
    """A deployment prefix whose slot a node other than the first (the one state_url names) holds."""
    while (candidate := prefix()) and cluster.node_of(f"{tagged(candidate)}epoch") is cluster.nodes[0]:
        pass
    return candidate


@pytest.fixture(scope="module", params=["standalone", "cluster"])
def trio(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    target: RedisTarget = request.getfixturevalue(
        "redis_server" if request.param == "standalone" else "redis_cluster"
    )
    overrides: dict[str, Any] = {
        "auth": {"keys": [
            *({"key": key, "tenant": tenant} for tenant, key in KEYS.items()),
            {"key": ADMIN, "tenant": "ops", "role": "admin"},
        ]},
        "tenants": [
            {"id": "acme", "weight": 3},
            {"id": "beta", "weight": 1},
            {"id": "gamma", "rps": 0.2, "burst": 3},
        ],
        "queue": {"capacity": CAPACITY, "tenant_capacity": TENANT_CAPACITY},
        "pools": [
            {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 2,
             "options": {"ttft_ms": 5, "tokens_per_s": 40}},
            {"id": "solo", "engine": "mock", "models": ["solo"], "replicas": [{"id": "r0"}], "slots": 1,
             "options": {"ttft_ms": 1, "tokens_per_s": 1000}},
        ],
    }  # fmt: skip
    if isinstance(target, LocalCluster):
        overrides["key_prefix"] = off_the_first_node(target)
    with start_deployment(target, tmp_path_factory.mktemp("trio"), 3, **overrides) as deployment:
        yield deployment


def client(deployment: Deployment, i: int, tenant: str = "acme") -> httpx.Client:
    return httpx.Client(
        base_url=deployment[i].base_url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=30
    )


Clients = Callable[..., httpx.Client]


@pytest.fixture
def http(trio: Deployment) -> Iterator[Clients]:
    """`http(replica, tenant="acme")`: one client per replica and tenant, closed after the test."""
    made: dict[tuple[int, str], httpx.Client] = {}

    def get(i: int, tenant: str = "acme") -> httpx.Client:
        if (i, tenant) not in made:
            made[(i, tenant)] = client(trio, i, tenant)
        return made[(i, tenant)]

    yield get
    for c in made.values():
        c.close()


def post(c: httpx.Client, **body: Any) -> httpx.Response:
    payload = {"model_ref": "mock", "prompt": "hello", "max_tokens": 4, "cancel_on_disconnect": False, **body}
    return c.post("/v1/tasks", json=payload)


def submit(c: httpx.Client, **body: Any) -> dict[str, Any]:
    response = post(c, **body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def status(c: httpx.Client, job_id: str) -> dict[str, Any]:
    response = c.get(f"/v1/tasks/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)


def instant(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def leases_held(deployment: Deployment) -> int:
    return int(deployment.redis.client().hlen(deployment.keys("leases")))


def test_post_on_one_stream_from_another_cancel_from_a_third(trio: Deployment, http: Clients) -> None:
    a, b, c = http(0), http(1), http(2)
    job = submit(a, max_tokens=2000, cancel_on_disconnect=True)
    events: list[Event] = []
    with b.stream("GET", job["sse_url"]) as stream:
        for item in parse_frames(stream.iter_lines()):
            if isinstance(item, str):
                continue
            events.append(item)
            if sum(e.event == "token" for e in events) == 5 and item.event == "token":
                assert c.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
            if item.event in ("end", "error"):
                break
    assert c.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204, "idempotent on any replica"
    tokens = [e for e in events if e.event == "token"]
    assert events[0].event == "started" and events[-1].event == "end"
    assert events[-1].data["stop_reason"] == "canceled" and events[-1].data["tokens_out"] == len(tokens)
    time.sleep(0.5)  # the replica that runs it closes the engine request; nothing follows the end
    final = status(a, job["job_id"])
    assert final["state"] == "canceled" and final["tokens_out"] == len(tokens)
    assert final["text"] == "".join(e.data["t"] for e in tokens)
    assert [e.raw for e in read_events(c, job["sse_url"])] == [e.raw for e in events], "one log, any replica"
    resumed = read_events(a, job["sse_url"], headers={"Last-Event-ID": events[2].id or ""})
    assert [e.id for e in resumed] == [e.id for e in events[3:]], "Last-Event-ID resumes on any replica"
    wait_for(lambda: leases_held(trio) == 0, what="the canceled job's slot is released")


def test_an_operator_lists_and_stops_any_tenants_job_through_any_replica(
    trio: Deployment, http: Clients
) -> None:
    """GET /v1/tasks reads the shared registry: jobs admitted and run by other replicas, queued ones
    with their positions, finished ones until their retention ends."""
    blocker = submit(http(0), model_ref="solo", prompt=HANG)
    wait_for(lambda: status(http(0), blocker["job_id"])["state"] == "running", what="the blocker runs")
    queued = [submit(http(1, "beta"), model_ref="solo"), submit(http(2), model_ref="solo")]
    done = submit(http(1, "beta"), max_tokens=2)
    wait_for(lambda: status(http(1, "beta"), done["job_id"])["state"] == "succeeded", what="a short job ends")
    with httpx.Client(base_url=trio[2].base_url, headers={"Authorization": f"Bearer {ADMIN}"}) as ops:
        listed = ops.get("/v1/tasks", params={"model_ref": "solo", "state": ["queued", "running"]})
        assert listed.status_code == 200, listed.text
        tasks = {t["job_id"]: t for t in listed.json()["tasks"]}
        assert set(tasks) == {blocker["job_id"], *(j["job_id"] for j in queued)}
        assert (
            tasks[blocker["job_id"]]["state"] == "running" and tasks[blocker["job_id"]]["pool_id"] == "solo"
        )
        assert sorted(tasks[j["job_id"]]["queue_position"] for j in queued) == [0, 1]
        finished = ops.get("/v1/tasks", params={"state": "succeeded", "tenant": "beta"}).json()["tasks"]
        assert done["job_id"] in {t["job_id"] for t in finished}
        assert http(0, "beta").get("/v1/tasks").status_code == 403, "clients may not list"
        # the queue page's data, read through replica 1, shows the whole deployment
        with (
            httpx.Client(base_url=trio[1].base_url, headers=ops.headers, timeout=30) as page,
            page.stream("GET", "/ui/events") as stream,
        ):
            snapshot = next(e for e in parse_frames(stream.iter_lines()) if not isinstance(e, str)).data
        assert blocker["job_id"] in {j["job_id"] for j in snapshot["running"]}
        assert {j["job_id"] for j in snapshot["queued"]} == {j["job_id"] for j in queued}
        assert {t["tenant"] for t in snapshot["shares"]["tenants"]} >= {"acme", "beta"}
        # replica 2 stops the job replica 0 runs for acme
        assert ops.post(f"/v1/tasks/{blocker['job_id']}/cancel").status_code == 204
        for job in queued:
            assert ops.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
    wait_for(lambda: status(http(0), blocker["job_id"])["state"] == "canceled", what="the cancel lands")
    wait_for(lambda: leases_held(trio) == 0, what="the slot is released")


def test_fair_shares_and_the_429_contract_hold_across_replicas(trio: Deployment, http: Clients) -> None:
    blocker = submit(http(0), model_ref="solo", prompt=HANG)
    wait_for(lambda: status(http(0), blocker["job_id"])["state"] == "running", what="the blocker runs")
    arrivals: list[tuple[str, str]] = []
    # Beta's 8 first, then acme's 16, each posted to the next replica: arrival order would serve every
    # beta job first (six acme jobs behind the fair order at the eighth), weights 3:1 about 3 of 4 acme.
    for i, tenant in enumerate(["beta"] * (CAPACITY - TENANT_CAPACITY) + ["acme"] * TENANT_CAPACITY):
        arrivals.append((tenant, submit(http(i % 3, tenant), model_ref="solo", max_tokens=1)["job_id"]))
    over_tenant = post(http(2, "acme"), model_ref="solo")
    over_queue = post(http(1, "beta"), model_ref="solo")
    for refused, tenant_bound in ((over_tenant, True), (over_queue, False)):
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "ADMISSION_REJECT" and int(refused.headers["Retry-After"]) >= 1
        assert ("tenant" in refused.json()["message"]) is tenant_bound, refused.json()["message"]
    assert http(1).post(f"/v1/tasks/{blocker['job_id']}/cancel").status_code == 204
    wait_for(
        lambda: all(status(http(0, t), j)["state"] == "succeeded" for t, j in arrivals),
        what="every queued job ran",
    )
    started = sorted(arrivals, key=lambda tj: instant(status(http(0, tj[0]), tj[1])["started_at"]))
    served = [tenant for tenant, _ in started]
    expected = reference_order(arrivals)
    # When the slot frees, each replica may take the fair next job it sees; the one whose lease lands
    # first runs and the others go back to their places. So each start is one of the next three in
    # fair order, which keeps every prefix within two jobs of it (and arrival order six off).
    for k in range(1, len(served) + 1):
        assert abs(served[:k].count("acme") - expected[:k].count("acme")) <= 2, (served, expected)
    assert served[:8].count("acme") >= 5, "acme (weight 3) gets about three of every four slots"


def reference_order(arrivals: list[tuple[str, str]]) -> list[str]:
    """The order the reference fair queue serves these arrivals in, one slot at a time."""
    queue = FairQueue(QueuePolicy(capacity=CAPACITY, tenant_weights={"acme": 3.0, "beta": 1.0}))
    for tenant, job_id in arrivals:
        queue.enqueue(QueueEntry(job_id, tenant, "interactive", Route("solo")))
    order = []
    while (entry := queue.take(lambda key: True)) is not None:
        order.append(entry.tenant)
    return order


def test_a_rate_limit_is_one_bucket_for_all_replicas(http: Clients) -> None:
    responses = [post(http(i % 3, "gamma"), max_tokens=1) for i in range(4)]
    assert [r.status_code for r in responses] == [202, 202, 202, 429], [r.text for r in responses]
    refused = responses[-1].json()
    assert refused["code"] == "ADMISSION_REJECT" and refused["policy_label"] == "rate-limit"
    assert int(responses[-1].headers["Retry-After"]) >= 1


@pytest.mark.parametrize("seed", [11, 12])
def test_capacity_is_never_exceeded_under_concurrent_posts_to_every_replica(
    trio: Deployment, http: Clients, seed: int
) -> None:
    rng = random.Random(seed)
    blocker = submit(http(0), model_ref="solo", prompt=HANG)
    wait_for(lambda: status(http(0), blocker["job_id"])["state"] == "running", what="the blocker runs")
    tenants = [rng.choice(("acme", "beta")) for _ in range(rng.randint(30, 45))]
    targets = [rng.randrange(3) for _ in tenants]

    def attempt(i: int) -> tuple[str, httpx.Response]:
        with client(trio, targets[i], tenants[i]) as c:  # one client per thread
            return tenants[i], post(c, model_ref="solo", max_tokens=1)

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(attempt, range(len(tenants))))
    admitted = [(t, r.json()["job_id"]) for t, r in results if r.status_code == 202]
    refused = [r for _, r in results if r.status_code != 202]
    by_tenant = {t: min(TENANT_CAPACITY, tenants.count(t)) for t in ("acme", "beta")}
    assert len(admitted) == min(CAPACITY, sum(by_tenant.values()))
    assert all(r.status_code == 429 and r.json()["code"] == "ADMISSION_REJECT" for r in refused)
    assert trio.redis.client().hlen(trio.keys("q:entries")) == len(admitted)
    for tenant in by_tenant:
        assert sum(t == tenant for t, _ in admitted) <= TENANT_CAPACITY
    for tenant, job_id in admitted:
        assert http(rng.randrange(3), tenant).post(f"/v1/tasks/{job_id}/cancel").status_code == 204
    assert http(2).post(f"/v1/tasks/{blocker['job_id']}/cancel").status_code == 204
    wait_for(lambda: leases_held(trio) == 0, what="the slot is free again")


def test_slots_are_never_oversubscribed_across_replicas(trio: Deployment, http: Clients) -> None:
    """A job's start and end are stamped by Redis's clock inside the scripts that take its slot (the
    lease starts the job: lease_acquire.lua) and give it back (its good end releases the lease:
    finish.lua), so two jobs whose times overlap held one slot at once."""

    def run(i: int) -> str:
        with client(trio, i % 3) as c:
            return str(submit(c, max_tokens=12)["job_id"])  # 0.3 s each at the pool's 40 tokens/s

    with ThreadPoolExecutor(max_workers=8) as pool:
        job_ids = list(pool.map(run, range(12)))
    wait_for(lambda: all(status(http(1), j)["state"] == "succeeded" for j in job_ids), what="all jobs ran")
    spans = [
        (instant(s["started_at"]), instant(s["finished_at"])) for s in (status(http(2), j) for j in job_ids)
    ]
    assert all(start < end for start, end in spans)
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, peak = 0, 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 2, f"the default pool has 2 slots; {peak} jobs ran at once"
