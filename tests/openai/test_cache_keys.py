"""OpenAI's `prompt_cache_key` and `safety_identifier`, sent by the official SDK: accepted on every
surface; requests that share a cache key go back to the replica the key's last job ran on (its
prefix may still be in that KV cache), across Chat Completions and Responses, per tenant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai

from tests.api.helpers import wait_for
from tests.control.helpers import ACME_KEY, GLOBEX_KEY, KEYS, admitted, client
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import sdk

ServerFactory = Callable[..., LoopbackServer]
POOL = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}, {"id": "r1"}],
        "slots": 1, "options": {"tokens_per_s": 50}}  # fmt: skip


def _replica(http: httpx.Client, job_id: str) -> str:
    replica: str = http.get(f"/v1/tasks/{job_id}").json()["replica_id"]
    return replica


def _chat(client: openai.OpenAI, **extra: Any) -> str:
    """A whole chat completion with `extra` fields; the id of its job."""
    raw = client.chat.completions.with_raw_response.create(
        model="mock", messages=[{"role": "user", "content": "the same long prefix"}], max_tokens=3, **extra
    )
    return raw.headers["x-job-id"]


def _response(client: openai.OpenAI, **extra: Any) -> str:
    raw = client.responses.with_raw_response.create(
        model="mock", input="the same long prefix", max_output_tokens=3, **extra
    )
    return raw.headers["x-job-id"]


def _idle(server: LoopbackServer) -> bool:
    return not server.call(server.app.state.services.registry.leases.all())


def _ran_on(http: httpx.Client, server: LoopbackServer, job_id: str) -> str:
    """The replica a whole request's job ran on, once its slot is free again (the client has its answer
    a moment before the slot is given back), so that the next placement sees both replicas free."""
    wait_for(lambda: _idle(server))
    return _replica(http, job_id)


def _on_r1_while_r0_is_busy(http: httpx.Client, server: LoopbackServer, place: Callable[[], str]) -> None:
    """Run `place` (a job) while a long job holds r0, so that it lands on r1; then free r0."""
    blocker = admitted(http, max_tokens=3000)
    wait_for(lambda: http.get(blocker["status_url"]).json()["state"] == "running")
    assert _replica(http, blocker["job_id"]) == "r0"
    assert _replica(http, place()) == "r1"
    http.post(f"/v1/tasks/{blocker['job_id']}/cancel")
    wait_for(lambda: _idle(server))


def test_requests_sharing_a_prompt_cache_key_go_back_to_its_replica(make_server: ServerFactory) -> None:
    server = make_server(pools=[POOL])
    sdk_client = sdk(server)
    with client(server) as http:
        _on_r1_while_r0_is_busy(
            http, server, lambda: _chat(sdk_client, prompt_cache_key="agent-7", safety_identifier="user-1234")
        )
        # Both replicas free: a job without the key goes to r0 (least loaded, then by id), the key's to r1,
        # through either surface; the dispatch event says the job runs where its key's last one did.
        assert _ran_on(http, server, _chat(sdk_client)) == "r0"
        again = _response(sdk_client, prompt_cache_key="agent-7", safety_identifier="user-1234")
        assert _ran_on(http, server, again) == "r1"
        dispatch = next(
            e.data for e in read_events(http, f"/v1/tasks/{again}/stream") if "replica_id" in e.data
        )
        assert (dispatch["replica_id"], dispatch["kv_warmth"]) == ("r1", True)
        assert _ran_on(http, server, _chat(sdk_client, prompt_cache_key="agent-7")) == "r1"
        # Another key is not this one's.
        assert _ran_on(http, server, _chat(sdk_client, prompt_cache_key="agent-8")) == "r0"


def test_a_cache_key_is_the_tenants_own(make_server: ServerFactory) -> None:
    """Two tenants' `agent-7` are two keys: one tenant's requests do not steer the other's."""
    server = make_server(pools=[POOL], auth={"keys": KEYS})
    acme = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=ACME_KEY, max_retries=0)
    globex = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=GLOBEX_KEY, max_retries=0)
    with client(server, ACME_KEY) as http:
        _on_r1_while_r0_is_busy(http, server, lambda: _chat(acme, prompt_cache_key="agent-7"))
    with client(server, GLOBEX_KEY) as http:
        assert _replica(http, _chat(globex, prompt_cache_key="agent-7")) == "r0"


def test_the_new_identifiers_are_checked_like_user(server: LoopbackServer) -> None:
    """An empty or oversized `safety_identifier` or `prompt_cache_key` is a 400 naming it."""
    for field, value in [("safety_identifier", ""), ("prompt_cache_key", "k" * 257)]:
        try:
            _chat(sdk(server), **{field: value})
        except openai.BadRequestError as refused:
            assert refused.body["param"] == field, refused.body  # type: ignore[index]
        else:
            raise AssertionError(f"{field}={value[:8]!r} was accepted")
