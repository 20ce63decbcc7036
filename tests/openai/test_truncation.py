"""The Responses API's `truncation: "auto"` (the official SDK, the mock engine with a context of 100
tokens): a conversation too long for the context loses its earliest exchanges, as few as fit, whole
(a tool call goes with its result), the instructions kept; without it, or when the last exchange alone
is too long, the request is refused, as before."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestratord.api.openai.responses import truncated
from orchestratord.core.tasks import Message, TaskSpec
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk
from tests.openai.test_responses import stored_turns

POOL = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "ctx_max": 100}


def said(role: str, n: int) -> dict[str, Any]:
    """A turn of exactly 100 bytes (25 tokens by the estimate admission uses)."""
    return {"role": role, "content": f"{role[0]}{n}:".ljust(100, ".")}


CALL = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
# Four exchanges, each 100-byte turn 25 tokens: the last two and the instructions take ~78 tokens, one
# more exchange (its tool call and result with it) would take ~157.
CONVERSATION: list[Any] = [
    said("user", 1), said("assistant", 1),
    said("user", 2), CALL, {"type": "function_call_output", "call_id": "call_1", "output": "x" * 100},
    said("assistant", 2),
    said("user", 3), said("assistant", 3),
    said("user", 4),
]  # fmt: skip


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer]) -> LoopbackServer:
    return make_server(pools=[POOL])


def test_the_earliest_exchanges_are_dropped_until_the_conversation_fits(server: LoopbackServer) -> None:
    client = sdk(server)
    ask: dict[str, Any] = {"model": "mock", "instructions": "Be brief.", "max_output_tokens": 10}
    plain = [turn for turn in CONVERSATION if "role" in turn]  # (the mock takes no tool turns)
    with pytest.raises(openai.BadRequestError) as caught:  # `disabled`, the default: refused
        client.responses.create(input=plain, **ask)
    assert "exceeds the largest context (100)" in caught.value.body["message"]  # type: ignore[index]
    done = client.responses.create(input=CONVERSATION, truncation="auto", **ask)
    assert done.output_text  # it ran
    assert stored_turns(server, done.id) == [
        {"role": "system", "content": "Be brief."},
        said("user", 3), said("assistant", 3), said("user", 4),
    ]  # fmt: skip
    fits = client.responses.create(input=CONVERSATION[-3:], truncation="auto", **ask)  # nothing to drop
    assert [t["content"] for t in stored_turns(server, fits.id)][1:] == [
        t["content"] for t in CONVERSATION[-3:]
    ]


def test_a_carried_on_conversation_loses_its_history_first(server: LoopbackServer) -> None:
    client = sdk(server)
    first = client.responses.create(model="mock", input=[said("user", 1)], max_output_tokens=40)
    long_input = [said("user", 2), said("assistant", 2), said("user", 3)]
    done = client.responses.create(
        model="mock", input=long_input, previous_response_id=first.id, truncation="auto", max_output_tokens=10
    )
    assert stored_turns(server, done.id) == long_input  # the history went, the new exchanges fit


def test_a_last_exchange_too_long_alone_is_refused(server: LoopbackServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(server).responses.create(
            model="mock", input=[said("user", 1), {"role": "user", "content": "x" * 500}], truncation="auto"
        )
    assert "exceeds the largest context (100)" in caught.value.body["message"]  # type: ignore[index]


@given(
    sizes=st.lists(st.lists(st.integers(1, 400), min_size=1, max_size=4), min_size=1, max_size=30),
    room=st.integers(1, 2000),
    history=st.integers(0, 30),
)
def test_the_fewest_whole_exchanges_are_dropped(sizes: list[list[int]], room: int, history: int) -> None:
    """Exchanges of any sizes (a user turn, then assistant turns), the first `history` of them carried
    on from a previous response: what is kept is the instructions and the longest run of last exchanges
    that fits, or the last exchange alone, and `carried` counts the carried-on turns kept."""
    exchanges = [
        [Message("user" if i == 0 else "assistant", "x" * size) for i, size in enumerate(turns)]
        for turns in sizes
    ]
    instructions = Message("system", "Be brief.")
    carried = [len(e) for e in exchanges[:history]]
    turns = (instructions, *(m for e in exchanges for m in e))
    spec = TaskSpec(job_id="j", tenant="t", model_ref="m", max_tokens=1, instructed=True, messages=turns,
                    carried=sum(carried) or None)  # fmt: skip

    def kept_last(n: int) -> TaskSpec:
        still = sum(carried[len(exchanges) - n :])
        return replace(
            spec, messages=(instructions, *(m for e in exchanges[-n:] for m in e)), carried=still or None
        )

    fitting = [n for n in range(1, len(exchanges) + 1) if kept_last(n).tokens_in_estimate <= room]
    assert truncated(spec, room) == kept_last(max(fitting, default=1))
