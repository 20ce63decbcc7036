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
- a call's first `tool_call` fragment → `response.output_item.added` (a `function_call` item); each
  fragment's arguments → `response.function_call_arguments.delta`;
- `end` → the `.done` events of each output item, in the order they began, then `response.completed`
  (`response.incomplete` when it stopped at `max_output_tokens`, or with status `cancelled` when it
  was canceled); `error` → `response.failed`.

The request side maps onto a chat job: function tools and `function_call` / `function_call_output`
items become chat `tools` and turns, `text.format` the `response_format`, and `previous_response_id`
the previous job's turns and output before the input.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from orchestratord.admission import AdmissionResult
from orchestratord.api.deps import Caller, get_caller, get_json_caller
from orchestratord.api.errors import response_error
from orchestratord.api.openai.render import chat_logprob
from orchestratord.api.openai.requests import (
    LOGPROBS_INCLUDED,
    MAX_LOGPROBS,
    TIERS,
    OpenAIRequest,
    Verbosity,
    asks_for,
)
from orchestratord.api.openai.schemas import openai_errors
from orchestratord.api.openai.streaming import chunks, tail, unless_gone
from orchestratord.api.schemas import Effort, Text, json_text
from orchestratord.api.submission import (
    check_prompt_size,
    largest_context,
    lazy_fingerprint,
    submit,
    with_default_max_tokens,
)
from orchestratord.core.tasks import JobState, LogEvent, Message, TaskSpec, new_job_id, spec_from_dict
from orchestratord.errors import InvalidParams, NotFound, StateUnavailable
from orchestratord.logs import bind
from orchestratord.services import Services
from orchestratord.state.base import JobRecord

router = APIRouter(tags=["openai"])
UNSUPPORTED = ("include", "prompt", "conversation", "prompt_cache_retention")
_STATUS = {
    JobState.QUEUED: "queued", JobState.RUNNING: "in_progress", JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed", JobState.CANCELED: "cancelled",
}  # fmt: skip


_ITEM = ConfigDict(extra="forbid", strict=True)
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputContent(BaseModel):
    model_config = _ITEM
    type: Literal["input_text", "output_text", "text"]
    text: Text = Field(max_length=1_000_000)
    # What a response's `output_text` part carries, when a client sends the response's output back
    annotations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    logprobs: list[dict[str, Any]] | None = None


class InputMessage(BaseModel):
    model_config = _ITEM
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: (
        Annotated[Text, Field(max_length=1_000_000)] | Annotated[list[InputContent], Field(max_length=256)]
    )
    id: Text | None = Field(default=None, max_length=256)  # a response's output item, sent back
    status: ItemStatus | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(c.text for c in self.content)


class FunctionCallItem(BaseModel):
    """A call the model made (a response's `function_call` output item), sent back with the
    conversation."""

    model_config = _ITEM
    type: Literal["function_call"]
    call_id: Text = Field(min_length=1, max_length=256)
    name: Text = Field(min_length=1, max_length=256)
    arguments: Text = Field(max_length=1_000_000)  # JSON text, as the model wrote it
    id: Text | None = Field(default=None, max_length=256)
    status: ItemStatus | None = None


class FunctionCallOutputItem(BaseModel):
    """A tool's result, answering the call `call_id`."""

    model_config = _ITEM
    type: Literal["function_call_output"]
    call_id: Text = Field(min_length=1, max_length=256)
    output: Text = Field(max_length=1_000_000)
    id: Text | None = Field(default=None, max_length=256)
    status: ItemStatus | None = None


class ReasoningPart(BaseModel):
    model_config = _ITEM
    type: Literal["reasoning_text", "summary_text"]
    text: Text = Field(max_length=1_000_000)


class ReasoningItem(BaseModel):
    """A response's `reasoning` output item, sent back with the conversation as the SDKs' docs show.
    It is not passed on: the chat templates of thinking models leave earlier turns' reasoning out."""

    model_config = _ITEM
    type: Literal["reasoning"]
    id: Text | None = Field(default=None, max_length=256)
    summary: list[ReasoningPart] = Field(default_factory=list, max_length=256)
    content: list[ReasoningPart] | None = Field(default=None, max_length=256)
    encrypted_content: Text | None = Field(default=None, max_length=1_000_000)
    status: ItemStatus | None = None


