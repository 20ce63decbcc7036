"""The Responses API: POST /v1/responses, GET /v1/responses/{id} (optionally streamed, resumable with
`starting_after`), POST /v1/responses/{id}/cancel.

A response is a job. Its events are a pure function of the job's event log (`ResponseEvents`): the
same log read on any orchestrator replica gives the same events with the same `sequence_number`s, so a
client that lost its stream resumes it anywhere with `starting_after`, as `Last-Event-ID` resumes ours.
A background response (`background: true`) is not canceled when its client leaves; it lives until it
ends, is canceled, or the job's retention (`stream.retention_s`) ends.

The log → events mapping:
- `started` → `response.created`, then `response.queued` (with our `queue_position` and
  `predicted_start_ms`); each later queue-position `metrics` event → another `response.queued`;
- the dispatch `metrics` event → `response.in_progress` (once);
- the first `token` → `response.output_item.added`, `response.content_part.added`; each `token` →
  `response.output_text.delta`;
- `end` → the `.done` events, then `response.completed` (`response.incomplete` when it stopped at
  `max_output_tokens`, or with status `cancelled` when it was canceled); `error` → `response.failed`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.deps import Caller, get_caller, get_json_caller
from orchestratord.api.errors import response_error
from orchestratord.api.openai.requests import TIERS, OpenAIRequest, asks_for
from orchestratord.api.openai.schemas import openai_errors
from orchestratord.api.openai.streaming import chunks, tail, unless_gone
from orchestratord.api.schemas import Text
from orchestratord.api.submission import default_max_tokens, submit
from orchestratord.core.tasks import JobState, LogEvent, Message, TaskSpec, new_job_id
from orchestratord.errors import InvalidParams, NotFound
from orchestratord.idempotency import fingerprint
from orchestratord.logs import bind
from orchestratord.services import Services
from orchestratord.state.base import JobRecord

router = APIRouter(tags=["openai"])
UNSUPPORTED = (
    "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "previous_response_id",
    "include", "truncation", "top_logprobs", "prompt", "conversation",
)  # fmt: skip
_STATUS = {
    JobState.QUEUED: "queued", JobState.RUNNING: "in_progress", JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed", JobState.CANCELED: "cancelled",
}  # fmt: skip


class InputContent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["input_text", "output_text", "text"]
    text: Text = Field(max_length=1_000_000)


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: (
        Annotated[Text, Field(max_length=1_000_000)] | Annotated[list[InputContent], Field(max_length=256)]
    )

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(c.text for c in self.content)


class ResponseRequest(OpenAIRequest):
    input: (
        Annotated[Text, Field(max_length=1_000_000)]
        | Annotated[list[InputMessage], Field(min_length=1, max_length=1024)]
    )
    instructions: Text | None = Field(default=None, max_length=1_000_000)
    max_output_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    background: bool = False
    store: bool = True
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    previous_response_id: str | None = None
    include: list[str] | None = None
    truncation: str | None = None
    prompt: dict[str, Any] | None = None
    conversation: Any = None

    def prompt_estimate(self) -> int:
        texts = [self.input] if isinstance(self.input, str) else [m.text() for m in self.input]
        size = sum(map(len, texts))
        return (size + len(self.instructions or "")) // 4 + 1

    def to_spec(self, *, job_id: str, tenant: str, correlation_id: str | None, max_tokens: int) -> TaskSpec:
        for name in UNSUPPORTED:
            if asks_for(name, getattr(self, name)) and not _plain_text(name, getattr(self, name)):
                raise InvalidParams(f"{name} is not supported by orchestratord yet; leave it out", param=name)
        if self.background and not self.store:
            raise InvalidParams("a background response must be stored; leave store out", param="store")
        messages = [Message("system", self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            messages.append(Message("user", self.input))
        else:
            messages += [Message("system" if m.role == "developer" else m.role, m.text()) for m in self.input]
        return TaskSpec(
            job_id=job_id, tenant=tenant, model_ref=self.model, max_tokens=max_tokens,
            priority=TIERS[self.service_tier or "auto"], messages=tuple(messages),
            temperature=self.temperature, top_p=self.top_p, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, correlation_id=correlation_id,
            cancel_on_disconnect=not self.background,
        )  # fmt: skip


def _plain_text(name: str, value: Any) -> bool:
    """`text: {"format": {"type": "text"}}` asks for nothing beyond plain text."""
    return name == "text" and value == {"format": {"type": "text"}}


class ResponseObject(BaseModel):
    """OpenAI's response object (the fields orchestratord fills), with its job's queue position."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    background: bool
    metadata: dict[str, Any]


