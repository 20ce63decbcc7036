"""POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{model}.

Each request is admitted as a job through the shared submission path (`api.submission`), then
rendered from the job's event log: streamed as `data:` chunks ending with `data: [DONE]` (keep-alive
comments only until the first chunk, no `id:` lines, an error after the start as an `error` chunk), or
collected into one response. A client that goes away cancels its job after the reconnect grace, as a
reader of our own streams does; `X-Job-Id` names the job (`GET /v1/tasks/{id}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from orchestratord.admission import AdmissionResult
from orchestratord.api.deps import Caller, get_caller, get_json_caller
from orchestratord.api.errors import from_event, openai_error, to_openai_response
from orchestratord.api.openai.render import DONE, Rendering, Surface, ToolCalls, error_chunk, total
from orchestratord.api.openai.requests import ChatCompletionRequest, CompletionRequest
from orchestratord.api.openai.schemas import ChatCompletion, Completion, Model, ModelList, openai_errors
from orchestratord.api.openai.streaming import Batch, chunks, tail, unless_gone
from orchestratord.api.submission import lazy_fingerprint, submit, submit_body, with_default_max_tokens
from orchestratord.core.tasks import LogEvent, TaskSpec, new_job_id
from orchestratord.errors import ErrorKind, InvalidParams, NotFound, OrchestratorError, StateUnavailable
from orchestratord.logs import bind, get_logger
from orchestratord.services import Services

router = APIRouter(tags=["openai"])
log = get_logger(__name__)
JsonCaller = Annotated[Caller, Depends(get_json_caller)]
Generation = ChatCompletionRequest | CompletionRequest
JOB_HEADER = (
    "The job serving it (several choices, `n` or several prompts, have a job each: their ids, "
    "comma-separated, in the choices' order)."
)


def _generation_responses(whole: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": whole,
            "content": {"text/event-stream": {}},
            "description": "The completion (JSON), or its chunks (`stream: true`).",
            "headers": {"X-Job-Id": {"schema": {"type": "string"}, "description": JOB_HEADER}},
        },
        # 404, 502, 504: a whole answer's job ended in an error (its state lost; the engine failed or
        # went silent): `error_event`'s code, answered with its status
        **openai_errors(400, 404, 409, 413, 415, 429, 502, 503, 504),
    }


@router.post(
    "/v1/chat/completions",
    response_class=Response,
    responses=_generation_responses(ChatCompletion),
    operation_id="createChatCompletion",
)
async def chat_completions(body: ChatCompletionRequest, request: Request, caller: JsonCaller) -> Response:
    return await _generate(request, caller, body, "chat")


@router.post(
    "/v1/completions",
    response_class=Response,
    responses=_generation_responses(Completion),
    operation_id="createCompletion",
)
async def completions(body: CompletionRequest, request: Request, caller: JsonCaller) -> Response:
    return await _generate(request, caller, body, "completion")


@router.get("/v1/models", response_model=ModelList, responses=openai_errors(), operation_id="listModels")
async def list_models(caller: Annotated[Caller, Depends(get_caller)]) -> ModelList:
    return ModelList.of(caller.services)


@router.get(
    "/v1/models/{model:path}",
    response_model=Model,
    responses=openai_errors(404),
    operation_id="retrieveModel",
)
async def retrieve_model(model: str, caller: Annotated[Caller, Depends(get_caller)]) -> Model:
    """One model of the list (its id may hold slashes, as Hugging Face names do); 404 for one the list
    leaves out, as OpenAI answers a model that does not exist."""
    for listed in ModelList.of(caller.services).data:
        if listed.id == model:
            return listed
    raise NotFound(
        f"the model {model!r} is not served here (GET /v1/models lists those that are)", param="model"
    )


async def _generate(request: Request, caller: Caller, body: Generation, surface: Surface) -> Response:
    services = caller.services
    requested = body.requested_tokens
    spec = body.to_spec(
        job_id=new_job_id(), tenant=caller.tenant, correlation_id=caller.correlation_id,
        max_tokens=requested or 1,
    )  # fmt: skip
    specs = body.fan_out(spec)
    if requested is None:
        specs = [with_default_max_tokens(services, each) for each in specs]
    # the client's ids, into this request's log lines
    bind(**body.client_ids)
    try:
        results = await _submit_all(caller, specs, request, body)
    except InvalidParams as exc:
        raise _in_our_names(exc, body) from None
    echoes = isinstance(body, CompletionRequest) and bool(body.echo)  # the prompt, before the text
    rendering = Rendering(
        surface, results[0].job_id, int(time.time()), body.model, body.include_usage,
        spec.logprobs is not None, body.continuous_usage, specs[0].tokens_in_estimate,
        echo=specs[0].prompt or "" if echoes else "", legacy=body.legacy,
    )  # fmt: skip
    headers = {"X-Job-Id": ", ".join(result.job_id for result in results), **results[0].headers}
    keepalive_s = services.settings.stream.keepalive_s
    if len(results) > 1:
        choices = [
            _Choice(replace(rendering, index=i, prompt_estimate=each.tokens_in_estimate,
                            echo=each.prompt or "" if echoes else ""),
                    result.job_id, counts_prompt=i % (body.n or 1) == 0)
            for i, (each, result) in enumerate(zip(specs, results, strict=True))
        ]  # fmt: skip
        if body.stream:
            return chunks(services, _stream_choices(services, rendering, choices, keepalive_s), headers)
        return await _whole_choices(request, services, rendering, choices, headers)
    if body.stream:
        return chunks(services, _stream(services, rendering, keepalive_s), headers)
    return await _whole_choices(
        request, services, rendering, [_Choice(rendering, rendering.job_id, True)], headers
    )


def _in_our_names(exc: InvalidParams, body: Generation) -> InvalidParams:
    """A refusal that names a job field the request did not name, named as the request asked for it:
    `prompt_logprobs` (no engine serving the model scores prompts) as `echo` with `logprobs`,
    `prompt_ids` (none takes token ids) as `prompt`, tools given as `functions` by that name."""
    if exc.param in ("tools", "tool_choice") and body.functions:
        asked = param = "functions" if exc.param == "tools" else "function_call"
    elif exc.param == "prompt_logprobs":
        asked, param = "echo with logprobs (the prompt's own log probabilities)", "echo"
    elif exc.param == "prompt_ids":
        asked, param = "a prompt of token ids", "prompt"
    else:
        return exc
    return InvalidParams(exc.message.replace(exc.param, asked, 1), param=param)


async def _submit_all(
    caller: Caller, specs: list[TaskSpec], request: Request, body: Generation
) -> list[AdmissionResult]:
    """Admit a job for each choice, in order. The request is admitted whole or not at all: when one is
    refused (a full queue's 429, a budget), those admitted before it are taken back (canceled and
    forgotten, their Idempotency-Key claims dropped) and the refusal is the answer. With an
    Idempotency-Key, the k-th choice's job is claimed as `key#k` (the first's as `key`)."""
    if len(specs) == 1:
        return [await submit_body(caller, specs[0], request, body)]
    key = request.headers.get("idempotency-key")
    keys = [None if key is None else key if i == 0 else f"{key}#{i}" for i in range(len(specs))]
    digest = lazy_fingerprint(body)
    results: list[AdmissionResult] = []
    try:
        for spec, each_key in zip(specs, keys, strict=True):
            results.append(await submit(caller, spec, idempotency_key=each_key, body=digest))
    except BaseException:
        await asyncio.shield(_take_back(caller, specs, results, keys))
        raise
    return results


async def _take_back(
    caller: Caller, specs: list[TaskSpec], admitted: list[AdmissionResult], keys: list[str | None]
) -> None:
    services = caller.services
    for spec, result, key in zip(specs, admitted, keys, strict=False):
        if result.job_id != spec.job_id:  # an earlier request's job (a replay): that request's to answer
            continue
        with contextlib.suppress(OrchestratorError):
            await services.jobs.delete(result.job_id, caller.owner)
        if key is not None:
            await services.idempotency.release(key, caller.tenant, result.job_id)


@dataclass(frozen=True, slots=True)
class _Choice:
    """One choice of a request that asked for several: its rendering (its `index`), its job, and
    whether its prompt's tokens count in the usage (the first of a prompt's `n` choices)."""

    rendering: Rendering
    job_id: str
    counts_prompt: bool


async def _stream_choices(
    services: Services, rendering: Rendering, choices: list[_Choice], keepalive_s: float
) -> AsyncIterator[bytes]:
    """The chunks of several choices' jobs, each as it comes, told apart by their `index`; each
    choice finishes with its own chunk, and `[DONE]` (after the usage, if asked for) follows the last.
    An error in any choice ends the stream with its error chunk (the others' jobs, unread, are canceled
    after the grace, as when a client leaves). A keep-alive comment every `keepalive_s` until the
    first chunk."""
    arrivals: asyncio.Queue[tuple[int, Batch | None]] = asyncio.Queue()  # (each log is the buffer)

    async def read(index: int, job_id: str) -> None:
        try:
            async with tail(services, job_id) as events:
                async for batch in events:
                    arrivals.put_nowait((index, batch))
        finally:  # its last batch (the terminal event) was put first, unless the reading failed
            arrivals.put_nowait((index, None))

    readers = [asyncio.create_task(read(i, choice.job_id)) for i, choice in enumerate(choices)]
    ends: list[tuple[dict[str, Any], bool]] = []
    sent: set[int] = set()  # choices whose first chunk went out
    finished: set[int] = set()  # choices whose `end` went out
    relayed = [[0, 0] for _ in choices]
    try:
        while len(ends) < len(choices):
            try:
                index, batch = await asyncio.wait_for(arrivals.get(), None if sent else keepalive_s)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if batch is None:
                if index in finished:
                    continue
                batch = [StateUnavailable("the job's event log could not be read; retry")]
            choice, out = choices[index], []
            for event in batch:
                if isinstance(event, LogEvent) and event.name == "end":
                    out.append(choice.rendering.finish(orjson.loads(event.data)))
                    ends.append((orjson.loads(event.data), choice.counts_prompt))
                    finished.add(index)
                    break
                first = index not in sent and not out
                if _render(choice.rendering, event, out, first=first, relayed=relayed[index]):
                    yield b"".join(out)  # an error: the stream is over
                    return
            if out:
                sent.add(index)
                yield b"".join(out)
        yield (rendering.usage_total_chunk(total(ends)) if rendering.include_usage else b"") + DONE
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _stream(services: Services, rendering: Rendering, keepalive_s: float) -> AsyncIterator[bytes]:
    """The job's chunks. Until the first one, a keep-alive comment every `keepalive_s` (the log is
    then read in a task of its own, so that a comment can go while it waits; after, in the
    response's)."""
    sent = False
    relayed = [0, 0]  # token events so far (continuous usage counts them), their tokens' characters
    async with tail(services, rendering.job_id) as events:
        waiting: asyncio.Future[Batch] | None = None
        try:
            while True:
                if sent:
                    batch = await anext(events)
                else:
                    waiting = waiting or asyncio.ensure_future(anext(events))
                    if not (await asyncio.wait({waiting}, timeout=keepalive_s))[0]:
                        yield b": keep-alive\n\n"
                        continue
                    batch, waiting = waiting.result(), None
                out: list[bytes] = []
                done = False
                for event in batch:
                    done = _render(rendering, event, out, first=not sent and not out, relayed=relayed)
                    if done:
                        break
                if out:
                    sent = True
                    yield b"".join(out)
                if done:
                    return
        finally:
            if waiting is not None:  # the log's reader stops before the log is closed
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)