def _item_kind(value: Any) -> str | None:
    """Which kind of input item `value` is, by its `type` (a message may leave it out): its errors are
    then that kind's alone, not every kind's."""
    return value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


class FunctionTool(BaseModel):
    """A function the model may call, in the Responses API's flat shape."""

    model_config = _ITEM
    type: Literal["function"]
    name: Text = Field(min_length=1, max_length=64)
    description: Text | None = Field(default=None, max_length=100_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def chat(self) -> dict[str, Any]:
        """The same function in Chat Completions' shape, which the engines take."""
        function = self.model_dump(exclude={"type"}, exclude_none=True)
        return {"type": "function", "function": function}


class TextFormat(BaseModel):
    """`text.format`: plain text, any JSON object, or JSON that follows `schema`."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: Text | None = Field(default=None, min_length=1, max_length=64)
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    description: Text | None = Field(default=None, max_length=100_000)
    strict: bool | None = None

    def response_format(self) -> dict[str, Any] | None:
        """The same request in Chat Completions' `response_format`, which the engines take; None for
        plain text, which every engine gives. InvalidParams for a `json_schema` without its parts."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.name is None or self.json_schema is None:
            missing = "name" if self.name is None else "schema"
            raise InvalidParams(
                f"text.format of type json_schema needs {missing}", param=f"text.format.{missing}"
            )
        schema = {"name": self.name, "schema": self.json_schema, "description": self.description,
                  "strict": self.strict}  # fmt: skip
        return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}


class TextConfig(BaseModel):
    model_config = _ITEM
    format: TextFormat | None = None
    verbosity: Verbosity | None = None  # "medium" (the default) only: no engine here takes another


class ReasoningConfig(BaseModel):
    """How a thinking model reasons. `effort` reaches the engines that take it (as Chat Completions'
    `reasoning_effort`); `summary` asks for a summary of the reasoning, and the reasoning comes whole
    instead, as `reasoning_text` content (engines summarize nothing)."""

    model_config = _ITEM
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # `summary`'s old name


class FunctionChoice(BaseModel):
    model_config = _ITEM
    type: Literal["function"]
    name: Text = Field(min_length=1, max_length=64)


class ResponseRequest(OpenAIRequest):
    input: (
        Annotated[Text, Field(max_length=1_000_000)]
        | Annotated[list[InputItem], Field(min_length=1, max_length=1024)]
    )
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    instructions: Text | None = Field(default=None, max_length=1_000_000)
    max_output_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    background: bool = False
    store: bool = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    previous_response_id: str | None = None
    include: list[str] | None = None
    # alternatives per token, in the log probabilities `include` asks for (without it, none are shown)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    truncation: Literal["auto", "disabled"] | None = None
    max_tool_calls: int | None = Field(
        default=None,
        ge=1,
        description="OpenAI's limit on calls to its built-in tools, which orchestratord does not run (it "
        "refuses them): function calls, which the client runs, are not counted, as OpenAI counts none.",
    )
    prompt: dict[str, Any] | None = None
    conversation: Any = None

    def to_spec(
        self,
        *,
        job_id: str,
        tenant: str,
        correlation_id: str | None,
        max_tokens: int,
        history: Sequence[Message] = (),
    ) -> TaskSpec:
        """The job; `history`, the turns of the response this one carries on (`previous_response_id`),
        which come after this request's instructions and before its input."""
        for name in UNSUPPORTED:
            if asks_for(name, getattr(self, name)):
                raise InvalidParams(f"{name} is not supported by orchestratord yet; leave it out", param=name)
        if self.text is not None and asks_for("verbosity", self.text.verbosity):
            raise InvalidParams(
                "text.verbosity is not supported by orchestratord yet; leave it out", param="text.verbosity"
            )
        if self.background and not self.store:
            raise InvalidParams("a background response must be stored; leave store out", param="store")
        messages = [Message("system", self.instructions)] if self.instructions else []
        messages += history
        if isinstance(self.input, str):
            messages.append(Message("user", self.input))
        else:
            messages += _turns(self.input, _calls_made(history))
        # no tools (`[]`, which agent frameworks send on every request) ask for nothing
        tools = json_text("tools", [tool.chat() for tool in self.tools]) if self.tools else None
        form = None if self.text is None or self.text.format is None else self.text.format.response_format()
        choice: str | dict[str, Any] | None = (  # in Chat Completions' shape
            {"type": "function", "function": {"name": self.tool_choice.name}}
            if isinstance(self.tool_choice, FunctionChoice)
            else self.tool_choice
        )
        return TaskSpec(
            job_id=job_id, tenant=tenant, model_ref=self.model, max_tokens=max_tokens,
            priority=TIERS[self.service_tier or "auto"], messages=tuple(messages),
            temperature=self.temperature, top_p=self.top_p, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, correlation_id=correlation_id,
            cancel_on_disconnect=not self.background, tools=tools,
            tool_choice=None if choice is None else json_text("tool_choice", choice),
            response_format=None if form is None else json_text("text.format", form),
            instructed=True if self.instructions else None, cache_key=self.prompt_cache_key,
            unstored=None if self.store else True, single_tool_call=self.single_tool_call,
            reasoning_effort=None if self.reasoning is None else self.reasoning.effort,
            carried=len(history) or None,
            logprobs=(self.top_logprobs or 0) if LOGPROBS_INCLUDED in (self.include or ()) else None,
        )  # fmt: skip


