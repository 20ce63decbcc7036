"""A background response created on one replica is streamed, resumed and canceled through another
(two `orchestratord serve` processes on one Redis), with the official OpenAI SDK: the stream dropped
mid-way on replica A and resumed with `starting_after` on replica B gives every event exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.api.helpers import HANG, wait_for
from tests.redis.conftest import RedisServer, start_deployment

pytestmark = pytest.mark.redis


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_a_response_started_on_one_replica_resumes_on_another(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with start_deployment(redis_server, tmp_path, 2) as deployment:
        a, b = sdk(deployment[0].base_url), sdk(deployment[1].base_url)
        stream = a.responses.create(
            model="mock", input="tell me", max_output_tokens=30, background=True, stream=True
        )
        seen = []
        for event in stream:
            seen.append(event)
            if event.type == "response.output_text.delta" and len(seen) >= 8:
                break  # the client's connection drops mid-stream
        stream.close()
        response_id = seen[0].response.id
        rest = list(b.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number))
        events = seen + rest
        assert [e.sequence_number for e in events] == list(range(len(events))), "each event exactly once"
        assert events[-1].type == "response.incomplete"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        final = b.responses.retrieve(response_id)
        assert final.output_text == text and final.usage is not None and final.usage.output_tokens == 30
        assert a.responses.retrieve(response_id).output_text == text


def test_a_response_is_canceled_through_another_replica(redis_server: RedisServer, tmp_path: Path) -> None:
    with start_deployment(redis_server, tmp_path, 2) as deployment:
        a, b = sdk(deployment[0].base_url), sdk(deployment[1].base_url)
        created = a.responses.create(model="mock", input=HANG, max_output_tokens=5, background=True)
        wait_for(lambda: b.responses.retrieve(created.id).status == "in_progress", timeout=15)
        assert b.responses.cancel(created.id).status == "cancelled"
        assert a.responses.retrieve(created.id).status == "cancelled"


def test_a_response_deleted_through_one_replica_is_gone_on_the_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with start_deployment(redis_server, tmp_path, 2) as deployment:
        a, b = sdk(deployment[0].base_url), sdk(deployment[1].base_url)
        created = a.responses.create(model="mock", input="hi", max_output_tokens=3)
        b.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.delete(created.id)


def test_a_socket_on_one_replica_carries_on_the_deployments_stored_responses(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The Responses WebSocket on `orchestratord serve` with Redis: a stored response made through
    replica B is carried on over a socket to replica A; an unstored one lives only on its socket, so a
    client that reconnects to B is told `previous_response_not_found` (and sends the whole
    conversation, as OpenAI's guide says)."""
    with start_deployment(redis_server, tmp_path, 2) as deployment:
        a, b = sdk(deployment[0].base_url), sdk(deployment[1].base_url)
        stored = b.responses.create(model="mock", input="kept", max_output_tokens=2)
        with a.responses.connect() as conn:
            conn.response.create(
                model="mock", input="on", previous_response_id=stored.id, max_output_tokens=2
            )
            carried = ended(conn)
            conn.response.create(model="mock", input="x", store=False, max_output_tokens=2)
            unstored = ended(conn)
        assert carried.type == "response.incomplete" and unstored.type == "response.incomplete"
        assert b.responses.retrieve(carried.response.id).output_text == carried.response.output_text
        with b.responses.connect() as conn:
            conn.response.create(model="mock", input="y", previous_response_id=unstored.response.id)
            refused = ended(conn)
        assert refused.type == "error" and refused.error.code == "previous_response_not_found"


def ended(conn: Any) -> Any:
    for event in conn:
        if event.type in ("response.completed", "response.incomplete", "response.failed", "error"):
            return event
    raise AssertionError("the socket closed before the response ended")
