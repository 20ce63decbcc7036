"""llama.cpp's ``llama-server``: prompts stream from the native ``POST /completion`` (with a suffix, the
fill-in-the-middle ``POST /infill``, the same stream), messages from its OpenAI-compatible
``/v1/chat/completions`` (wire notes §1). A prompt's log probabilities are the native stream's
``completion_probabilities`` (asked with ``n_probs``; each token's entry in chat's shape, ``token``,
``logprob``, ``top_logprobs``), and its logit bias the native ``{"id": bias}``, so that its end keeps the
native ``stop_type`` (a stop string is told from an end of sequence).
llama-server gives no log probabilities when asked for no alternatives (``n_probs: 0``, chat's
`top_logprobs: 0`): it is asked for one, and the alternatives are cut to what the job asked for.
Tokenizing is its ``/tokenize`` (``content``, ``add_special``: ``tokens``; chat turns first through
``/apply-template``, its chat template with the generation prompt) and ``/detokenize`` (``tokens``:
``content``), of its one model.
Its `tool_choice` is a word (`auto`, `none`, `required`): one that names a function (OpenAI's object,
which llama-server would read as `auto`) is `required` with that function the only tool.

Native stream: one ``data: {…}`` event per token (``content`` may be ``""`` while a UTF-8 character is
incomplete: still one `Token`), then a final event with ``"stop":true`` and ``stop_type``
(``eos`` | ``limit`` | ``word``), then EOF, with no ``[DONE]``. Errors after the 200 arrive as
``data: {"error":{…}}`` (current builds) or as the non-standard ``error: {…}`` field (builds through
2025), both raised here. Health is ``/health`` (503 while the model loads); capacity is ``/props``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import orjson

from worker_adapters._http import HttpAdapter, relay
from worker_adapters._sse import SSEEvent
from worker_adapters._wire import (
    REPEAT,
    as_dict,
    as_int,
    as_str,
    checked_step,
    detokenized,
    error_event,
    logprob_entries,
    openai_messages,
    sampling,
    token_ids,
    wants_chat,
)
from worker_adapters.base import (
    ChatMessage,
    EngineInternal,
    EngineRejected,
    Finished,
    StopReason,
    SubmitRequest,
    Token,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)
from worker_adapters.openai_http import CHAT, openai_embeddings, openai_events, request_body

_STOP_TYPES: dict[str, StopReason] = {"eos": "eos", "limit": "max_tokens", "word": "stop_sequence"}
_LEGACY_STOP_FLAGS: tuple[tuple[str, StopReason], ...] = (
    ("stopped_word", "stop_sequence"),
    ("stopped_limit", "max_tokens"),
    ("stopped_eos", "eos"),
)


def completion_body(req: SubmitRequest) -> dict[str, object]:
    """The native route's body: `/completion`'s, or with a suffix `/infill`'s (the prompt is the text
    before the gap, `input_prefix`; the suffix the text after it, `input_suffix`)."""
    text: dict[str, object] = (
        {"prompt": list(req.prompt_ids) if req.prompt_ids is not None else req.prompt or ""}
        if req.suffix is None
        else {"input_prefix": req.prompt or "", "input_suffix": req.suffix}
    )
    body: dict[str, object] = {
        **text,
        "n_predict": req.max_tokens,
        "stream": True,
        "cache_prompt": True,
    }
    body.update(sampling(req, REPEAT))
    if req.logit_bias is not None:  # id -> bias, as the native routes read it
        body["logit_bias"] = orjson.loads(req.logit_bias)
    if req.logprobs is not None:  # (none at all for 0: one, cut back by the stream)
        body["n_probs"] = max(req.logprobs, 1)
    return body


class NativeStream:
    """One ``/completion`` stream's state: feed it SSE events; `done` after the ``"stop":true`` event."""

    def __init__(self, engine: str, top_logprobs: int | None = None) -> None:
        self.engine = engine
        self.done = False
        self.top_logprobs = top_logprobs  # alternatives kept per token (None: all the engine sent)

    def feed(self, event: SSEEvent) -> list[TokenEvent]:
        if event.type == "error":
            raise error_event(event.data, self.engine)
        step = checked_step(event.data, self.engine)
        content = as_str(step.get("content")) or ""
        if step.get("stop") is True:
            self.done = True
            finished = Finished(
                _stop_reason(step),
                prompt_tokens=as_int(step.get("tokens_evaluated")),
                completion_tokens=as_int(step.get("tokens_predicted")),
            )
            return [Token(content), finished] if content else [finished]
        if "prompt_progress" in step and not content:
            return []  # a prompt-processing progress report (return_progress), not a token
        probabilities = step.get("completion_probabilities")  # with n_probs: this token's entry
        if probabilities is None:
            return [Token(content)]
        return [Token(content, logprob_entries(probabilities, self.top_logprobs))]