def _render(
    rendering: Rendering,
    event: LogEvent | BaseException,
    out: list[bytes],
    *,
    first: bool,
    relayed: list[int],
) -> bool:
    """Append the chunks of one event to `out`; True once the stream is over. `relayed[0]` counts the
    token events so far, `relayed[1]` the characters of the tokens scored so far (`text_offset`)."""
    if isinstance(event, BaseException):  # the state backend went away: the stream cannot go on
        error = openai_error(ErrorKind.STATE_UNAVAILABLE, "the state backend is unreachable; retry")
        out += [error_chunk(error), DONE]
        return True
    if event.name not in ("token", "reasoning", "tool_call", "prompt", "end", "error"):
        return False
    if event.name == "reasoning" and rendering.surface != "chat":
        return False  # a text completion has no field for it
    data: dict[str, Any] = orjson.loads(event.data)
    if first:
        out += _opening(rendering, event.name)
    if event.name == "prompt":  # the prompt, scored (echo with logprobs): its own first chunk
        text = rendering.echo or data.get("text", "")
        out.append(rendering.text(text, data["logprobs"], offset=relayed[1]))
        relayed[1] += _scored(data["logprobs"])
        return False
    if event.name == "token":
        relayed[0] = data["i"] + 1
        out.append(rendering.text(data["t"], data.get("logprobs"), relayed[0], relayed[1]))
        if rendering.logprobs:
            relayed[1] += _scored(data.get("logprobs", ()))
        return False
    if event.name == "reasoning":
        out.append(rendering.reasoning(data["t"], relayed[0]))
        return False
    if event.name == "tool_call":
        out.append(rendering.tool_call(data, relayed[0]))
        return False
    if event.name == "end":
        out.append(rendering.finish(data))
        if rendering.include_usage:
            out.append(rendering.usage_chunk(data))
    else:
        out.append(error_chunk(openai_error(data["code"], data["message"])))
    out.append(DONE)
    return True


