"""OpenAI's `prompt_cache_key` and `safety_identifier`, sent by the official SDK: accepted on every
surface; requests that share a cache key go back to the replica the key's last job ran on (its
prefix may still be in that KV cache), across Chat Completions and Responses, per tenant."""

from __future__ import annotations

from collections.abc import Callable

import openai

from tests.control.helpers import ACME_KEY, GLOBEX_KEY, KEYS, client
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.placing import POOL, chat, on_r1_while_r0_is_busy, ran_on, replica_of, response
from tests.openai.pools import sdk

ServerFactory = Callable[..., LoopbackServer]


def test_requests_sharing_a_prompt_cache_key_go_back_to_itsreplica_of(make_server: ServerFactory) -> None:
    server = make_server(pools=[POOL])
    sdk_client = sdk(server)
    with client(server) as http:
        on_r1_while_r0_is_busy(
            http, server, lambda: chat(sdk_client, prompt_cache_key="agent-7", safety_identifier="user-1234")
        )
        # Both replicas free: a job without the key goes to r0 (least loaded, then by id), the key's to r1,
        # through either surface; the dispatch event says the job runs where its key's last one did.
        assert ran_on(http, server, chat(sdk_client)) == "r0"
        again = response(sdk_client, prompt_cache_key="agent-7", safety_identifier="user-1234")
        assert ran_on(http, server, again) == "r1"
        dispatch = next(
            e.data for e in read_events(http, f"/v1/tasks/{again}/stream") if "replica_id" in e.data
        )
        assert (dispatch["replica_id"], dispatch["kv_warmth"]) == ("r1", True)
        assert ran_on(http, server, chat(sdk_client, prompt_cache_key="agent-7")) == "r1"
        # Another key is not this one's.
        assert ran_on(http, server, chat(sdk_client, prompt_cache_key="agent-8")) == "r0"


def test_a_cache_key_is_the_tenants_own(make_server: ServerFactory) -> None:
    """Two tenants' `agent-7` are two keys: one tenant's requests do not steer the other's."""
    server = make_server(pools=[POOL], auth={"keys": KEYS})
    acme = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=ACME_KEY, max_retries=0)
    globex = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=GLOBEX_KEY, max_retries=0)
    with client(server, ACME_KEY) as http:
        on_r1_while_r0_is_busy(http, server, lambda: chat(acme, prompt_cache_key="agent-7"))
    with client(server, GLOBEX_KEY) as http:
        assert replica_of(http, chat(globex, prompt_cache_key="agent-7")) == "r0"


def test_the_new_identifiers_are_checked_like_user(server: LoopbackServer) -> None:
    """An empty or oversized `safety_identifier` or `prompt_cache_key` is a 400 naming it."""
    for field, value in [("safety_identifier", ""), ("prompt_cache_key", "k" * 257)]:
        try:
            chat(sdk(server), **{field: value})
        except openai.BadRequestError as refused:
            assert refused.body["param"] == field, refused.body  # type: ignore[index]
        else:
            raise AssertionError(f"{field}={value[:8]!r} was accepted")
