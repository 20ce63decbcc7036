"""Sessions: created on first use, TTL and turns, GET and DELETE, scoped by tenant, and affinity:
a turn goes back to the replica of the turn before, and kv_warmth says whether it did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.control.helpers import ACME_KEY, GLOBEX_KEY, KEYS, admitted, assert_envelope, client
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

ServerFactory = Callable[..., LoopbackServer]
FIELDS = {
    "session_id", "ttl_ms_remaining", "turns", "max_turns", "kv_warmth", "pool_id", "replica_id",
    "tokens_budget_remaining", "time_budget_remaining_ms", "cost_budget_remaining",
}  # fmt: skip


def _finish(c: httpx.Client, job: dict[str, Any]) -> list[Any]:
    events = read_events(c, job["sse_url"])
    assert events[-1].event == "end"
    return events


def test_a_session_is_created_on_first_use_and_counts_its_turns(make_server: ServerFactory) -> None:
    server = make_server()
    with client(server) as c:
        assert_envelope(c.get("/v1/sessions/chat-1"), 404, "NOT_FOUND")
        _finish(c, admitted(c, session_id="chat-1", max_tokens=3))
        first = c.get("/v1/sessions/chat-1").json()
        assert set(first) == FIELDS
        assert (first["session_id"], first["turns"], first["max_turns"]) == ("chat-1", 1, 8)
        assert 0 < first["ttl_ms_remaining"] <= 600_000
        assert first["kv_warmth"] is False and (first["pool_id"], first["replica_id"]) == ("default", "r0")
        assert first["tokens_budget_remaining"] is None and first["cost_budget_remaining"] is None
        _finish(c, admitted(c, session_id="chat-1", max_tokens=3))
        second = c.get("/v1/sessions/chat-1").json()
        assert second["turns"] == 2 and second["kv_warmth"] is True


def test_ttl_is_configurable_and_an_expired_session_starts_afresh(make_server: ServerFactory) -> None:
    server = make_server(sessions={"ttl_s": 1.0, "max_turns": 3})
    with client(server) as c:
        _finish(c, admitted(c, session_id="brief", max_tokens=2))
        info = c.get("/v1/sessions/brief").json()
        assert 0 < info["ttl_ms_remaining"] <= 1000 and info["max_turns"] == 3
        wait_for(lambda: c.get("/v1/sessions/brief").status_code == 404, timeout=15)
        _finish(c, admitted(c, session_id="brief", max_tokens=2))
        assert c.get("/v1/sessions/brief").json()["turns"] == 1


def test_delete_ends_a_session(make_server: ServerFactory) -> None:
    server = make_server()
    with client(server) as c:
        _finish(c, admitted(c, session_id="gone", max_tokens=2))
        assert c.delete("/v1/sessions/gone").status_code == 204
        assert_envelope(c.get("/v1/sessions/gone"), 404, "NOT_FOUND")
        assert_envelope(c.delete("/v1/sessions/gone"), 404, "NOT_FOUND")
        assert_envelope(c.get("/v1/sessions/" + "x" * 129), 400, "INVALID_PARAMS")


def test_sessions_are_scoped_by_tenant(make_server: ServerFactory) -> None:
    server = make_server(auth={"keys": KEYS})
    with client(server, ACME_KEY) as acme, client(server, GLOBEX_KEY) as globex:
        _finish(acme, admitted(acme, session_id="chat", max_tokens=2))
        _finish(acme, admitted(acme, session_id="chat", max_tokens=2))
        assert_envelope(globex.get("/v1/sessions/chat"), 404, "NOT_FOUND")
        assert_envelope(globex.delete("/v1/sessions/chat"), 404, "NOT_FOUND")
        _finish(globex, admitted(globex, session_id="chat", max_tokens=2))
        assert globex.get("/v1/sessions/chat").json()["turns"] == 1
        assert acme.get("/v1/sessions/chat").json()["turns"] == 2


def _leases(server: LoopbackServer) -> int:
    return len(server.call(server.app.state.services.registry.leases.all()))


def _replica(c: httpx.Client, job: dict[str, Any]) -> str:
    replica: str = c.get(job["status_url"]).json()["replica_id"]
    return replica


def test_affinity_sends_a_turn_back_to_its_replica_and_kv_warmth_says_so(
    make_server: ServerFactory,
) -> None:
    pool = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}, {"id": "r1"}]}
    server = make_server(pools=[{**pool, "slots": 1, "options": {"tokens_per_s": 50}}])
    with client(server) as c:
        running = lambda job: c.get(job["status_url"]).json()["state"] == "running"  # noqa: E731
        # Turn 1 lands on r1, because r0 is busy.
        blocker = admitted(c, max_tokens=3000)
        wait_for(lambda: running(blocker))
        assert _replica(c, blocker) == "r0"
        turn1 = admitted(c, session_id="s", max_tokens=3)
        _finish(c, turn1)
        assert _replica(c, turn1) == "r1"
        assert c.get("/v1/sessions/s").json()["kv_warmth"] is False
        assert c.post(f"/v1/tasks/{blocker['job_id']}/cancel").status_code == 204
        wait_for(lambda: _leases(server) == 0)

        # Both replicas free: without affinity a job goes to r0 (least loaded, then by id) ...
        turn2 = admitted(c, session_id="s", max_tokens=3)
        events = _finish(c, turn2)
        dispatch = next(e for e in events if e.event == "metrics" and "replica_id" in e.data)
        assert (dispatch.data["replica_id"], dispatch.data["kv_warmth"]) == ("r1", True)
        assert c.get("/v1/sessions/s").json()["kv_warmth"] is True
        plain = admitted(c, max_tokens=3)
        _finish(c, plain)
        assert _replica(c, plain) == "r0", "... so r1 was the session's affinity"

        # The affine replica is busy: the turn runs elsewhere, cold.
        on_r0 = admitted(c, max_tokens=3000)
        wait_for(lambda: running(on_r0))
        on_r1 = admitted(c, max_tokens=3000)
        wait_for(lambda: running(on_r1))
        assert (_replica(c, on_r0), _replica(c, on_r1)) == ("r0", "r1")
        c.post(f"/v1/tasks/{on_r0['job_id']}/cancel")
        wait_for(lambda: _leases(server) == 1)
        turn3 = admitted(c, session_id="s", max_tokens=3)
        _finish(c, turn3)
        info = c.get("/v1/sessions/s").json()
        assert (info["replica_id"], info["kv_warmth"], info["turns"]) == ("r0", False, 3)
        c.post(f"/v1/tasks/{on_r1['job_id']}/cancel")