def _stop_reason(final: Mapping[str, Any]) -> StopReason:
    stop_type = as_str(final.get("stop_type"))
    if stop_type is not None:
        return _STOP_TYPES.get(stop_type, "eos")
    for flag, reason in _LEGACY_STOP_FLAGS:  # builds before stop_type (2024)
        if final.get(flag) is True:
            return reason
    return "eos"


def forced_tool(body: dict[str, Any], engine: str) -> None:
    """A tool choice naming a function, in the words llama-server reads: that function the only tool,
    and a call `required`."""
    name = as_dict(as_dict(body["tool_choice"]).get("function")).get("name")
    tools = [t for t in body.get("tools") or () if as_dict(as_dict(t).get("function")).get("name") == name]
    if not tools:
        raise EngineRejected(f"{engine}: tool_choice names the function {name!r}, which tools does not list",
                             engine=engine)  # fmt: skip
    body.update(tools=tools, tool_choice="required")


class LlamaCppAdapter(HttpAdapter):
    engine = "llamacpp"

    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        if req.inputs is not None:  # a server started with `--embeddings`
            return openai_embeddings(self.http, req)
        chat = wants_chat(self.config.api, req, self.engine)
        if not chat:
            return self._completion(req)
        body = request_body(req, req.model, chat=True, repeat=REPEAT)
        if isinstance(body.get("tool_choice"), dict):
            forced_tool(body, self.engine)
        if req.logprobs == 0:
            body["top_logprobs"] = 1
        return openai_events(self.http, req, CHAT, body, top_logprobs=req.logprobs)

    def _completion(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        path = "/completion" if req.suffix is None else "/infill"
        events = self.http.sse(req, path, completion_body(req))
        stream = NativeStream(self.engine, req.logprobs)
        return relay(self.http, events, stream, 'a final event with "stop":true')

    tokenizes = True  # llama-server's own /tokenize, /detokenize and /apply-template (`Tokenizer`)

    async def tokenize(
        self, model: str, prompt: str | Sequence[ChatMessage], *, add_special: bool | None = None
    ) -> list[int]:
        if not isinstance(prompt, str):  # the chat template's prompt (with the generation prompt)
            turns = {"messages": openai_messages(prompt)}
            text = as_str(as_dict(await self.http.get_json("/apply-template", turns)).get("prompt"))
            if text is None:
                message = f"{self.engine} answered /apply-template without a prompt"
                raise EngineInternal(message, engine=self.engine)
            prompt = text
        # (llama-server reads every prompt it generates from with its special tokens)
        body = {"content": prompt, "add_special": True if add_special is None else add_special}
        return token_ids(as_dict(await self.http.get_json("/tokenize", body)).get("tokens"), self.engine)

    async def detokenize(self, model: str, ids: Sequence[int]) -> str:
        answer = as_dict(await self.http.get_json("/detokenize", {"tokens": list(ids)}))
        return detokenized(answer.get("content"), self.engine)

    async def health(self) -> WorkerHealth:
        return await self.http.probe("/health")

    async def props(self) -> WorkerProps:
        props = as_dict(await self.http.get_json("/props"))
        settings = as_dict(props.get("default_generation_settings"))
        # The server's `--n-predict` (when positive) caps every request's n_predict without a word: a
        # job asking for more would end early with `stop_type: limit`, so admission must know it.
        n_predict = as_int(as_dict(settings.get("params")).get("n_predict"))
        return WorkerProps(  # no `models`: llama-server serves its one model whatever a request names
            slots=as_int(props.get("total_slots")),
            ctx_max=as_int(settings.get("n_ctx")),
            engine_version=as_str(props.get("build_info")),
            max_tokens_out=n_predict if n_predict and n_predict > 0 else None,
        )