def truncated(spec: TaskSpec, room: int) -> TaskSpec:
    """`truncation: "auto"`: `spec` with the earliest exchanges of its conversation dropped, as few as
    needed for its prompt estimate (`TaskSpec.tokens_in_estimate`, the one admission checks) to fit
    `room` tokens. An exchange is a user turn and the turns that answer it (an assistant's tool calls
    and their results go together); system turns (the instructions) stay where they are, and so does
    the last exchange, even when it alone is too long (admission then refuses it, saying so)."""
    messages = spec.messages or ()
    if spec.tokens_in_estimate <= room:
        return spec
    turns = [i for i, m in enumerate(messages) if m.role != "system"]
    cuts = [i for i in turns[1:] if messages[i].role == "user"]  # where each later exchange begins
    first = 1 if spec.instructed else 0  # the carried-on turns: messages[first : first + carried]

    def kept(dropped: int) -> TaskSpec:
        start = cuts[dropped - 1] if dropped else 0
        stays = [i >= start or m.role == "system" for i, m in enumerate(messages)]
        carried = sum(stays[first : first + (spec.carried or 0)])
        return replace(
            spec,
            messages=tuple(m for m, s in zip(messages, stays, strict=True) if s),
            carried=carried or None,
        )

    low, high = 1, len(cuts)  # the fewest exchanges to drop, found by halving (each try estimates once)
    while low < high:
        middle = (low + high) // 2
        if kept(middle).tokens_in_estimate <= room:
            high = middle
        else:
            low = middle + 1
    return kept(high) if cuts else spec


def _calls_made(turns: Sequence[Message]) -> set[str]:
    """The ids of the tool calls the assistant turns of `turns` made."""
    return {call["id"] for m in turns if m.tool_calls is not None for call in orjson.loads(m.tool_calls)}


def _turns(items: list[InputItem], called: set[str]) -> list[Message]:
    """The input items as chat turns: messages as they are; consecutive `function_call` items as one
    assistant turn with their calls (joined to the assistant message just before them, as OpenAI
    joins a turn's text and calls); each `function_call_output` as a `tool` turn answering its call,
    which an earlier item (or `called`: the calls of the response carried on) must have made
    (InvalidParams naming `input[i].call_id` otherwise)."""
    turns: list[Message] = []
    calls: list[dict[str, Any]] = []  # the calls of the assistant turn being built
    called = set(called)
    for index, item in enumerate(items):
        if isinstance(item, ReasoningItem):
            continue  # the model's earlier reasoning: left out, as its chat template leaves it out
        if isinstance(item, FunctionCallItem):
            calls.append({"id": item.call_id, "type": "function",
                          "function": {"name": item.name, "arguments": item.arguments}})  # fmt: skip
            called.add(item.call_id)
            continue
        _close(turns, calls)
        if isinstance(item, FunctionCallOutputItem):
            if item.call_id not in called:
                raise InvalidParams(
                    f"input[{index}]: no function_call item before it has call_id {item.call_id!r}; send "
                    "the call (the response's function_call output item) ahead of its output",
                    param=f"input[{index}].call_id",
                )
            turns.append(Message("tool", item.output, None, item.call_id))
        else:
            turns.append(Message("system" if item.role == "developer" else item.role, item.text()))
    _close(turns, calls)
    return turns


