"""OpenAI-compatible engines (llama-cpp-python, LM Studio, OpenAI itself, …): streamed
``/v1/completions`` and ``/v1/chat/completions``.

The stream mapping (`OpenAIStream`, `openai_events`) is shared with the engines whose chat route speaks
this dialect (llama.cpp, vLLM, TGI). One chunk with a text field is one `Token`, even when the text is
empty (llama-cpp-python sends one chunk per token, ``""`` while a UTF-8 character is incomplete); the
role announcement and chunks without a text field (finish-only ``delta: {}``, usage with
``choices: []``) are not tokens. A chunk with ``finish_reason`` and empty text is a token only where the
engine's last decode step finishes the stream (`final_step_chunks`: vLLM and TGI, whose EOS step is
that chunk); elsewhere it is a bare finish (llama-cpp-python always ends with ``"text": ""`` and the
finish reason, after every token went out; llama.cpp's streamed final completion chunk does the same).
``data: [DONE]`` is the terminal mark; every event is checked for a top-level ``error`` first (wire
notes §8.7).

Options: ``api_key`` (sent as ``Authorization: Bearer``), ``health_path`` (default ``/v1/models``),
``sampling_extensions`` (the server takes vLLM's ``top_k``, ``min_p`` and a repetition penalty, under the
name given: ``repetition_penalty`` or ``true``, or llama-cpp-python's ``repeat_penalty``),
``json_schema`` (``json_object``: a `response_format` of type ``json_schema`` goes as
``{"type": "json_object", "schema": ...}``, the shape llama-cpp-python's server samples a schema under;
it refuses OpenAI's own), ``tokenizer`` (``vllm``: the server has vLLM's ``/tokenize`` and
``/detokenize``, which orchestratord's own tokenizing routes then ask: vLLM behind a generic pool,
another orchestratord).

The engine's version, where it tells one: ``GET /version`` (vLLM, SGLang), else the ``info.version`` of
``GET /openapi.json`` (FastAPI servers: llama-cpp-python reports its own release). Asked once, and again
after the engine was seen down (a restart may be an upgrade); an engine that tells neither has none.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import orjson

from worker_adapters._http import EngineHTTP, HttpAdapter, relay
from worker_adapters._sse import SSEEvent
from worker_adapters._wire import (
    REPETITION,
    alternatives,
    as_dict,
    as_int,
    as_str,
    chat_messages,
    checked_step,
    detokenized,
    embedded,
    error_event,
    logprob_entries,
    openai_messages,
    option_str,
    sampling,
    scored,
    token_ids,
    wants_chat,
)
from worker_adapters.base import (
    AdapterError,
    ChatMessage,
    EngineInternal,
    EngineRejected,
    EngineReset,
    Finished,
    PromptLogprobs,
    Reasoning,
    StopReason,
    SubmitRequest,
    Token,
    TokenEvent,
    TokenLogprob,
    ToolCallDelta,
    WorkerHealth,
    WorkerProps,
)
from worker_adapters.registry import penalty_name, tokenizer_routes

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_FINISH: dict[str, StopReason] = {
    "stop": "eos",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",  # TGI's chat route
    "eos_token": "eos",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "eos",
}


def request_body(
    req: SubmitRequest, model: str, *, chat: bool, repeat: str = REPETITION
) -> dict[str, object]:
    body: dict[str, object] = {"model": model}
    if chat:
        body["messages"] = chat_messages(req, names=True)
    else:
        body["prompt"] = list(req.prompt_ids) if req.prompt_ids is not None else req.prompt or ""
        if req.suffix is not None:
            body["suffix"] = req.suffix
    body.update(max_tokens=req.max_tokens, stream=True, stream_options={"include_usage": True})
    body.update(sampling(req, repeat))
    for name in ("tools", "tool_choice", "response_format", "logit_bias"):
        value = getattr(req, name)
        if value is not None:
            body[name] = orjson.loads(value)
    if chat and req.tools is not None and req.single_tool_call:
        body["parallel_tool_calls"] = False
    if chat and req.reasoning_effort is not None:
        body["reasoning_effort"] = req.reasoning_effort
    if chat and req.chat_template_kwargs is not None:
        body["chat_template_kwargs"] = orjson.loads(req.chat_template_kwargs)
    if req.logprobs is not None:
        body.update({"logprobs": True, "top_logprobs": req.logprobs} if chat else {"logprobs": req.logprobs})
    return body


class OpenAIStream:
    """One OpenAI-dialect stream's state: feed it SSE events, get tokens; `done` after ``[DONE]``."""

    def __init__(
        self, engine: str, *, final_step_chunks: bool = False, top_logprobs: int | None = None
    ) -> None:
        self.engine = engine
        self.final_step_chunks = final_step_chunks
        self.top_logprobs = top_logprobs  # alternatives kept per token (None: all the engine sent)
        self.done = False
        self._started = False
        self._finish: StopReason | None = None
        self._usage: Mapping[str, Any] = {}

    def feed(self, event: SSEEvent) -> list[TokenEvent]:
        if event.type == "error":  # `event: error` (OpenAI) or llama.cpp's old `error:` field
            raise error_event(event.data, self.engine)
        if event.data == "[DONE]":
            self.done = True
            return [self._finished()]
        chunk = checked_step(event.data, self.engine)
        usage = chunk.get("usage")
        if isinstance(usage, dict):  # decoded JSON: `dict` is every object, and a cheaper check than Mapping
            self._usage = usage
        out: list[TokenEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # we ask for one choice
            finish = choice.get("finish_reason")
            delta = choice.get("delta")
            thought = (
                delta.get("reasoning") or delta.get("reasoning_content") if isinstance(delta, dict) else None
            )
            if thought and isinstance(thought, str):  # before the text: the model thinks, then answers
                self._started = True
                out.append(Reasoning(thought))
            text = self._text(choice, finish)
            if text is not None:
                self._started = True
                out.append(Token(text, token_logprobs(choice.get("logprobs"), self.top_logprobs)))
            if isinstance(delta, dict) and delta.get("tool_calls"):
                self._started = True
                out += tool_call_deltas(delta["tool_calls"])
            if finish and isinstance(finish, str):
                self._finish = self._stop_reason(finish, choice)
        return out

    def _text(self, choice: dict[str, Any], finish: object) -> str | None:
        delta = choice.get("delta")
        if delta is None:
            text = choice.get("text")
        else:
            delta = delta if isinstance(delta, dict) else {}
            text = delta.get("content")
            if text == "" and "role" in delta and not finish and not self._started:
                return None  # the role announcement that opens a chat stream (vLLM: content "")
        if not isinstance(text, str):
            return None
        if text == "" and finish and not self.final_step_chunks:
            return None  # a bare finish: every token went out before it
        return text

    def _stop_reason(self, reason: str, choice: Mapping[str, Any]) -> StopReason:
        return stop_reason(self.engine, reason, choice)

    def _finished(self) -> Finished:
        if self._finish is None:
            raise EngineReset(f"{self.engine} sent [DONE] without a finish_reason", engine=self.engine)
        return Finished(
            self._finish,
            prompt_tokens=as_int(self._usage.get("prompt_tokens")),
            completion_tokens=as_int(self._usage.get("completion_tokens")),
        )


def stop_reason(engine: str, reason: str, choice: Mapping[str, Any]) -> StopReason:
    """Our stop reason for a choice's `finish_reason` (vLLM's `stop_reason`, the matched stop string,
    makes `stop` a stop sequence); an engine's `error` or `abort` is its failure."""
    if reason == "error":  # OpenRouter
        raise EngineInternal(f"{engine} ended the stream with finish_reason 'error'", engine=engine)
    if reason == "abort":  # vLLM
        raise EngineReset(f"{engine} aborted the request", engine=engine)
    if reason == "stop" and isinstance(choice.get("stop_reason"), str):
        return "stop_sequence"  # vLLM names the matched stop string
    return _FINISH.get(reason, "eos")


def token_logprobs(logprobs: object, top: int | None = None) -> tuple[TokenLogprob, ...]:
    """A choice's `logprobs`, in either dialect: chat's ``{"content": [{token, logprob, top_logprobs:
    [{token, logprob}]}]}`` (llama-server answers completions so too) or completions' ``{"tokens": [...],
    "token_logprobs": [...], "top_logprobs": [{token: logprob}]}``. Entries an engine left incomplete
    are skipped; `top`, when given, keeps that many alternatives of each."""
    if not isinstance(logprobs, dict):
        return ()
    content = logprobs.get("content")
    if isinstance(content, list):
        return logprob_entries(content, top)
    tokens, scores = logprobs.get("tokens") or (), logprobs.get("token_logprobs") or ()
    tops = logprobs.get("top_logprobs") or ()
    if not (isinstance(tokens, list) and isinstance(scores, list) and isinstance(tops, list)):
        return ()
    tops = tops + [None] * (len(tokens) - len(tops))
    return tuple(
        TokenLogprob(token, score, alternatives(others)[:top])
        for token, score, others in zip(tokens, scores, tops, strict=False)
        if scored(token, score)
    )


def tool_call_deltas(calls: object) -> list[TokenEvent]:
    """`delta.tool_calls` fragments (`[{index, id?, type?, function: {name?, arguments?}}]`)."""
    out: list[TokenEvent] = []
    for call in calls if isinstance(calls, list) else ():
        call = as_dict(call)
        function = as_dict(call.get("function"))
        index = as_int(call.get("index"))
        arguments = function.get("arguments")
        out.append(
            ToolCallDelta(
                index=0 if index is None else index,
                id=as_str(call.get("id")),
                name=as_str(function.get("name")),
                arguments=arguments if isinstance(arguments, str) else "",
            )
        )
    return out


async def openai_embeddings(http: EngineHTTP, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
    """An embeddings job on an OpenAI-dialect engine: ``POST /v1/embeddings`` with every input, the
    vectors as floats (``data[].embedding``, put in the inputs' order by ``index``)."""
    body: dict[str, object] = {
        "model": req.model,
        "input": list(req.inputs or ()),
        "encoding_format": "float",
    }
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    answer = await http.post_json(req, EMBEDDINGS, body)
    data = [as_dict(item) for item in answer.get("data") or ()]
    data.sort(key=lambda item: as_int(item.get("index")) or 0)
    usage = as_dict(answer.get("usage"))
    for event in embedded(
        [item.get("embedding") for item in data], req, http.engine, as_int(usage.get("prompt_tokens"))
    ):
        yield event


async def scored_prompt(
    http: EngineHTTP, req: SubmitRequest, body: Mapping[str, object], *, chat: bool = False
) -> AsyncGenerator[TokenEvent, None]:
    """A completion that scores its prompt too (`req.prompt_logprobs`: OpenAI completions' `echo` with
    `logprobs`, which vLLM and llama-cpp-python answer with the prompt's tokens first, the first with
    no log probability). Asked whole (`stream: false`): only the answer's `usage.prompt_tokens` tells
    where the prompt's entries end and the completion's begin. The engine's text begins with the
    prompt; what follows it is the completion's one `Token`. A replica that serves chat only (`api:
    chat`) has no prompt to score: refused, saying so, rather than answered without the scores."""
    if chat:
        raise EngineRejected(
            f"{http.engine}: this replica serves chat only (its pool's api is chat), which echoes no "
            "prompt: echo with logprobs needs a completions route",
            engine=http.engine,
        )
    asked = {key: value for key, value in body.items() if key != "stream_options"}
    asked.update(stream=False, echo=True, logprobs=req.prompt_logprobs)
    answer = await http.post_json(req, COMPLETIONS, asked)
    choice = next((as_dict(c) for c in answer.get("choices") or () if as_dict(c).get("index", 0) == 0), {})
    usage = as_dict(answer.get("usage"))
    count = as_int(usage.get("prompt_tokens"))
    text, logprobs = as_str(choice.get("text")), as_dict(choice.get("logprobs"))
    tokens, scores = logprobs.get("tokens"), logprobs.get("token_logprobs")
    tops = logprobs.get("top_logprobs") or []
    if (
        count is None or text is None
        or not isinstance(tokens, list) or not isinstance(scores, list) or not isinstance(tops, list)
        or not 0 < count <= len(tokens) == len(scores) or not isinstance(tokens[0], str)
        or not all(scored(token, score) for token, score in zip(tokens[1:], scores[1:], strict=True))
        or (prompt := _echoed(req, text, logprobs.get("text_offset"), tokens, count)) is None
    ):  # fmt: skip
        raise EngineInternal(
            f"{http.engine} did not answer the prompt's log probabilities (echo with logprobs): it "
            "sent no usage.prompt_tokens, no logprobs for them, or a text that does not begin with the "
            "prompt",
            engine=http.engine,
        )
    tops = (tops + [None] * len(tokens))[: len(tokens)]
    entries = [
        TokenLogprob(token, score, alternatives(others))
        for token, score, others in zip(tokens[1:], scores[1:], tops[1:], strict=True)
    ]
    decoded = prompt if req.prompt_ids is not None else None  # a text prompt's is the client's own
    yield PromptLogprobs(tokens[0], tuple(entries[: count - 1]), decoded)
    yield Token(text[len(prompt) :], tuple(entries[count - 1 :]))
    reason = as_str(choice.get("finish_reason")) or "stop"
    yield Finished(
        stop_reason(http.engine, reason, choice),
        prompt_tokens=count,
        completion_tokens=as_int(usage.get("completion_tokens")),
    )


def _echoed(req: SubmitRequest, text: str, offsets: object, tokens: list[Any], count: int) -> str | None:
    """The prompt at the start of an echoed `text`: a text prompt as it was sent (None if `text` does
    not begin with it); a prompt of token ids as the engine decoded it, up to the first completion
    token's `text_offset` (vLLM, OpenAI), else its tokens' texts joined."""
    if req.prompt_ids is None:
        prompt = req.prompt or ""
        return prompt if text.startswith(prompt) else None
    if isinstance(offsets, list) and len(offsets) > count and isinstance(offsets[count], int):
        return text[: offsets[count]]
    joined = "".join(token for token in tokens[:count] if isinstance(token, str))
    return joined if text.startswith(joined) else None


def openai_events(
    http: EngineHTTP,
    req: SubmitRequest,
    path: str,
    body: Mapping[str, object],
    *,
    final_step_chunks: bool = False,
    top_logprobs: int | None = None,
) -> AsyncGenerator[TokenEvent, None]:
    """Stream `body` to an OpenAI-dialect `path` and map it; EOF before ``[DONE]`` is `EngineReset`."""
    stream = OpenAIStream(http.engine, final_step_chunks=final_step_chunks, top_logprobs=top_logprobs)
    return relay(http, http.sse(req, path, body), stream, "data: [DONE]")


def models_of(listing: object) -> tuple[tuple[str, ...], int | None]:
    """Model ids and the largest ``max_model_len`` (vLLM) from a ``/v1/models`` answer."""
    entries = [as_dict(entry) for entry in as_dict(listing).get("data") or ()]
    ids = tuple(str(entry["id"]) for entry in entries if "id" in entry)
    lengths = [n for entry in entries if (n := as_int(entry.get("max_model_len"))) is not None]
    return ids, max(lengths) if lengths else None


class OpenAIAdapter(HttpAdapter):
    """A generic OpenAI-compatible server; ``api`` picks the route (``auto``: by the request's shape)."""

    engine = "openai"
    default_health_path = "/v1/models"
    final_step_chunks = False  # see the module docstring
    _version: str | None = None  # "" once asked and not told

    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        if req.inputs is not None:
            return openai_embeddings(self.http, req)
        chat = wants_chat(self.config.api, req, self.engine)
        body = request_body(req, req.model, chat=chat, repeat=penalty_name(self.config.options) or REPETITION)
        if "response_format" in body and option_str(self.config.options, "json_schema") == "json_object":
            body["response_format"] = schema_in_json_object(body["response_format"])
        if req.prompt_logprobs is not None:
            return scored_prompt(self.http, req, body, chat=chat)
        path = CHAT if chat else COMPLETIONS
        return openai_events(self.http, req, path, body, final_step_chunks=self.final_step_chunks)

    @property
    def tokenizes(self) -> bool:
        """Whether the server has vLLM's `/tokenize` and `/detokenize` (`Tokenizer`): a generic server
        only when its pool says so (`tokenizer: vllm`: vLLM behind a generic pool, another
        orchestratord)."""
        return tokenizer_routes(self.config.options) == "vllm"

    async def tokenize(
        self, model: str, prompt: str | Sequence[ChatMessage], *, add_special: bool | None = None
    ) -> list[int]:
        """vLLM's `/tokenize`: a text, or chat turns in its chat form (its template with the generation
        prompt, no special tokens unless asked: what a generation reads)."""
        body: dict[str, object] = {"model": model}
        if isinstance(prompt, str):
            body.update(prompt=prompt, add_special_tokens=True if add_special is None else add_special)
        else:
            body.update(messages=openai_messages(prompt), add_generation_prompt=True)
            if add_special is not None:
                body["add_special_tokens"] = add_special
        return token_ids(as_dict(await self.http.get_json("/tokenize", body)).get("tokens"), self.engine)

    async def detokenize(self, model: str, ids: Sequence[int]) -> str:
        answer = as_dict(await self.http.get_json("/detokenize", {"model": model, "tokens": list(ids)}))
        return detokenized(answer.get("prompt"), self.engine)

    async def health(self) -> WorkerHealth:
        path = option_str(self.config.options, "health_path") or self.default_health_path
        health = await self.http.probe(path)
        if not health.live:
            self._version = None  # ask again when it is back
        return health

    async def props(self) -> WorkerProps:
        models, ctx_max = models_of(await self.http.get_json("/v1/models"))
        return WorkerProps(models=models, ctx_max=ctx_max, engine_version=await self.engine_version())

    async def engine_version(self) -> str | None:
        if self._version is None:
            self._version = ""
            for path, read in (("/version", _top_version), ("/openapi.json", _openapi_version)):
                try:
                    told = read(await self.http.get_json(path))
                except AdapterError:
                    continue
                if told:
                    self._version = told
                    break
        return self._version or None


def schema_in_json_object(response_format: object) -> object:
    """OpenAI's ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` as
    ``{"type": "json_object", "schema": <schema>}`` (llama-cpp-python); any other format as it is."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return response_format
    schema = as_dict(response_format.get("json_schema")).get("schema")
    return {"type": "json_object", **({"schema": schema} if schema is not None else {})}


def _top_version(answer: object) -> str | None:
    return as_str(as_dict(answer).get("version"))


def _openapi_version(answer: object) -> str | None:
    return as_str(as_dict(as_dict(answer).get("info")).get("version"))
