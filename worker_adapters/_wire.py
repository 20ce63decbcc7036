"""Reading engine JSON: decoding events, classifying the engines' error shapes, reading options.

Pure (no I/O). The HTTP-status and in-stream error paths share one classification, so a 400 before the
stream and an in-stream ``{"error":{"code":400,…}}`` become the same `EngineRejected`.

Streamed objects are decoded with orjson (a third of the stdlib's CPU per token); what orjson refuses is
tried again with the stdlib, so the JSON accepted stays the stdlib's: ``NaN`` and ``Infinity``
(llama-cpp-python's ``json.dumps`` writes them), lone surrogate escapes, numbers beyond the float range.
One divergence: orjson reads an integer beyond 64 bits as a float, so such a count is not taken as one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from worker_adapters.base import (
    AdapterError,
    ChatMessage,
    Embedding,
    EngineInternal,
    EngineRejected,
    EngineUnavailable,
    Finished,
    SubmitRequest,
    TokenEvent,
    TokenLogprob,
)

# 501: what the engine cannot do with this model (llama-server's `/infill` for a model without
# fill-in-the-middle tokens, `not_supported_error`), not its failure
_REJECTED_STATUS = frozenset({400, 413, 422, 501})
_UNAVAILABLE_STATUS = frozenset({429, 503})
_REJECTED_TYPES = frozenset(
    {
        "invalid_request_error",  # llama.cpp, OpenAI
        "exceed_context_size_error",  # llama.cpp
        "not_supported_error",  # llama.cpp
        "BadRequestError",  # vLLM
        "validation",  # TGI
        "template_error",  # TGI
        "missing_template_variable",  # TGI
        "tool_error",  # TGI
    }
)
_UNAVAILABLE_TYPES = frozenset(
    {"unavailable_error", "overloaded", "overloaded_error", "ServiceUnavailableError", "healthcheck"}
)
_MAX_MESSAGE = 500


def error_class(status: int | None, kind: str | None = None) -> type[AdapterError]:
    """The error class for an engine's HTTP status (or in-stream code), else for its error type name."""
    if status is not None:
        if status in _REJECTED_STATUS:
            return EngineRejected
        if status in _UNAVAILABLE_STATUS:
            return EngineUnavailable
        return EngineInternal
    if kind in _REJECTED_TYPES:
        return EngineRejected
    if kind in _UNAVAILABLE_TYPES:
        return EngineUnavailable
    return EngineInternal


def load_object(text: str, engine: str) -> dict[str, Any]:
    """Decode one event's JSON; anything but an object is the engine's fault."""
    try:
        value = _loads(text)
    except ValueError:
        raise EngineInternal(f"{engine} sent invalid JSON: {clip(text)!r}", engine=engine) from None
    if not isinstance(value, dict):
        raise EngineInternal(f"{engine} sent a JSON {type(value).__name__}, not an object", engine=engine)
    return value


