"""Ollama's native API: ``POST /api/generate`` (prompt) and ``POST /api/chat`` (messages), streamed as
NDJSON (wire notes §4).

One JSON object per line: ``response`` (generate) or ``message.content`` (chat) with ``"done":false``,
then one ``"done":true`` object with ``done_reason`` (``stop`` | ``length``) and the counts
``prompt_eval_count`` / ``eval_count`` (omitted when zero), then EOF. A failure after the 200 is one
``{"error":"…"}`` line. Health is ``/api/tags`` (is the model installed?), the version ``/api/version``.

Limits: ``/api/show`` tells each model's trained context (``<arch>.context_length``) and the Modelfile's
``num_ctx`` and ``num_predict``. Ollama runs a request with the context its ``options.num_ctx`` names
(else the Modelfile's, else the server's default) and silently drops the start of a prompt that does
not fit; so every request names ``num_ctx``: the pool's configured ``ctx_max``, or the model's own
context where that is smaller. The engine then has exactly the context admission checked the job
against. ``/api/show`` is asked again only when a model's digest in ``/api/tags`` changes.

Structured output: a job's ``response_format`` becomes Ollama's ``format`` (``"json"``, or the JSON
schema), on both routes.

Tools (``/api/chat``): ``tools`` as they are (none for ``tool_choice: none``; Ollama has no other
choice). Ollama sends each call whole, its ``arguments`` a JSON object and maybe no id: one
`ToolCallDelta` each (the arguments as JSON text, an id made here when Ollama gives none), and a
``done_reason`` ``stop`` after calls ends the turn with ``tool_calls``. Turns sent back go in Ollama's
shape (`ollama_messages`).

Thinking: a job's ``reasoning_effort`` becomes Ollama's ``think``, as Ollama's own OpenAI layer maps it
(``none`` turns thinking off), but only for a model whose ``/api/show`` capabilities say ``thinking``:
Ollama refuses ``think`` for any other model ("… does not support thinking"), which thinks not at all
whatever the effort. Effort levels (``low``, ``medium``, ``high``; ``minimal`` as ``low``) go to gpt-oss,
the one architecture that reads them (and the one every Ollama release takes them for); another
thinking model gets ``true``.

Log probabilities (Ollama 0.12.11 and later, on both routes): ``logprobs: true`` and ``top_logprobs``
(alternatives, when the job asks for any); each line then carries ``logprobs``, one
``{token, logprob, bytes, top_logprobs}`` per token in it. An older Ollama ignores both fields, so a job
that asks for them on a replica whose ``/api/version`` is older is refused, saying so, not answered
without them.

Fill-in-the-middle: a job's ``suffix`` goes as ``/api/generate``'s own, never with ``raw`` (the model's
template alone knows its FIM tokens, and Ollama reads no suffix in raw mode); Ollama refuses it for a
model whose template takes none (HTTP 400, "… does not support insert"), which the client gets.

Options: ``raw`` (send prompts without the model's template, ``/api/generate``'s ``raw: true``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx2

from worker_adapters._http import HttpAdapter, relay
from worker_adapters._wire import (
    REPEAT,
    as_dict,
    as_int,
    as_str,
    chat_messages,
    checked_step,
    embedded,
    logprob_entries,
    option_bool,
    sampling,
    wants_chat,
)
from worker_adapters.base import (
    AdapterConfig,
    EngineRejected,
    Finished,
    Reasoning,
    StopReason,
    SubmitRequest,
    Token,
    TokenEvent,
    ToolCallDelta,
    WorkerHealth,
    WorkerProps,
)

_DONE_REASONS: dict[str, StopReason] = {"stop": "eos", "length": "max_tokens"}
LOGPROBS_SINCE = (0, 12, 11)  # the first Ollama release that reports log probabilities


def ollama_body(
    req: SubmitRequest,
    model: str,
    *,
    chat: bool,
    raw: bool,
    num_ctx: int | None = None,
    facts: ModelFacts | None = None,
) -> dict[str, object]:
    body: dict[str, object] = {"model": model}
    if chat:
        body["messages"] = ollama_messages(req)
        if req.tools is not None and req.tool_choice != '"none"':  # `none`: the model calls nothing
            body["tools"] = json.loads(req.tools)
    else:
        body["prompt"] = req.prompt or ""
        if req.suffix is not None:  # rendered by the model's template, which alone knows its FIM tokens
            body["suffix"] = req.suffix
        elif raw:
            body["raw"] = True
    options: dict[str, object] = {"num_predict": req.max_tokens, **sampling(req, REPEAT)}
    if num_ctx is not None:
        options["num_ctx"] = num_ctx
    body.update(stream=True, options=options)
    if req.response_format is not None:
        body["format"] = output_format(json.loads(req.response_format))
    if req.reasoning_effort is not None and facts is not None and facts.thinks:
        body["think"] = think(req.reasoning_effort, levels=facts.effort_levels)
    if req.logprobs is not None:
        body["logprobs"] = True
        if req.logprobs:
            body["top_logprobs"] = req.logprobs
    return body


def release(version: str | None) -> tuple[int, ...] | None:
    """An Ollama version as numbers ("0.12.11-rc1" -> (0, 12, 11)); None when it tells none (a build
    from source reports 0.0.0)."""
    numbers: list[int] = []
    for part in (version or "").split("-")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) if any(numbers) else None


def ollama_messages(req: SubmitRequest) -> list[dict[str, object]]:
    """The turns in Ollama's shape: OpenAI's, but a call's `arguments` are a JSON object (not text) and
    a tool result names its function (`tool_name`), as Ollama's chat templates read them."""
    turns = chat_messages(req)
    called: dict[str, str] = {}  # call id -> function name
    for turn in turns:
        calls = turn.get("tool_calls")
        if isinstance(calls, list):
            turn["content"] = turn.get("content") or ""
            turn["tool_calls"] = [_ollama_call(call, called) for call in calls]
        elif turn.get("role") == "tool" and turn.get("tool_call_id") in called:
            turn["tool_name"] = called[str(turn["tool_call_id"])]
    return turns