def _close(turns: list[Message], calls: list[dict[str, Any]]) -> None:
    """End the assistant turn of `calls` (if any): its text, if a message item began it, and them."""
    if not calls:
        return
    text = ""
    if turns and turns[-1].role == "assistant" and turns[-1].tool_calls is None:
        text = turns.pop().content
    turns.append(Message("assistant", text, json_text("tool_calls", calls)))
    calls.clear()


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


async def history_of(caller: Caller, previous: str) -> tuple[Message, ...]:
    """The conversation a response with `previous_response_id` carries on: the previous response's
    turns, without its instructions (as OpenAI's API leaves them out), and its output as one assistant
    turn (its text and its calls). It must have completed; it is kept as long as its job
    (`stream.retention_s` after it ended), on every replica."""
    param = "previous_response_id"
    try:
        record = await caller.services.jobs.get(job_id_of(previous), caller.tenant)
    except NotFound:  # 404, as OpenAI answers it: the request is well formed, what it names is not here
        raise NotFound(
            f"previous_response_id: no response {previous!r} here (a response is kept for stream.retention_s "
            "after it ends); send the whole conversation as input instead",
            param=param,
        ) from None
    spec = spec_from_dict(orjson.loads(record.spec))
    if spec.inputs is not None:
        raise NotFound(_EMBEDDINGS_JOB.format(f"previous_response_id: {previous!r}"), param=param)
    if spec.unstored:
        raise NotFound(
            f"previous_response_id: response {previous!r} was created with store: false, and such a "
            "response cannot be carried on; send the whole conversation as input instead",
            param=param,
        )
    if record.state is not JobState.SUCCEEDED:
        raise InvalidParams(
            f"previous_response_id: response {previous!r} is {_STATUS[record.state]}; a response carries "
            "on only from one that completed",
            param=param,
        )
    return carried_on(spec, (await _current(caller.services, record))["output"])


def carried_on(spec: TaskSpec, output: Sequence[dict[str, Any]]) -> tuple[Message, ...]:
    """What a response carried on from gives the next: the turns of its job `spec` without its
    instructions, and its `output` (the response's items) as one assistant turn, its text and its
    calls."""
    if spec.messages is None:  # a job of our own API, given as a prompt
        turns = [Message("user", spec.prompt or "")]
    else:
        turns = list(spec.messages)[1 if spec.instructed else 0 :]
    text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
    calls = [
        {"id": item["call_id"], "type": "function",
         "function": {"name": item["name"], "arguments": item["arguments"]}}
        for item in output if item["type"] == "function_call"
    ]  # fmt: skip
    if text or calls:
        turns.append(Message("assistant", text, json_text("tool_calls", calls) if calls else None))
    return tuple(turns)


# The job's fields a refusal may name, as this API calls them
_NAMES = {"response_format": "text.format", "messages": "input", "reasoning_effort": "reasoning.effort",
          "logprobs": "include"}  # fmt: skip


def _in_our_names(exc: InvalidParams) -> InvalidParams:
    """A refusal that names a job field (admission's: what no engine serving the model takes) named
    as the request called it."""
    ours = _NAMES.get(exc.param or "")
    if ours is None or exc.param is None:
        return exc
    return InvalidParams(exc.message.replace(exc.param, ours, 1), param=ours)


_EMBEDDINGS_JOB = "{} is an embeddings job, not a response; GET /v1/tasks/{{id}} reads its state"