def _scored(entries: Sequence[Mapping[str, Any]]) -> int:
    """The characters of the tokens scored in `entries`."""
    return sum(len(entry["token"]) for entry in entries)


def _opening(rendering: Rendering, name: str) -> list[bytes]:
    """What a choice's chunks begin with, before its first event's: chat's role announcement; a
    completion's echoed prompt (when the job did not score it: its `prompt` event is that chunk)."""
    if name == "error":
        return []
    if rendering.surface == "chat":
        return [rendering.first()]
    if rendering.echo and name != "prompt":
        return [rendering.text(rendering.echo)]
    return []


async def _whole_choices(
    request: Request,
    services: Services,
    rendering: Rendering,
    choices: list[_Choice],
    headers: dict[str, str],
) -> Response:
    """Every choice's job collected into one response (a request's one job, or a job a choice); the
    first error, if any choice's job ends in one, is the answer (its status and OpenAI's error object).
    A client that leaves meanwhile cancels them (after the reconnect grace), as a reader that leaves a
    stream does."""
    answers = await unless_gone(request, _collect_all(services, [choice.job_id for choice in choices]))
    if answers is None:
        return Response(status_code=499)  # nobody is there to read it
    for answer in answers:
        if answer.ending == "error":
            response = to_openai_response(from_event(answer.data))
            response.headers.update(headers)
            return response
    whole = rendering.response(
        [
            choice.rendering.choice(
                "".join(answer.parts), answer.data, answer.calls.calls(), answer.logprobs,
                "".join(answer.thoughts),
            )
            for choice, answer in zip(choices, answers, strict=True)
        ],
        total([(answer.data, choice.counts_prompt) for choice, answer in zip(choices, answers, strict=True)]),
    )  # fmt: skip
    return Response(orjson.dumps(whole), media_type="application/json", headers=headers)