def _ollama_call(call: Mapping[str, Any], called: dict[str, str]) -> dict[str, object]:
    function = as_dict(call.get("function"))
    name = as_str(function.get("name")) or ""
    text = as_str(function.get("arguments")) or "{}"
    try:
        arguments: object = json.loads(text)
    except ValueError:
        arguments = text  # not JSON: Ollama says so (400), the job fails naming it
    out: dict[str, object] = {"function": {"name": name, "arguments": arguments}}
    if call_id := as_str(call.get("id")):
        called[call_id] = name
        out["id"] = call_id
    return out


def output_format(response_format: dict[str, Any]) -> object:
    """Ollama's `format` for an OpenAI `response_format`: "json" for any JSON object, the schema itself
    for a JSON schema (Ollama has no name or strict flag: its output always follows the schema)."""
    if response_format.get("type") == "json_schema":
        return as_dict(response_format.get("json_schema")).get("schema", {})
    return "json"


def think(effort: str, *, levels: bool) -> bool | str:
    """Ollama's `think` for an OpenAI `reasoning_effort`, for a model that thinks."""
    if effort == "none":
        return False
    if not levels:
        return True
    return "low" if effort == "minimal" else effort


class OllamaStream:
    """One NDJSON stream's state: feed it lines; `done` after the ``"done":true`` object."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.done = False
        self.calls = 0  # tool calls so far: Ollama sends each whole, with no index

    def feed(self, line: str) -> list[TokenEvent]:
        step = checked_step(line, self.engine)
        text = as_str(step.get("response"))
        message = step if text is not None else as_dict(step.get("message"))
        if text is None:
            text = as_str(message.get("content")) or ""
        # a thinking model's reasoning (`thinking`, beside `response` or in `message`) comes apart
        thought = as_str(message.get("thinking"))
        events: list[TokenEvent] = [Reasoning(thought)] if thought else []
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            events += [self._call(as_dict(call)) for call in calls]
        if step.get("done") is not True:
            if not events or text:
                events.append(self._token(text, step))
            return events
        self.done = True
        if text:
            events.append(self._token(text, step))
        finished = _finished(step)
        if self.calls and finished.stop_reason == "eos":  # the model ended its turn with its calls
            finished = replace(finished, stop_reason="tool_calls")
        events.append(finished)
        return events

    @staticmethod
    def _token(text: str, step: Mapping[str, Any]) -> Token:
        """The line's text, with the log probabilities of the tokens it holds where Ollama sent them."""
        logprobs = step.get("logprobs")
        return Token(text, logprob_entries(logprobs)) if logprobs else Token(text)

    def _call(self, call: Mapping[str, Any]) -> ToolCallDelta:
        """One whole call, as one fragment: its id (Ollama's, where it gives one), name and arguments."""
        function = as_dict(call.get("function"))
        arguments = function.get("arguments")
        index, self.calls = self.calls, self.calls + 1
        return ToolCallDelta(
            index,
            id=as_str(call.get("id")) or f"call_{secrets.token_hex(12)}",
            name=as_str(function.get("name")) or "",
            arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
        )