def _given_back(resp_id: str, record: JobRecord) -> JobRecord:
    """The record of a response this API may give back (read, stream again, cancel): NotFound, as
    OpenAI answers, for one created with `store: false`, or for an embeddings job."""
    spec = spec_from_dict(orjson.loads(record.spec))
    if spec.inputs is not None:
        raise NotFound(_EMBEDDINGS_JOB.format(repr(resp_id)))
    if spec.unstored:
        raise NotFound(
            f"response {resp_id!r} was created with store: false, and this API does not give such a "
            "response back (to read, stream again or cancel); create it with store: true (the default)"
        )
    return record


def job_id_of(resp_id: str) -> str:
    """The job of a response id; NotFound for anything that is not one of ours."""
    try:
        return str(uuid.UUID(resp_id.removeprefix("resp_")))
    except ValueError:
        raise NotFound(f"no response {resp_id!r}") from None


@dataclass
class _Call:
    """A function call the model is making: its output item, built from the job's `tool_call`
    fragments."""

    output_index: int
    item_id: str
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def item(self, status: str) -> dict[str, Any]:
        arguments = "".join(self.arguments) if status == "completed" else ""
        return {
            "id": self.item_id, "type": "function_call", "status": status, "arguments": arguments,
            "call_id": self.call_id, "name": self.name,
        }  # fmt: skip


