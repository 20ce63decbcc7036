"""A job's events in the shapes the OpenAI SDKs parse: stream chunks, whole responses, usage.

One job, many renderings: the chunks are made from the job's event log (`reasoning`, `token`,
`tool_call`, then the terminal `end` or `error`), the same log our own stream relays. A thinking
model's reasoning goes in both names clients read: `reasoning` (vLLM's, OpenRouter's, OpenAI's
guidance) and `reasoning_content` (DeepSeek's, llama.cpp's, LiteLLM's), the same text in each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Surface = Literal["chat", "completion"]
# Our stop reasons → OpenAI's finish_reason. A job canceled mid-answer stops where it was.
FINISH: dict[str, str] = {
    "max_tokens": "length", "context_length": "length", "eos": "stop", "stop_sequence": "stop",
    "tool_calls": "tool_calls", "canceled": "stop",
}  # fmt: skip
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Rendering:
    """What every chunk of one response repeats."""

    surface: Surface
    job_id: str
    created: int
    model: str
    include_usage: bool = False
    logprobs: bool = False  # the request asked for log probabilities
    continuous_usage: bool = False  # `usage` on every chunk, as counted so far (vLLM's extension)
    prompt_estimate: int = 0  # the prompt's tokens as orchestratord estimates them
    index: int = 0  # the choice's (a request's `n`, or its prompts, ask for several: a job each)
    echo: str = ""  # the prompt, for a completion that echoes it (`echo: true`) before its text
    legacy: bool = False  # the request gave `functions`: the model's call is `function_call`, its only one

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.surface == "chat" else "cmpl-") + self.job_id

    def _chunk(self, choices: list[dict[str, Any]], usage: Mapping[str, int] | None = None) -> bytes:
        kind = "chat.completion.chunk" if self.surface == "chat" else "text_completion"
        body: dict[str, Any] = {
            "id": self.id, "object": kind, "created": self.created, "model": self.model,
            "system_fingerprint": None, "choices": choices,
        }  # fmt: skip
        if self.include_usage or self.continuous_usage:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def _so_far(self, tokens: int) -> dict[str, Any] | None:
        """With continuous usage, the counts so far: the token events relayed, and the prompt's
        estimate (the engine's counts come with the finish)."""
        if not self.continuous_usage:
            return None
        return {
            "prompt_tokens": self.prompt_estimate, "completion_tokens": tokens,
            "total_tokens": self.prompt_estimate + tokens, "prompt_tokens_estimated": True,
        }  # fmt: skip

    def first(self) -> bytes:
        """The chat stream's first chunk: the assistant's role (a completion stream has none)."""
        return self._chunk(
            [_choice_delta(self.index, {"role": "assistant", "content": ""}, None)], self._so_far(0)
        )

    def text(
        self, text: str, logprobs: Sequence[Mapping[str, Any]] | None = None, tokens: int = 0, offset: int = 0
    ) -> bytes:
        """One `token` event's chunk; `logprobs`, the event's own (when the request asked for them);
        `tokens`, how many token events the stream has relayed with this one; `offset`, where its first
        token begins in the choice's text (a completion's `text_offset`)."""
        rendered = self.render_logprobs(logprobs or (), offset)
        if self.surface == "chat":
            return self._chunk(
                [_choice_delta(self.index, {"content": text}, None, rendered)], self._so_far(tokens)
            )
        return self._chunk([_choice_text(self.index, text, None, rendered)], self._so_far(tokens))

    def render_logprobs(self, entries: Sequence[Mapping[str, Any]], offset: int = 0) -> dict[str, Any] | None:
        """Token events' `logprobs` in this surface's shape; None unless the request asked for them.
        A completion's `text_offset`s count the tokens' characters from `offset` (vLLM's rule)."""
        if not self.logprobs:
            return None
        if self.surface == "chat":
            return {"content": [chat_logprob(entry) for entry in entries], "refusal": None}
        tokens = [entry["token"] for entry in entries]
        return {  # (a scored prompt's first token has no log probability: null, as OpenAI's)
            "tokens": tokens,
            "text_offset": text_offsets(tokens, offset),
            "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": [
                None
                if entry["logprob"] is None
                else {top["token"]: top["logprob"] for top in entry["top_logprobs"]}
                for entry in entries
            ],
        }

    def reasoning(self, text: str, tokens: int = 0) -> bytes:
        """One `reasoning` event's chunk (chat only: a text completion has no field for it)."""
        delta = {"reasoning": text, "reasoning_content": text}
        return self._chunk([_choice_delta(self.index, delta, None)], self._so_far(tokens))

    def tool_call(self, fragment: Mapping[str, Any], tokens: int = 0) -> bytes:
        """One fragment of a tool call, as `delta.tool_calls[]` keyed by its index (in the deprecated
        form, `delta.function_call`: the name with the first fragment, the arguments in pieces)."""
        if self.legacy:
            delta: dict[str, Any] = {"function_call": tool_call(fragment)["function"]}
        else:
            delta = {"tool_calls": [tool_call(fragment)]}
        return self._chunk([_choice_delta(self.index, delta, None)], self._so_far(tokens))

    def finish_reason(self, end: Mapping[str, Any]) -> str:
        reason = FINISH.get(str(end.get("stop_reason")), "stop")
        return "function_call" if reason == "tool_calls" and self.legacy else reason

    def finish(self, end: Mapping[str, Any]) -> bytes:
        reason = self.finish_reason(end)
        counts = usage(end) if self.continuous_usage else None
        if self.surface == "chat":
            return self._chunk([_choice_delta(self.index, {}, reason)], counts)
        return self._chunk([_choice_text(self.index, "", reason)], counts)

    def usage_chunk(self, end: Mapping[str, Any]) -> bytes:
        """`stream_options.include_usage`: the last chunk, with no choices and the job's token counts."""
        return self._chunk([], usage(end))

    def usage_total_chunk(self, counts: Mapping[str, Any]) -> bytes:
        """`stream_options.include_usage` for several choices: the last chunk, with `counts` (`total`)."""
        return self._chunk([], counts)

    def choice(
        self,
        text: str,
        end: Mapping[str, Any],
        calls: list[dict[str, Any]] | None = None,
        logprobs: Sequence[Mapping[str, Any]] = (),
        reasoning: str = "",
    ) -> dict[str, Any]:
        """This choice of a non-streaming response: `calls`, the tool calls the fragments made
        (`ToolCalls`); `logprobs`, every token event's entries in order (a scored prompt's first);
        `reasoning`, the model's (chat only)."""
        rendered = self.render_logprobs(logprobs)
        reason = self.finish_reason(end)
        text = self.echo + text
        if self.surface == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
            if calls and self.legacy:
                message["function_call"] = calls[0]["function"]
            elif calls:
                message["tool_calls"] = calls
            elif not text:
                message["content"] = text
            if reasoning:
                message["reasoning"] = message["reasoning_content"] = reasoning
            return {"index": self.index, "message": message, "logprobs": rendered, "finish_reason": reason}
        return _choice_text(self.index, text, reason, rendered)

    def response(self, choices: list[dict[str, Any]], counts: Mapping[str, Any]) -> dict[str, Any]:
        """The non-streaming response holding `choices`, with the token counts `counts`."""
        kind = "chat.completion" if self.surface == "chat" else "text_completion"
        return {
            "id": self.id, "object": kind, "created": self.created, "model": self.model,
            "system_fingerprint": None, "choices": choices, "usage": counts,
        }  # fmt: skip


def text_offsets(tokens: Sequence[str], start: int = 0) -> list[int]:
    """Where each token begins in the choice's text, from `start`: the characters of those before it."""
    offsets = []
    for token in tokens:
        offsets.append(start)
        start += len(token)
    return offsets


def tool_call(fragment: Mapping[str, Any]) -> dict[str, Any]:
    """A `tool_call` event's fragment in OpenAI's delta shape (id and type with the first fragment)."""
    function: dict[str, Any] = {"arguments": fragment.get("arguments", "")}
    if "name" in fragment:
        function["name"] = fragment["name"]
    call: dict[str, Any] = {"index": fragment.get("index", 0), "function": function}
    if "id" in fragment:
        call.update(id=fragment["id"], type="function")
    return call


class ToolCalls:
    """Joins a job's tool-call fragments into whole calls, by index, in the order they began."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, fragment: Mapping[str, Any]) -> None:
        index = int(fragment.get("index", 0))
        call = self._calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if "id" in fragment:
            call["id"] = fragment["id"]
        if "name" in fragment:
            call["function"]["name"] = fragment["name"]
        call["function"]["arguments"] += fragment.get("arguments", "")

    def calls(self) -> list[dict[str, Any]]:
        return list(self._calls.values())


def usage(end: Mapping[str, Any]) -> dict[str, Any]:
    """Token counts of a finished job, from its `end` event."""
    return total([(end, True)])


def total(ends: Sequence[tuple[Mapping[str, Any], bool]]) -> dict[str, Any]:
    """Token counts of several choices' jobs, from their `end` events, each with whether its prompt is
    counted (a prompt's `n` choices read it once, as OpenAI counts it)."""
    prompt = sum(int(end.get("tokens_in") or 0) for end, counted in ends if counted)
    completion = sum(int(end.get("tokens_out") or 0) for end, _ in ends)
    counts: dict[str, Any] = {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
    }  # fmt: skip
    if any(end.get("tokens_in_estimated") for end, counted in ends if counted):  # ours, not the engine's
        counts["prompt_tokens_estimated"] = True
    return counts


def error_chunk(error: Mapping[str, Any]) -> bytes:
    """An error after the stream began: the SDKs raise on a chunk with a top-level `error` key."""
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


def _choice_delta(
    index: int, delta: dict[str, Any], finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def _choice_text(
    index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chat_logprob(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One token's entry as Chat Completions has it, with each token's UTF-8 `bytes`."""
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "bytes": list(entry["token"].encode()),
        "top_logprobs": [
            {"token": top["token"], "logprob": top["logprob"], "bytes": list(top["token"].encode())}
            for top in entry["top_logprobs"]
        ],
    }