def _finished(final: Mapping[str, Any]) -> Finished:
    return Finished(
        _DONE_REASONS.get(as_str(final.get("done_reason")) or "", "eos"),
        prompt_tokens=as_int(final.get("prompt_eval_count")),
        completion_tokens=as_int(final.get("eval_count")),
    )


@dataclass(frozen=True, slots=True)
class ModelFacts:
    ctx: int | None  # the Modelfile's num_ctx, else the model's trained context
    max_out: int | None  # the Modelfile's num_predict, when positive
    thinks: bool = False  # its capabilities say `thinking`: Ollama takes `think` for it
    effort_levels: bool = False  # gpt-oss: `think` takes "low", "medium" and "high"


def show_facts(show: object) -> ModelFacts:
    """What a model's ``/api/show`` answer tells: its limits, and whether and how it thinks."""
    show = as_dict(show)
    info = as_dict(show.get("model_info"))
    architecture = as_str(info.get("general.architecture"))
    trained = as_int(info.get(f"{architecture}.context_length"))
    parameters: dict[str, str] = {}
    for line in (as_str(show.get("parameters")) or "").splitlines():
        key, _, value = line.strip().partition(" ")
        parameters.setdefault(key, value.strip())
    num_ctx, num_predict = _int(parameters.get("num_ctx")), _int(parameters.get("num_predict"))
    positive = num_predict if num_predict and num_predict > 0 else None
    capabilities = show.get("capabilities")
    thinks = isinstance(capabilities, list) and "thinking" in capabilities
    return ModelFacts(
        ctx=num_ctx or trained, max_out=positive, thinks=thinks, effort_levels=architecture == "gptoss"
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def model_digests(tags: object) -> dict[str, str]:
    """Installed model name -> digest, from ``/api/tags``."""
    entries = [as_dict(entry) for entry in as_dict(tags).get("models") or ()]
    return {
        name: as_str(entry.get("digest")) or ""
        for entry in entries
        if (name := as_str(entry.get("name")) or as_str(entry.get("model")))
    }


def model_names(tags: object) -> tuple[str, ...]:
    entries = [as_dict(entry) for entry in as_dict(tags).get("models") or ()]
    return tuple(
        name for entry in entries if (name := as_str(entry.get("name")) or as_str(entry.get("model")))
    )


def answers_to(installed: tuple[str, ...]) -> tuple[str, ...]:
    """The names Ollama answers to: each installed model, and a `:latest` one by its bare name too."""
    bare = tuple(name.removesuffix(":latest") for name in installed if name.endswith(":latest"))
    return installed + bare


class OllamaAdapter(HttpAdapter):
    engine = "ollama"

    def __init__(self, config: AdapterConfig, *, client: httpx2.AsyncClient | None = None) -> None:
        super().__init__(config, client=client)
        self._facts: dict[str, tuple[str, ModelFacts]] = {}  # model -> (digest, what /api/show told)
        self._version: str | None = None  # what /api/version told

    def facts(self, model: str) -> ModelFacts | None:
        known = self._facts.get(model) or self._facts.get(f"{model}:latest")
        return known[1] if known else None

    def num_ctx(self, model: str) -> int | None:
        """The context to ask for: the pool's ceiling, or the model's own where that is smaller."""
        known = self.facts(model)
        sizes = [n for n in (self.config.ctx_max, known.ctx if known else None) if n]
        return min(sizes) if sizes else None

    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        if req.inputs is not None:
            return self._embed(req)
        if req.logprobs is not None and (known := release(self._version)) and known < LOGPROBS_SINCE:
            raise EngineRejected(
                f"ollama {self._version} reports no log probabilities (Ollama 0.12.11 and later do): "
                "upgrade it, or leave logprobs out",
                engine=self.engine,
            )
        chat = wants_chat(self.config.api, req, self.engine)
        raw = option_bool(self.config.options, "raw")
        body = ollama_body(
            req, req.model, chat=chat, raw=raw, num_ctx=self.num_ctx(req.model), facts=self.facts(req.model)
        )
        lines = self.http.ndjson(req, "/api/chat" if chat else "/api/generate", body)
        return relay(self.http, lines, OllamaStream(self.engine), 'a final object with "done":true')

    async def _embed(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        """``POST /api/embed`` with every input: ``embeddings`` in the inputs' order, and the count of
        the tokens read, ``prompt_eval_count``. `truncate: false`: an input longer than the context is
        refused (HTTP 400), as OpenAI refuses it, not cut without a word (Ollama's default). A job's
        `dimensions` goes as Ollama's own (an Ollama that ignores it is caught by `embedded`)."""
        body: dict[str, object] = {"model": req.model, "input": list(req.inputs or ()), "truncate": False}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        if (num_ctx := self.num_ctx(req.model)) is not None:
            body["options"] = {"num_ctx": num_ctx}
        answer = await self.http.post_json(req, "/api/embed", body)
        prompt_tokens = as_int(answer.get("prompt_eval_count"))
        for event in embedded(answer.get("embeddings"), req, self.engine, prompt_tokens):
            yield event

    async def health(self) -> WorkerHealth:
        return await self.http.probe("/api/tags", self._model_missing)

    def _model_missing(self, body: bytes) -> str | None:
        """Unready while none of the pool's models is installed (placement offers a job only to a
        replica that has its model: `props`)."""
        wanted = self.config.served
        try:
            installed = model_names(json.loads(body))
        except ValueError:
            return "GET /api/tags did not answer JSON"
        if not any(wanted) or set(wanted) & set(answers_to(installed)):
            return None
        names = ", ".join(repr(m) for m in wanted)
        return f"model {names} is not installed (installed: {', '.join(installed) or 'none'})"

    async def props(self) -> WorkerProps:
        digests = model_digests(await self.http.get_json("/api/tags"))
        version = self._version = as_str(as_dict(await self.http.get_json("/api/version")).get("version"))
        wanted = set(self.config.served)
        served = [name for name in digests if {name, name.removesuffix(":latest")} & wanted]
        for name in served:
            cached = self._facts.get(name)
            if cached is None or cached[0] != digests[name]:  # new, or pulled again since
                facts = show_facts(await self.http.get_json("/api/show", {"model": name}))
                self._facts[name] = (digests[name], facts)
        known = [self._facts[name][1] for name in served]
        ctx = [n for model in known if (n := model.ctx)]
        out = [n for model in known if (n := model.max_out)]
        return WorkerProps(
            models=answers_to(tuple(digests)),
            engine_version=version,
            ctx_max=min(ctx) if ctx else None,
            max_tokens_out=min(out) if out else None,
        )
