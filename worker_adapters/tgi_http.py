"""Hugging Face text-generation-inference: prompts stream from the native ``POST /generate_stream``,
messages from its ``/v1/chat/completions`` (wire notes §3).

Native stream: ``data:{…}`` (no space) per token, ``token.text`` with ``special: true`` for tokens such
as ``</s>`` (relayed as an empty `Token`, so token counts stay right); the last event carries the last
token and ``details.finish_reason`` (``length`` | ``eos_token`` | ``stop_sequence``), and its
``generated_text`` is the whole output, which is not appended again. Then EOF, with no ``[DONE]``.
Validation and overload errors come as HTTP 200 with one ``{"error":…,"error_type":…}`` event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

from worker_adapters._http import HttpAdapter, relay
from worker_adapters._sse import SSEEvent
from worker_adapters._wire import (
    as_dict,
    as_int,
    as_str,
    checked_step,
    error_event,
    wants_chat,
)
from worker_adapters.base import (
    Finished,
    StopReason,
    SubmitRequest,
    Token,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)
from worker_adapters.openai_http import CHAT, openai_events, request_body

_FINISH: dict[str, StopReason] = {
    "length": "max_tokens",
    "eos_token": "eos",
    "stop_sequence": "stop_sequence",
}


def generate_body(req: SubmitRequest) -> dict[str, object]:
    """TGI's native request. Its validation refuses ``temperature: 0`` and ``top_p`` outside (0, 1), and
    samples only with ``do_sample``: greedy unless the request asks for sampling."""
    params: dict[str, object] = {"max_new_tokens": req.max_tokens, "details": True}
    sampling = False
    if req.temperature is not None and req.temperature > 0:
        params["temperature"] = req.temperature
        sampling = True
    if req.top_p is not None and 0 < req.top_p < 1:
        params["top_p"] = req.top_p
        sampling = True
    params["do_sample"] = sampling
    if req.seed is not None:
        params["seed"] = req.seed
    if req.frequency_penalty is not None:
        params["frequency_penalty"] = req.frequency_penalty
    if req.stop:
        params["stop"] = list(req.stop)
    return {"inputs": req.prompt or "", "parameters": params}


class GenerateStream:
    """One ``/generate_stream`` stream's state; `done` after the event that carries ``generated_text``."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.done = False

    def feed(self, event: SSEEvent) -> list[TokenEvent]:
        if event.type == "error":
            raise error_event(event.data, self.engine)
        step = checked_step(event.data, self.engine)
        out: list[TokenEvent] = []
        token = step.get("token")
        if isinstance(token, dict):  # decoded JSON: every object is a dict
            text = "" if token.get("special") is True else as_str(token.get("text")) or ""
            out.append(Token(text))
        details = step.get("details")
        if step.get("generated_text") is not None or details is not None:
            self.done = True
            out.append(_finished(as_dict(details)))
        return out


def _finished(details: Mapping[str, Any]) -> Finished:
    reason = as_str(details.get("finish_reason"))
    return Finished(
        _FINISH.get(reason or "", "eos"),
        prompt_tokens=as_int(details.get("input_length")),
        completion_tokens=as_int(details.get("generated_tokens")),
    )


class TgiAdapter(HttpAdapter):
    engine = "tgi"

    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        if wants_chat(self.config.api, req, self.engine):
            body = request_body(req, req.model, chat=True)
            return openai_events(self.http, req, CHAT, body, final_step_chunks=True)
        return self._generate(req)

    def _generate(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        events = self.http.sse(req, "/generate_stream", generate_body(req))
        return relay(self.http, events, GenerateStream(self.engine), "a final event with generated_text")

    async def health(self) -> WorkerHealth:
        return await self.http.probe("/health")

    async def props(self) -> WorkerProps:
        info = as_dict(await self.http.get_json("/info"))
        ctx_max = as_int(info.get("max_total_tokens"))
        if ctx_max is None:
            ctx_max = as_int(info.get("max_input_tokens")) or as_int(info.get("max_input_length"))
        # No `models`: TGI serves its one model whatever a request names. No `slots` either: its
        # `max_concurrent_requests` is the router's admission limit (128 by default), not how many
        # requests it decodes at once; taking it would move work from our fair queue into TGI's own.
        # The pool's configured `slots` stand.
        return WorkerProps(
            ctx_max=ctx_max,
            engine_version=as_str(info.get("version")),
        )
