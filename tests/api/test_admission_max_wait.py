"""A job predicted to wait longer than its class may (`queue.max_wait_s`) is refused at once with 429
`max-wait` and a retry hint, rather than admitted to be failed from the queue later; nothing is stored
for it, and the jobs admitted before it all end."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from orchestratord.outlook import MIN_SAMPLES
from tests.api.helpers import admit, post, wait_for
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.observability.exposition import contract_problems, load_lint


def test_a_job_predicted_to_wait_past_its_classs_limit_is_refused_with_429(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(
        pools=[mock_pool(slots=1, options={"ttft_ms": 2000})], queue={"max_wait_s": {"interactive": 5}}
    )
    services = server.app.state.services
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        read_events(client, f"/v1/tasks/{admit(client)}/stream")  # measures a ~2 s service time
        running = admit(client)
        wait_for(lambda: client.get(f"/v1/tasks/{running}").json()["state"] == "running")
        # Behind the running job, on the one slot of ~2 s: the first starts in ~2 s, the second in ~4 s.
        queued = [admit(client), admit(client)]
        # A third would start in ~6 s, later than an interactive job may wait: it would only be failed
        # from the queue. Refused at once, though housekeeping may not have read the queue since.
        refused = post(client)
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["code"] == "ADMISSION_REJECT" and body["policy_label"] == "max-wait", body
        assert body["retriable"] is True
        assert "queue.max_wait_s" in body["message"] and "2 jobs ahead" in body["message"], body
        assert int(refused.headers["retry-after"]) >= 1
        assert len(server.call(services.store.queued())) == 2  # nothing was stored for it
        # The batch class has no limit: it is admitted behind them.
        batch = post(client, priority="batch")
        assert batch.status_code == 202, batch.text
        assert client.post(f"/v1/tasks/{batch.json()['job_id']}/cancel").status_code == 204
        ended = [read_events(client, f"/v1/tasks/{job}/stream")[-1].event for job in [running, *queued]]
    assert ended == ["end"] * 3  # every admitted job started within its class's limit
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert 'admission_backpressure_events_total{engine="mock",policy="max-wait"} 1.0' in metrics
    assert contract_problems(metrics, load_lint()) == []  # `max-wait` is one of the contract's policies


@pytest.mark.parametrize(
    ("limit", "code"),
    [({}, "POOL_UNAVAILABLE"), ({"deadline_ms": 900}, "DEADLINE_UNMET")],
    ids=["max_wait", "deadline"],
)
def test_jobs_that_outwaited_the_queue_make_admission_refuse_the_next_one(
    make_server: Callable[..., LoopbackServer], limit: dict[str, int], code: str
) -> None:
    """Admitted jobs that the queue then failed at `queue.max_wait_s`, or at their deadline, were
    promised starts they never got: the next admission counts them as late as they waited, and
    refuses a job it would otherwise have promised the same start."""
    server = make_server(
        pools=[mock_pool(slots=1, options={"ttft_ms": 20})], queue={"max_wait_s": {"interactive": 1}}
    )
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(3):  # measures a short service time
            read_events(client, f"/v1/tasks/{admit(client)}/stream")
        holder = admit(client, prompt="[[mock hang]] hold")  # the slot never comes free
        wait_for(lambda: client.get(f"/v1/tasks/{holder}").json()["state"] == "running")
        # Each is promised a start within the second (the slot's measured service is short), and
        # waits out the second in the queue.
        promised = [post(client, **limit) for _ in range(MIN_SAMPLES)]
        assert [r.status_code for r in promised] == [202] * MIN_SAMPLES, [r.text for r in promised]
        assert all(0 < r.json()["predicted_start_ms"] < 1000 for r in promised), [r.json() for r in promised]
        ends = [read_events(client, r.json()["sse_url"])[-1] for r in promised]
        assert {(e.event, e.data["code"]) for e in ends} == {("error", code)}
        refused = post(client)
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["policy_label"] == "max-wait", body
        assert "as late as recent starts came" in body["message"], body
        assert client.post(f"/v1/tasks/{holder}/cancel").status_code == 204