@dataclass
class _Thought:
    """A reasoning output item: a thinking model's reasoning up to its next output item."""

    output_index: int
    item_id: str
    text: list[str] = field(default_factory=list)
    done: bool = False

    def item(self, status: str) -> dict[str, Any]:
        content = [{"type": "reasoning_text", "text": "".join(self.text)}] if status == "completed" else []
        return {"id": self.item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


@dataclass
class ResponseEvents:
    """Renders a job's log into Responses events, numbered from 0 in log order. The output items
    (reasoning, the text message, each function call) are numbered in the order they began; a
    reasoning item is done when the next item begins."""

    record: JobRecord
    background: bool
    sequence: int = 0
    in_progress: bool = False
    text: list[str] = field(default_factory=list)
    # every token's log probabilities, as the output_text part has them (when the request included them)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "queued"
    message_index: int | None = None  # the text message's output_index, once it began
    calls: dict[int, _Call] = field(default_factory=dict)  # by the fragments' `index`
    thoughts: list[_Thought] = field(default_factory=list)

    @property
    def item_id(self) -> str:
        return "msg_" + uuid.UUID(self.record.job_id).hex

    @property
    def items(self) -> int:
        """How many output items have begun."""
        return len(self.calls) + (self.message_index is not None) + len(self.thoughts)

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
        elif event.name == "reasoning":
            yield from self._thinking(data["t"])
        elif event.name == "token":
            yield from self._thought_done()
            if self.message_index is None:
                yield from self._opened()
            self.text.append(data["t"])
            logprobs = [chat_logprob(entry) for entry in data.get("logprobs") or ()]
            self.logprobs += logprobs
            yield self._event(
                "response.output_text.delta", item_id=self.item_id, output_index=self.message_index,
                content_index=0, delta=data["t"], logprobs=logprobs,
            )  # fmt: skip
        elif event.name == "tool_call":
            yield from self._thought_done()
            yield from self._call(data)
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
        text = "".join(self.text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs}
        return {
            "id": self.item_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [part],
        }

    def _opened(self) -> Iterator[dict[str, Any]]:
        self.message_index = index = self.items
        item = {**self._message("in_progress"), "content": []}
        yield self._event("response.output_item.added", output_index=index, item=item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield self._event(
            "response.content_part.added",
            item_id=self.item_id,
            output_index=index,
            content_index=0,
            part=part,
        )

    def _thinking(self, text: str) -> Iterator[dict[str, Any]]:
        """A `reasoning` event: a delta of the open reasoning item, which it opens if none is."""
        thought = self.thoughts[-1] if self.thoughts and not self.thoughts[-1].done else None
        if thought is None:
            job = uuid.UUID(self.record.job_id).hex
            thought = _Thought(output_index=self.items, item_id=f"rs_{job}_{len(self.thoughts)}")
            self.thoughts.append(thought)
            yield self._event("response.output_item.added", output_index=thought.output_index,
                              item=thought.item("in_progress"))  # fmt: skip
            yield self._event("response.content_part.added", item_id=thought.item_id,
                              output_index=thought.output_index, content_index=0,
                              part={"type": "reasoning_text", "text": ""})  # fmt: skip
        thought.text.append(text)
        yield self._event("response.reasoning_text.delta", item_id=thought.item_id,
                          output_index=thought.output_index, content_index=0, delta=text)  # fmt: skip

    def _thought_done(self) -> Iterator[dict[str, Any]]:
        """Close the open reasoning item, if any: the model has moved on (or ended)."""
        if not self.thoughts or self.thoughts[-1].done:
            return
        thought = self.thoughts[-1]
        thought.done = True
        text, index = "".join(thought.text), thought.output_index
        yield self._event("response.reasoning_text.done", item_id=thought.item_id, output_index=index,
                          content_index=0, text=text)  # fmt: skip
        yield self._event("response.content_part.done", item_id=thought.item_id, output_index=index,
                          content_index=0, part={"type": "reasoning_text", "text": text})  # fmt: skip
        yield self._event("response.output_item.done", output_index=index, item=thought.item("completed"))

    def _call(self, fragment: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A `tool_call` fragment: its call's item begins with its first (which names the call), then
        each fragment's arguments are a delta."""
        index = int(fragment.get("index", 0))
        call = self.calls.get(index)
        if call is None:
            job = uuid.UUID(self.record.job_id).hex
            call = _Call(
                output_index=self.items, item_id=f"fc_{job}_{index}",
                call_id=str(fragment.get("id") or f"call_{job}_{index}"), name=str(fragment.get("name", "")),
            )  # fmt: skip
            self.calls[index] = call
            yield self._event("response.output_item.added", output_index=call.output_index,
                              item=call.item("in_progress"))  # fmt: skip
        if delta := fragment.get("arguments"):
            call.arguments.append(delta)
            yield self._event("response.function_call_arguments.delta", item_id=call.item_id,
                              output_index=call.output_index, delta=delta)  # fmt: skip

    def _closed(self, name: str, data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if name == "error":
            self.status = "failed"
            error = response_error(str(data.get("code", "")), str(data.get("message", "")))
            yield self._event("response.failed", response=self.snapshot(error=error, output=self._output()))
            return
        yield from self._thought_done()
        ends: list[tuple[int, _Call | None]] = [(call.output_index, call) for call in self.calls.values()]
        if self.message_index is not None:
            ends.append((self.message_index, None))
        for index, call in sorted(ends, key=lambda end: end[0]):
            if call is None:
                yield from self._message_done(index)
                continue
            arguments = "".join(call.arguments)
            yield self._event("response.function_call_arguments.done", item_id=call.item_id,
                              output_index=index, arguments=arguments, name=call.name)  # fmt: skip
            yield self._event("response.output_item.done", output_index=index, item=call.item("completed"))
        final = self.final(data)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        yield self._event(kind, response=final)

    def _message_done(self, index: int) -> Iterator[dict[str, Any]]:
        yield self._event("response.output_text.done", item_id=self.item_id, output_index=index,
                          content_index=0, text="".join(self.text), logprobs=self.logprobs)  # fmt: skip
        part = self._message("completed")["content"][0]
        yield self._event("response.content_part.done", item_id=self.item_id, output_index=index,
                          content_index=0, part=part)  # fmt: skip
        yield self._event("response.output_item.done", output_index=index, item=self._message("completed"))

    def _output(self) -> list[dict[str, Any]]:
        items = [(call.output_index, call.item("completed")) for call in self.calls.values()]
        items += [(thought.output_index, thought.item("completed")) for thought in self.thoughts]
        if self.message_index is not None:
            items.append((self.message_index, self._message("completed")))
        return [item for _, item in sorted(items, key=lambda entry: entry[0])]

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
            "output_tokens": tokens_out,
            # the reasoning events relayed (each a piece of a reasoning item): one per engine step, usually
            # one token
            "output_tokens_details": {"reasoning_tokens": sum(len(t.text) for t in self.thoughts)},
            "total_tokens": tokens_in + tokens_out,
        }  # fmt: skip
        return self.snapshot(output=self._output(), usage=usage, incomplete_details=details)


@router.post(
    "/v1/responses",
    response_class=Response,
    responses={
        200: {"model": ResponseObject, "content": {"text/event-stream": {}}, "description": "The response."},
        **openai_errors(400, 404, 409, 413, 415, 429, 503),
    },
    operation_id="createResponse",
)
async def create_response(
    body: ResponseRequest, request: Request, caller: Annotated[Caller, Depends(get_json_caller)]
) -> Response:
    services = caller.services
    history = () if body.previous_response_id is None else await history_of(caller, body.previous_response_id)
    record, result = await start(caller, body, history, request.headers.get("idempotency-key"))
    headers = {"X-Job-Id": result.job_id, **result.headers}
    if body.stream:
        return chunks(services, _events(services, record, body.background, -1), headers)
    if body.background:
        return _json(ResponseEvents(record, True).snapshot(), headers)
    return await _answer_when_done(request, services, record, headers)


def spec_of(caller: Caller, body: ResponseRequest, history: Sequence[Message]) -> TaskSpec:
    """The job of a response that carries on `history`: its output limit the request's, else what the
    largest context serving the model leaves, its conversation cut to fit it with `truncation: auto`."""
    services = caller.services
    spec = body.to_spec(
        job_id=new_job_id(), tenant=caller.tenant, correlation_id=caller.correlation_id,
        max_tokens=body.max_output_tokens or 1, history=history,
    )  # fmt: skip
    if body.truncation == "auto":
        spec = truncated(spec, largest_context(services, spec.model_ref) - spec.max_tokens)
    if body.max_output_tokens is None:
        spec = with_default_max_tokens(services, spec)
    return spec


def prepared(caller: Caller, body: ResponseRequest, history: Sequence[Message]) -> TaskSpec:
    """The response's job, checked as admission checks a request, and not admitted (a response
    prepared to be carried on from, which runs nothing)."""
    spec = spec_of(caller, body, history)
    try:
        check_prompt_size(spec, caller.services.settings.limits.max_prompt_chars)
        caller.services.admission.check(spec)
    except InvalidParams as exc:
        raise _in_our_names(exc) from None
    return spec


async def start(
    caller: Caller, body: ResponseRequest, history: Sequence[Message], idempotency_key: str | None
) -> tuple[JobRecord, AdmissionResult]:
    """Admit the response's job (or find the one an Idempotency-Key already made): its record."""
    spec = spec_of(caller, body, history)
    bind(**body.client_ids)
    try:
        result = await submit(caller, spec, idempotency_key=idempotency_key, body=lazy_fingerprint(body))
    except InvalidParams as exc:
        raise _in_our_names(exc) from None
    return await caller.services.jobs.get(result.job_id, caller.tenant), result


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
    record = _given_back(response_id, await services.jobs.get(job_id_of(response_id), caller.tenant))
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
    _given_back(response_id, await services.jobs.get(job_id, caller.tenant))
    await services.jobs.cancel(job_id, caller.tenant)  # idempotent: an ended job stays as it ended
    record = await services.jobs.get(job_id, caller.tenant)
    return _json(await _current(services, record), {"X-Job-Id": job_id})


class ResponseItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


@router.get(
    "/v1/responses/{response_id}/input_items",
    response_model=ResponseItemList,
    responses=openai_errors(400, 404, 503),
    operation_id="listResponseInputItems",
)
async def list_input_items(
    response_id: str,
    caller: Annotated[Caller, Depends(get_caller)],
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    include: Annotated[list[str] | None, Query()] = None,
    include_listed: Annotated[list[str] | None, Query(alias="include[]")] = None,  # as the SDKs send it
) -> ResponseItemList:
    """The items the request gave as input (`responses.input_items.list`): its own, not those of the
    response it carried on, nor its instructions; newest first unless `order=asc`, `limit` a page, the
    next page `after` the last id of this one."""
    record = _given_back(response_id, await caller.services.jobs.get(job_id_of(response_id), caller.tenant))
    if any([*(include or ()), *(include_listed or ())]):  # (empty values ask for nothing)
        raise InvalidParams("include is not supported by orchestratord yet; leave it out", param="include")
    spec = spec_from_dict(orjson.loads(record.spec))
    turns = (spec.messages or ())[(1 if spec.instructed else 0) + (spec.carried or 0) :]
    items = input_items(record.job_id, turns)
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidParams(f"after: no item {after!r} among this response's input items", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return ResponseItemList(
        object="list", data=page, first_id=page[0]["id"] if page else None,
        last_id=page[-1]["id"] if page else None, has_more=start + limit < len(items),
    )  # fmt: skip


def input_items(job_id: str, turns: Sequence[Message]) -> list[dict[str, Any]]:
    """Chat turns as the Responses API's items, as a client gave them: messages (a user's, system's
    or developer's text as `input_text`, an assistant's as `output_text`), each tool call of an
    assistant turn a `function_call`, each tool result a `function_call_output`. An item's id is made
    from the job's and the turn's place, so it is the same on every read."""
    tag = uuid.UUID(job_id).hex
    items: list[dict[str, Any]] = []
    for n, turn in enumerate(turns):
        if turn.tool_call_id is not None:
            output = {"call_id": turn.tool_call_id, "output": turn.content, "status": "completed"}
            items.append({"id": f"fco_{tag}_{n}", "type": "function_call_output", **output})
            continue
        if turn.content or turn.tool_calls is None:
            kind = "output_text" if turn.role == "assistant" else "input_text"
            part: dict[str, Any] = {"type": kind, "text": turn.content}
            if kind == "output_text":
                part["annotations"] = []
            items.append({"id": f"msg_{tag}_{n}", "type": "message", "role": turn.role, "status": "completed",
                          "content": [part]})  # fmt: skip
        for k, call in enumerate(orjson.loads(turn.tool_calls) if turn.tool_calls is not None else ()):
            function = call.get("function") or {}
            items.append({"id": f"fc_{tag}_{n}_{k}", "type": "function_call", "call_id": call.get("id"),
                          "name": function.get("name"), "arguments": function.get("arguments"),
                          "status": "completed"})  # fmt: skip
    return items


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


@router.delete(
    "/v1/responses/{response_id}",
    response_model=ResponseDeleted,
    responses={200: {"description": "The response, deleted."}, **openai_errors(404, 503)},
    operation_id="deleteResponse",
)
async def delete_response(
    response_id: str, caller: Annotated[Caller, Depends(get_caller)]
) -> ResponseDeleted:
    """Cancels the response if it is still running, then forgets it at once, on every replica: reading,
    streaming, cancelling, deleting it again and carrying it on (`previous_response_id`) answer 404, as
    for one past its retention; so does `GET /v1/tasks/{id}` for its job."""
    job_id = job_id_of(response_id)
    _given_back(response_id, await caller.services.jobs.get(job_id, caller.tenant))
    await caller.services.jobs.delete(job_id, caller.tenant)
    return ResponseDeleted(id=response_id, object="response", deleted=True)


async def _events(
    services: Services, record: JobRecord, background: bool, after: int
) -> AsyncIterator[bytes]:
    """The response's events after sequence number `after` as Server-Sent Events, a write a batch."""
    try:
        async for batch in response_events(services, record, background, after):
            yield b"".join(
                b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
                for event in batch
            )
    except StateUnavailable:
        return  # the state backend went away: the client resumes with starting_after


async def response_events(
    services: Services, record: JobRecord, background: bool, after: int
) -> AsyncIterator[list[dict[str, Any]]]:
    """The response's events after sequence number `after`, from the start of the job's log, then
    as they come, in batches (what the log held at each look), as the job's reader (`tail`). Ends
    after the terminal event; StateUnavailable when the log cannot be read to it."""
    events = ResponseEvents(record, background)
    async with tail(services, record.job_id) as log:
        while True:
            out: list[dict[str, Any]] = []
            over = False
            for item in await anext(log):
                if isinstance(item, BaseException):
                    raise item
                out += [event for event in events.of(item) if event["sequence_number"] > after]
                over = over or item.terminal
            if out:
                yield out
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