@dataclass
class _Answer:
    """A job's whole answer, read from its log: text, reasoning, tool calls, and how it ended."""

    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    calls: ToolCalls = field(default_factory=ToolCalls)
    ending: str = ""
    data: dict[str, Any] = field(default_factory=dict)


async def _collect_all(services: Services, job_ids: list[str]) -> list[_Answer]:
    if len(job_ids) == 1:  # (one job, the common case: no task of its own)
        return [await _collect(services, job_ids[0])]
    return list(await asyncio.gather(*(_collect(services, job_id) for job_id in job_ids)))


async def _collect(services: Services, job_id: str) -> _Answer:
    answer = _Answer()
    async with tail(services, job_id) as events:
        while True:  # (the log's last batch ends the job's answer, or is an error)
            for event in await anext(events):
                if isinstance(event, BaseException):
                    raise event
                if event.name == "token":
                    data = orjson.loads(event.data)
                    answer.parts.append(data["t"])
                    answer.logprobs += data.get("logprobs", ())
                elif event.name == "prompt":  # the prompt's own entries, before the tokens'
                    data = orjson.loads(event.data)
                    answer.logprobs += data["logprobs"]
                    answer.parts.append(data.get("text", ""))  # a prompt of token ids: its text
                elif event.name == "reasoning":
                    answer.thoughts.append(orjson.loads(event.data)["t"])
                elif event.name == "tool_call":
                    answer.calls.add(orjson.loads(event.data))
                elif event.name in ("end", "error"):
                    answer.ending, answer.data = event.name, orjson.loads(event.data)
                    return answer
