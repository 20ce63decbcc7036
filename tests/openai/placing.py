"""Where a whole OpenAI request's job ran, on a pool of two mock replicas with one slot each: the tests
of `prompt_cache_key` placement, on one process and on a Redis deployment, share these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai

from tests.api.helpers import wait_for
from tests.control.helpers import admitted
from tests.fakes.servers import LoopbackServer

POOL = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}, {"id": "r1"}],
        "slots": 1, "options": {"tokens_per_s": 50}}  # fmt: skip


def replica_of(http: httpx.Client, job_id: str) -> str:
    replica: str = http.get(f"/v1/tasks/{job_id}").json()["replica_id"]
    return replica


def chat(client: openai.OpenAI, **extra: Any) -> str:
    """A whole chat completion with `extra` fields; the id of its job."""
    raw = client.chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": "the same long prefix"}], max_tokens=3, **extra
    )
    return raw.headers["x-job-id"]


def response(client: openai.OpenAI, **extra: Any) -> str:
    raw = client.responses.with_raw_response.create(
        model="mock", input="the same long prefix", max_output_tokens=3, **extra
    )
    return raw.headers["x-job-id"]


def idle(server: LoopbackServer) -> bool:
    return not server.call(server.app.state.services.registry.leases.all())


def ran_on(http: httpx.Client, server: LoopbackServer, job_id: str) -> str:
    """The replica a whole request's job ran on, once its slot is free again (the client has its answer
    a moment before the slot is given back), so that the next placement sees both replicas free."""
    wait_for(lambda: idle(server))
    return replica_of(http, job_id)


def on_r1_while_r0_is_busy(http: httpx.Client, server: LoopbackServer, place: Callable[[], str]) -> None:
    """Run `place` (a job) while a long job holds r0, so that it lands on r1; then free r0."""
    blocker = admitted(http, max_tokens=3000)
    wait_for(lambda: http.get(blocker["status_url"]).json()["state"] == "running")
    assert replica_of(http, blocker["job_id"]) == "r0"
    assert replica_of(http, place()) == "r1"
    http.post(f"/v1/tasks/{blocker['job_id']}/cancel")
    wait_for(lambda: idle(server))