def response_id(job_id: str) -> str:
    return "resp_" + uuid.UUID(job_id).hex


def job_id_of(resp_id: str) -> str:
    """The job of a response id; NotFound for anything that is not one of ours."""
    try:
        return str(uuid.UUID(resp_id.removeprefix("resp_")))
    except ValueError:
        raise NotFound(f"no response {resp_id!r}") from None


@dataclass
class ResponseEvents:
    """Renders a job's log into Responses events, numbered from 0 in log order."""

    record: JobRecord
    background: bool
    sequence: int = 0
    in_progress: bool = False
    text: list[str] = field(default_factory=list)
    status: str = "queued"

    @property
    def item_id(self) -> str:
        return "msg_" + uuid.UUID(self.record.job_id).hex

    def snapshot(self, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": response_id(self.record.job_id), "object": "response",
            "created_at": int(self.record.created_at), "status": self.status, "model": self.record.model_ref,
            "output": [], "usage": None, "error": None, "incomplete_details": None,
            "background": self.background, "metadata": {},
        }  # fmt: skip
        body.update(changes)
        return body

    def of(self, event: LogEvent) -> Iterator[dict[str, Any]]:
        data: dict[str, Any] = orjson.loads(event.data)
        if event.name == "started":
            yield self._event("response.created", response=self.snapshot())
            yield self._queued(data)
        elif event.name == "metrics" and "queue_position" in data and not self.in_progress:
            yield self._queued(data)
        elif event.name == "metrics" and "pool_id" in data and not self.in_progress:
            self.in_progress, self.status = True, "in_progress"
            yield self._event("response.in_progress", response=self.snapshot())
        elif event.name == "token":
            if not self.text:
                yield from self._opened()
            self.text.append(data["t"])
            yield self._event(
                "response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                delta=data["t"], logprobs=[],
            )  # fmt: skip
        elif event.name in ("end", "error"):
            yield from self._closed(event.name, data)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _queued(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._event(
            "response.queued", response=self.snapshot(),
            queue_position=data.get("queue_position"), predicted_start_ms=data.get("predicted_start_ms"),
        )  # fmt: skip

    def _message(self, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": "".join(self.text), "annotations": [], "logprobs": []}
        return {
            "id": self.item_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [part],
        }

    def _opened(self) -> Iterator[dict[str, Any]]:
        item = {**self._message("in_progress"), "content": []}
        yield self._event("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield self._event(
            "response.content_part.added", item_id=self.item_id, output_index=0, content_index=0, part=part
        )

    def _closed(self, name: str, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if name == "error":
            self.status = "failed"
            error = response_error(str(data.get("code", "")), str(data.get("message", "")))
            yield self._event("response.failed", response=self.snapshot(error=error, output=self._output()))
            return
        text = "".join(self.text)
        if self.text:
            yield self._event("response.output_text.done", item_id=self.item_id, output_index=0,
                              content_index=0, text=text, logprobs=[])  # fmt: skip
            part = self._message("completed")["content"][0]
            yield self._event("response.content_part.done", item_id=self.item_id, output_index=0,
                              content_index=0, part=part)  # fmt: skip
            yield self._event("response.output_item.done", output_index=0, item=self._message("completed"))
        final = self.final(data)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        yield self._event(kind, response=final)

    def _output(self) -> list[dict[str, Any]]:
        return [self._message("completed")] if self.text else []

    def final(self, end: dict[str, Any]) -> dict[str, Any]:
        """The response object once its job ended well, or was canceled."""
        stop = end.get("stop_reason")
        self.status = {
            "canceled": "cancelled",
            "max_tokens": "incomplete",
            "context_length": "incomplete",
        }.get(str(stop), "completed")
        details = {"reason": "max_output_tokens"} if self.status == "incomplete" else None
        tokens_in, tokens_out = int(end.get("tokens_in") or 0), int(end.get("tokens_out") or 0)
        usage = {
            "input_tokens": tokens_in, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        }  # fmt: skip
        return self.snapshot(output=self._output(), usage=usage, incomplete_details=details)


@router.post(
    "/v1/responses",
    response_class=Response,
    responses={
        200: {"model": ResponseObject, "content": {"text/event-stream": {}}, "description": "The response."},
        **openai_errors(400, 409, 413, 415, 429, 503),
    },
    operation_id="createResponse",
)
async def create_response(
    body: ResponseRequest, request: Request, caller: Annotated[Caller, Depends(get_json_caller)]
) -> Response:
    services = caller.services
    spec = body.to_spec(
        job_id=new_job_id(), tenant=caller.tenant, correlation_id=caller.correlation_id,
        max_tokens=body.max_output_tokens or default_max_tokens(services, body.model, body.prompt_estimate()),
    )  # fmt: skip
    bind(user=body.user, metadata=body.metadata)
    result = await submit(
        caller, spec, idempotency_key=request.headers.get("idempotency-key"),
        body=lambda: fingerprint(body.model_dump(mode="json")),
    )  # fmt: skip
    record = await services.jobs.get(result.job_id, caller.tenant)
    headers = {"X-Job-Id": result.job_id, **result.headers}
    if body.stream:
        return chunks(services, _events(services, record, body.background, -1), headers)
    if body.background:
        return _json(ResponseEvents(record, True).snapshot(), headers)
    return await _answer_when_done(request, services, record, headers)


@router.get(
    "/v1/responses/{response_id}",
    response_class=Response,
    responses={
        200: {"model": ResponseObject, "content": {"text/event-stream": {}}, "description": "The response."},
        **openai_errors(400, 404, 503),
    },
    operation_id="getResponse",
)
async def get_response(
    response_id: str,
    caller: Annotated[Caller, Depends(get_caller)],
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> Response:
    services = caller.services
    record = await services.jobs.get(job_id_of(response_id), caller.tenant)
    background = not record.cancel_on_disconnect
    if stream:
        after = -1 if starting_after is None else starting_after
        return chunks(services, _events(services, record, background, after))
    return _json(await _current(services, record), {"X-Job-Id": record.job_id})


@router.post(
    "/v1/responses/{response_id}/cancel",
    response_class=Response,
    responses={
        200: {"model": ResponseObject, "description": "The response, now ended."},
        **openai_errors(400, 404, 503),
    },
    operation_id="cancelResponse",
)
async def cancel_response(response_id: str, caller: Annotated[Caller, Depends(get_caller)]) -> Response:
    services = caller.services
    job_id = job_id_of(response_id)
    await services.jobs.cancel(job_id, caller.tenant)  # idempotent: an ended job stays as it ended
    record = await services.jobs.get(job_id, caller.tenant)
    return _json(await _current(services, record), {"X-Job-Id": job_id})


async def _events(
    services: Services, record: JobRecord, background: bool, after: int
) -> AsyncIterator[bytes]:
    """The response's events after sequence number `after`, from the start of the job's log, then
    as they come."""
    events = ResponseEvents(record, background)
    async with tail(services, record.job_id) as log:
        while True:
            out: list[bytes] = []
            over = False
            for item in await anext(log):
                if isinstance(item, BaseException):
                    return  # the state backend went away: the client resumes with starting_after
                for event in events.of(item):
                    if event["sequence_number"] > after:
                        out.append(
                            b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
                        )
                over = over or item.terminal
            if out:
                yield b"".join(out)
            if over:
                return


async def _current(services: Services, record: JobRecord) -> dict[str, Any]:
    """The response object as it stands: replayed from the log once the job has ended."""
    events = ResponseEvents(record, not record.cancel_on_disconnect)
    if not record.state.terminal:
        events.status = _STATUS[record.state]
        return events.snapshot()
    final: dict[str, Any] = events.snapshot()
    async for event in services.store.read(record.job_id):
        for rendered in events.of(event):
            if "response" in rendered:
                final = rendered["response"]
    return final


async def _answer_when_done(
    request: Request, services: Services, record: JobRecord, headers: dict[str, str]
) -> Response:
    """`background: false, stream: false`: wait for the job's end; a client that leaves cancels it."""
    final = await unless_gone(request, _until_ended(services, record))
    if final is None:
        return Response(status_code=499)  # nobody is there to read it
    return _json(final, headers)


async def _until_ended(services: Services, record: JobRecord) -> dict[str, Any]:
    async with tail(services, record.job_id) as events:
        while True:
            for item in await anext(events):
                if isinstance(item, BaseException):
                    raise item
                if item.terminal:
                    fresh = await services.store.get(record.job_id) or record
                    return await _current(services, fresh)


def _json(body: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)
