"""Helpers for driving an adapter against a fake engine: requests, collecting a stream, waiting for the
engine to see a disconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, cast

from tests.fakes.engines.asgi import Record
from worker_adapters.base import ChatMessage, Finished, SubmitRequest, Token, TokenEvent, WorkerAdapter


def request(
    task_id: str = "t1", *, chat: bool = False, max_tokens: int = 5, model: str = "m", **fields: Any
) -> SubmitRequest:
    """A request for `model` (the engine's name: what the adapter sends it)."""
    if chat:
        messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Say hi"))
        return SubmitRequest(task_id=task_id, model=model, max_tokens=max_tokens, messages=messages, **fields)
    return SubmitRequest(task_id=task_id, model=model, max_tokens=max_tokens, prompt="Say hi", **fields)


async def collect(adapter: WorkerAdapter, req: SubmitRequest) -> list[TokenEvent]:
    async with aclosing(cast(Any, adapter.submit(req))) as events:
        return [event async for event in cast(AsyncIterator[TokenEvent], events)]


def texts(events: list[TokenEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, Token)]


def finished(events: list[TokenEvent]) -> Finished:
    assert events, "the stream was empty"
    last = events[-1]
    assert isinstance(last, Finished), f"the stream ended with {last!r}, not Finished"
    assert sum(isinstance(event, Finished) for event in events) == 1
    return last


async def wait_for_disconnect(record: Record, timeout_s: float = 2.0) -> float:
    """The time.monotonic() stamp at which the engine saw the client leave (fails after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not record.disconnects:
        assert time.monotonic() < deadline, "the engine never saw the client disconnect"
        await asyncio.sleep(0.002)
    return record.disconnects[-1]


async def wait_for_request(record: Record, timeout_s: float = 2.0) -> None:
    """Wait until the engine has received a request (fails after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not record.requests:
        assert time.monotonic() < deadline, "the engine never received the request"
        await asyncio.sleep(0.002)