def _loads(text: str) -> Any:
    """orjson's reading of `text`, or the stdlib's where orjson refuses it (see the module docstring)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def in_stream_error(event: Mapping[str, Any], engine: str) -> AdapterError | None:
    """The error an event reports, if it has a truthy top-level ``error`` (every engine's shape, §8.7)."""
    error = event.get("error")
    if not error:
        return None
    if isinstance(error, Mapping):
        status = as_int(error.get("code")) or as_int(error.get("http_status_code"))
        kind = as_str(error.get("type"))
        message = as_str(error.get("message")) or json.dumps(error)
    else:
        status, kind, message = None, as_str(event.get("error_type")), str(error)
    cls = error_class(status, kind)
    label = " ".join(str(part) for part in (status, kind) if part)
    suffix = f" ({label})" if label else ""
    return cls(f"{engine} reported an error in the stream{suffix}: {clip(message)}", engine=engine)


def checked_step(text: str, engine: str) -> dict[str, Any]:
    """One streamed JSON object, raising the error it reports in-stream instead of returning it."""
    step = load_object(text, engine)
    error = in_stream_error(step, engine)
    if error is not None:
        raise error
    return step


def error_event(data: str, engine: str) -> AdapterError:
    """The error carried by an SSE error event (``event: error``, or llama.cpp's old ``error:`` field)."""
    try:
        payload: Mapping[str, Any] = load_object(data, engine)
    except EngineInternal:
        payload = {"error": data}
    if "error" not in payload:
        payload = {"error": payload}
    error = in_stream_error(payload, engine)
    return error or EngineInternal(f"{engine} sent an empty error event", engine=engine)


def body_message(body: bytes) -> str:
    """The human message in an HTTP error body, whatever its shape (object, string, flat, or plain text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return clip(text) or "(empty body)"
    if isinstance(value, Mapping):
        error = value.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return clip(str(error["message"]))
        if isinstance(error, str):
            return clip(error)
        if value.get("message"):  # vLLM before 0.10.1: {"object":"error","message":…}
            return clip(str(value["message"]))
    return clip(text)


def clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_dict(value: object) -> Mapping[str, Any]:
    if isinstance(value, dict):  # every decoded JSON object: a check far cheaper than the Mapping ABC's
        return value
    return value if isinstance(value, Mapping) else {}


def option_str(options: Mapping[str, object], key: str) -> str | None:
    value = options.get(key)
    return None if value is None or value == "" else str(value)


def option_float(options: Mapping[str, object], key: str, default: float) -> float:
    value = option_str(options, key)
    return default if value is None else float(value)


def option_bool(options: Mapping[str, object], key: str, *, default: bool = False) -> bool:
    value = option_str(options, key)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def wants_chat(api: str, req: SubmitRequest, engine: str) -> bool:
    """Whether `req` goes to the engine's chat route: ``auto`` follows the request's shape; a ``chat``
    pool takes a prompt as one user message; a ``completion`` pool refuses messages (no chat template)."""
    if api == "chat":
        if req.suffix is not None or req.prompt_ids is not None:
            needs = "a suffix" if req.suffix is not None else "a prompt of token ids"
            raise EngineRejected(
                f"{engine}: this replica serves chat only (its pool's api is chat), which takes text "
                f"turns: {needs} needs a completions route",
                engine=engine,
            )
        return True
    if api == "completion":
        if req.messages is not None:
            raise EngineRejected(
                f"{engine}: this replica serves completions only; send a prompt", engine=engine
            )
        return False
    return req.messages is not None


def chat_messages(req: SubmitRequest, *, names: bool = False) -> list[dict[str, object]]:
    """The turns in OpenAI's shape (Ollama's shares it); `names`: with each turn's `name` where it has
    one (OpenAI's dialect; Ollama's has no such field)."""
    if req.messages is None:
        return [{"role": "user", "content": req.prompt or ""}]
    return [_chat_message(m, names) for m in req.messages]


def openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, object]]:
    """Chat turns in OpenAI's dialect, names included."""
    return [_chat_message(m, True) for m in messages]


def _chat_message(m: ChatMessage, names: bool) -> dict[str, object]:
    """One turn in OpenAI's shape: an assistant turn that only called tools has `content: null`, as
    OpenAI's SDKs send it (chat templates test for it); a tool result names its call."""
    if m.tool_calls is None and m.tool_call_id is None:
        out: dict[str, object] = {"role": m.role, "content": m.content}
    else:
        content = (m.content or None) if m.tool_calls is not None else m.content
        out = {"role": m.role, "content": content}
        if m.tool_calls is not None:
            out["tool_calls"] = orjson.loads(m.tool_calls)
        if m.tool_call_id is not None:
            out["tool_call_id"] = m.tool_call_id
    if names and m.name is not None:
        out["name"] = m.name
    return out


_SAMPLING = (
    "seed", "temperature", "top_p", "presence_penalty", "frequency_penalty", "ignore_eos", "top_k", "min_p",
)  # fmt: skip
# The name of the repetition penalty: vLLM's (and TGI's), else llama.cpp's and Ollama's
REPETITION, REPEAT = "repetition_penalty", "repeat_penalty"


