"""/ui/events against the contract's `UiSnapshot`: schemathesis cannot test an endless stream (it is
excluded there, with this file as the reason), so this reads real snapshots of a server with jobs
queued, running and finished, for two tenants, and validates each one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.helpers import HANG, admit, state_of, wait_for
from tests.contract.test_sse_events import _validator
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import parse_frames

SNAPSHOT = _validator("UiSnapshot")
KEYS = {"acme": "acme-key-0123456789", "beta": "beta-key-0123456789", "ops": "ops-key-01234567890"}


@pytest.fixture
def served(make_server: Callable[..., LoopbackServer]) -> LoopbackServer:
    return make_server(
        auth={"keys": [
            {"key": KEYS["acme"], "tenant": "acme"},
            {"key": KEYS["beta"], "tenant": "beta"},
            {"key": KEYS["ops"], "tenant": "ops", "role": "admin"},
        ]},
        tenants=[{"id": "acme", "weight": 3}, {"id": "beta", "weight": 1}],
        pools=[{"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}],
                "slots": 1}],
        ui={"interval_s": 0.2},
    )  # fmt: skip


def as_(who: str, server: LoopbackServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {KEYS[who]}"}, timeout=30
    )


def snapshots(client: httpx.Client, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with client.stream("GET", "/ui/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        for item in parse_frames(stream.iter_lines()):
            if isinstance(item, str):
                continue
            assert item.event == "snapshot", item
            out.append(item.data)
            if len(out) == count:
                return out
    return out


def test_snapshots_conform_and_show_the_queue_and_the_shares(served: LoopbackServer) -> None:
    with as_("acme", served) as acme, as_("beta", served) as beta, as_("ops", served) as ops:
        first = admit(beta, max_tokens=3)
        wait_for(lambda: state_of(beta, first) == "succeeded")
        running = admit(acme, prompt=HANG, max_tokens=4000)
        wait_for(lambda: state_of(acme, running) == "running")
        waiting = admit(beta, max_tokens=3)
        snap = snapshots(ops, 2)[-1]
        for s in (snap,):
            errors = sorted(SNAPSHOT.iter_errors(s), key=str)
            assert not errors, json.dumps(s)[:2000] + "\n" + "\n".join(e.message for e in errors)
        assert [j["job_id"] for j in snap["running"]] == [running]
        assert snap["running"][0]["tenant"] == "acme" and snap["running"][0]["in_state_s"] >= 0
        assert [(j["job_id"], j["queue_position"]) for j in snap["queued"]] == [(waiting, 0)]
        shares = {t["tenant"]: t for t in snap["shares"]["tenants"]}
        assert set(shares) == {"acme", "beta"}
        assert shares["acme"]["weight"] == 3 and shares["acme"]["entitled"] == 0.75
        assert shares["beta"]["slot_s"] > 0 and shares["acme"]["slot_s"] > 0
        assert abs(sum(t["share"] for t in shares.values()) - 1) < 0.01
        assert len(snap["shares"]["buckets"]) == 10
        pool = snap["pools"][0]
        assert pool["id"] == "default" and pool["replicas"][0]["slots_free"] == 0
        ops.post(f"/v1/tasks/{running}/cancel")
        ops.post(f"/v1/tasks/{waiting}/cancel")


def test_the_data_is_for_admins_and_the_page_loads_without_a_key(served: LoopbackServer) -> None:
    with as_("acme", served) as acme, httpx.Client(base_url=served.base_url) as anonymous:
        refused = acme.get("/ui/events")
        assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
        assert anonymous.get("/ui/events").status_code == 401
        page = anonymous.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_off_answers_404_saying_how_to_turn_it_on(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(ui={"enabled": False})
    with httpx.Client(base_url=server.base_url) as client:
        for path in ("/ui", "/ui/events"):
            response = client.get(path)
            assert response.status_code == 404 and "ui.enabled" in response.json()["message"], path