def sampling(req: SubmitRequest, repeat: str = REPETITION) -> dict[str, object]:
    """The sampling fields the request sets (seed, temperature, top_p, stop, the penalties, vLLM's and
    llama.cpp's `ignore_eos`, `top_k` and `min_p`), under the names the llama.cpp, OpenAI and Ollama
    dialects share, the repetition penalty under `repeat` (the dialects differ); unset fields are left
    for the engine's defaults."""
    fields: dict[str, object] = {key: value for key in _SAMPLING if (value := getattr(req, key)) is not None}
    if req.repetition_penalty is not None:
        fields[repeat] = req.repetition_penalty
    if req.stop:
        fields["stop"] = list(req.stop)
    return fields


def embedded(vectors: object, req: SubmitRequest, engine: str, prompt_tokens: int | None) -> list[TokenEvent]:
    """An embeddings answer's events: one `Embedding` per input, in the inputs' order, then `Finished`.
    EngineInternal when the engine sent other than one list of numbers per input, or other than the
    `dimensions` the job asked for (an engine that ignores the field)."""
    count = len(req.inputs or ())
    if not isinstance(vectors, list) or len(vectors) != count:
        got = len(vectors) if isinstance(vectors, list) else type(vectors).__name__
        raise EngineInternal(f"{engine} sent {got} embeddings for {count} inputs", engine=engine)
    events: list[TokenEvent] = []
    for index, vector in enumerate(vectors):
        if isinstance(vector, list) and vector and all(isinstance(x, list) for x in vector):
            raise EngineInternal(
                f"{engine} sent a vector for each token of an input, not one for the input: its model has "
                "no pooling (llama.cpp: --pooling mean)",
                engine=engine,
            )
        if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector
        ):
            raise EngineInternal(f"{engine} sent an embedding that is not a list of numbers", engine=engine)
        if req.dimensions is not None and len(vector) != req.dimensions:
            raise EngineInternal(
                f"{engine} sent embeddings of {len(vector)} numbers, not the {req.dimensions} asked "
                "(dimensions): this engine or model does not shorten them; leave dimensions out",
                engine=engine,
            )
        events.append(Embedding(index, tuple(float(x) for x in vector)))
    events.append(Finished("eos", prompt_tokens=prompt_tokens, completion_tokens=0))
    return events


def logprob_entries(entries: object, top: int | None = None) -> tuple[TokenLogprob, ...]:
    """Sampled tokens' log probabilities from a list of ``{token, logprob, top_logprobs: [{token,
    logprob}]}`` (OpenAI chat's `logprobs.content`, Ollama's `logprobs`; `bytes` is not read: the token
    is its text). Entries an engine left incomplete are skipped; `top`, when given, keeps that many
    alternatives of each."""
    if not isinstance(entries, list):
        return ()
    return tuple(
        TokenLogprob(entry["token"], entry["logprob"], alternatives(entry.get("top_logprobs"))[:top])
        for entry in entries
        if isinstance(entry, dict) and scored(entry.get("token"), entry.get("logprob"))
    )


def alternatives(top: object) -> tuple[tuple[str, float], ...]:
    """Alternatives as (token, logprob), most likely first: from a list of ``{token, logprob}`` objects
    or from OpenAI completions' object keyed by token."""
    if isinstance(top, dict):
        items = [(t, lp) for t, lp in top.items() if scored(t, lp)]
    elif isinstance(top, list):
        entries = [e for e in top if isinstance(e, dict)]
        items = [(e["token"], e["logprob"]) for e in entries if scored(e.get("token"), e.get("logprob"))]
    else:
        return ()
    return tuple(sorted(((t, float(lp)) for t, lp in items), key=lambda pair: -pair[1]))


def scored(token: object, logprob: object) -> bool:
    """Whether a log-probability entry is whole: its token text and a number (not a bool)."""
    return isinstance(token, str) and isinstance(logprob, int | float) and not isinstance(logprob, bool)


def token_ids(value: object, engine: str) -> list[int]:
    """A tokenizer's answer, a list of token ids; EngineInternal for anything else."""
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    raise EngineInternal(f"{engine} answered a tokenization that is not a list of token ids", engine=engine)


def detokenized(value: object, engine: str) -> str:
    """A detokenizer's answer, a text; EngineInternal for anything else."""
    if isinstance(value, str):
        return value
    raise EngineInternal(f"{engine} answered a detokenization that is not a text", engine=engine)
