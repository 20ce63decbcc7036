"""A fake vLLM OpenAI server: ``/v1/chat/completions``, ``/v1/completions``, ``/health``, ``/version``,
``/v1/models``, ``/metrics``, with vLLM's bytes (wire notes §2).

Chunks are compact pydantic dumps (chat: ``exclude_unset``, so few keys; completions: every field, mostly
``null``); the finish chunk carries the last token's text; a mid-stream error is a ``json.dumps`` event
(with spaces) and is still followed by ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from tests.fakes.engines.asgi import (
    DROP,
    Exchange,
    FakeEngine,
    Frames,
    Request,
    Script,
    alternative,
    compact,
    fake_embedding,
    logprob_of,
    plan,
    sse,
)

MODEL = "Qwen/Qwen2.5-7B-Instruct"
VERSION = "0.11.0"
MAX_MODEL_LEN = 32768
CREATED = 1772423572
KV_USAGE = (0.25, 0.75)  # two data-parallel engines
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}


def error_object(status: int, message: str, kind: str | None) -> dict[str, Any]:
    kind = kind or _ERROR_TYPES.get(status, "InternalServerError")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _top_logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives a request asked for; None when it asked for no log probabilities."""
    if chat:
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    logprobs = body.get("logprobs")
    return None if logprobs is None else int(logprobs)


def token_logprobs(text: str, i: int, top: int, chat: bool, offset: int) -> dict[str, Any]:
    """vLLM's logprobs for one sampled token: the sampled token ranks first among the alternatives."""
    if chat:
        alternatives = [
            {"token": alternative(text, r), "logprob": logprob_of(i, r),
             "bytes": list(alternative(text, r).encode())}
            for r in range(top)
        ]  # fmt: skip
        entry = {
            "token": text,
            "logprob": logprob_of(i),
            "bytes": list(text.encode()),
            "top_logprobs": alternatives,
        }
        return {"content": [entry]}
    return {
        "text_offset": [offset], "token_logprobs": [logprob_of(i)], "tokens": [text],
        "top_logprobs": [{alternative(text, r): logprob_of(i, r) for r in range(top)}],
    }  # fmt: skip


def prompt_pieces(prompt: str) -> list[str]:
    """The fake's tokens of a prompt: each word with the spaces before it."""
    return re.findall(r"\s*\S+|\s+$", prompt)


def id_pieces(ids: list[int]) -> list[str]:
    """The fake tokenizer's text of each token id of a prompt given as ids: a word each."""
    return [f" w{token_id}" for token_id in ids]


VOCAB = 32_000  # the fake tokenizer's vocabulary
BOS = 1  # the fake tokenizer's beginning of sequence, as llama's


def fake_tokenize(prompt: str, add_special: bool) -> list[int]:
    """The fake tokenizer: a word each, ` w<n>` being id n (the text `id_pieces` gives), any other word
    an id of its own (its CRC, from 1,000); BOS first when the special tokens are added."""
    ids = [BOS] if add_special else []
    for piece in prompt_pieces(prompt):
        found = re.fullmatch(r" w(\d+)", piece)
        ids.append(int(found.group(1)) if found else 1000 + zlib.crc32(piece.encode()) % 30000)
    return ids


def fake_detokenize(ids: list[int]) -> str:
    return "".join(id_pieces([i for i in ids if i != BOS]))


def prompt_logprob(piece: str, j: int, top: int) -> tuple[float | None, dict[str, float] | None]:
    """The fake's log probability of the prompt's token `j` and its alternatives: none for the first."""
    if j == 0:
        return None, None
    return -0.5 * j, {alternative(piece, r): -0.5 * j - 1.5 * r for r in range(max(top, 1))}


def group_logprobs(group: list[str], first: int, top: int, chat: bool, offset: int) -> dict[str, Any]:
    """The logprobs of a chunk that carries several tokens: one entry per token, in order."""
    entries = []
    for k, text in enumerate(group):
        entries.append(token_logprobs(text, first + k, top, chat, offset))
        offset += len(text)
    if chat:
        return {"content": [e for entry in entries for e in entry["content"]]}
    keys = ("text_offset", "token_logprobs", "tokens", "top_logprobs")
    return {key: [x for entry in entries for x in entry[key]] for key in keys}


class VllmEngine(FakeEngine):
    keepalive_frame = b": ping\n\n"  # vLLM itself sends none (issue #47647); a proxy in front may

    def __init__(self, **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self.loras: list[str] = []  # LoRA adapters served beside the base model (`--lora-modules`)
        self.routes = {
            ("GET", "/health"): self.health,
            ("GET", "/version"): self.version,
            ("GET", "/v1/models"): self.models,
            ("GET", "/metrics"): self.metrics,
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completion,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/detokenize"): self.detokenize,
        }

    async def health(self, request: Request, exchange: Exchange) -> None:
        await exchange.respond(503 if self.behaviour.loading else 200, b"")

    async def version(self, request: Request, exchange: Exchange) -> None:
        await exchange.respond(200, compact({"version": VERSION}))

    async def models(self, request: Request, exchange: Exchange) -> None:
        entry = {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "vllm", "root": MODEL}
        entry.update(
            parent=None,
            max_model_len=MAX_MODEL_LEN,
            permission=[{"id": "modelperm-1", "object": "model_permission"}],
        )
        loras = [
            {**entry, "id": name, "root": f"/adapters/{name}", "parent": MODEL, "max_model_len": None}
            for name in self.loras
        ]
        await exchange.respond(200, compact({"object": "list", "data": [entry, *loras]}))

    async def embeddings(self, request: Request, exchange: Exchange) -> None:
        """vLLM's answer for a pooling model (`--runner pooling`): every input's vector, as floats."""
        body = request.json()
        if await self._refused(exchange) or await self._unknown_model(body, exchange):
            return
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"index": i, "object": "embedding", "embedding": fake_embedding(text)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(text.split()) for text in inputs)
        usage = {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
        answer = {"id": "embd-1", "object": "list", "created": CREATED, "model": body["model"], "data": data,
                  "usage": usage}  # fmt: skip
        await exchange.respond(200, compact(answer))

    async def tokenize(self, request: Request, exchange: Exchange) -> None:
        """vLLM's `/tokenize` of a prompt: its ids, their count, and the model's context."""
        body = request.json()
        if await self._refused(exchange) or await self._unknown_model(body, exchange):
            return
        if "messages" in body:  # the chat form: the fake's template joins the turns' contents
            text = "".join(m.get("content") or "" for m in body["messages"])
            ids = fake_tokenize(text, body.get("add_special_tokens", False))
        else:
            ids = fake_tokenize(body["prompt"], body.get("add_special_tokens", True))
        answer = {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None}
        await exchange.respond(200, compact(answer))

    async def detokenize(self, request: Request, exchange: Exchange) -> None:
        body = request.json()
        if await self._refused(exchange) or await self._unknown_model(body, exchange):
            return
        if any(i >= VOCAB for i in body["tokens"]):  # vLLM's words for an id past the vocabulary
            message = f"Token id {max(body['tokens'])} is out of vocabulary"
            await exchange.respond(400, compact(error_object(400, message, "BadRequestError")))
            return
        await exchange.respond(200, compact({"prompt": fake_detokenize(body["tokens"])}))

    async def _unknown_model(self, body: dict[str, Any], exchange: Exchange) -> bool:
        """vLLM answers 404 for a model it does not serve (neither the base nor a LoRA adapter)."""
        model = body.get("model")
        if model in (MODEL, *self.loras):
            return False
        message = f"The model `{model}` does not exist."
        await exchange.respond(404, compact(error_object(404, message, "NotFoundError")))
        return True

    async def metrics(self, request: Request, exchange: Exchange) -> None:
        lines = [
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
        ]
        lines += [
            f'vllm:kv_cache_usage_perc{{engine="{i}",model_name="{MODEL}"}} {v}'
            for i, v in enumerate(KV_USAGE)
        ]
        await exchange.respond(
            200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4; charset=utf-8"
        )

    async def _refused(self, exchange: Exchange) -> bool:
        b = self.behaviour
        if b.http_status is None:
            return False
        await exchange.respond(
            b.http_status, compact(error_object(b.http_status, b.error_message, b.error_type))
        )
        return True

    async def chat(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            body = request.json()
            if await self._unknown_model(body, exchange):
                return
            last_turn = (body.get("messages") or [{}])[-1]
            answered = self.behaviour.answers_results and last_turn.get("role") == "tool"
            if body.get("tools") and self.behaviour.tool_calls and not answered:
                await exchange.stream("text/event-stream; charset=utf-8", self._tool_frames(body))
                return
            script = plan(self.behaviour, body.get("max_tokens", 16), body.get("stop") or [])
            await exchange.stream("text/event-stream; charset=utf-8", self._frames(body, script, chat=True))

    async def _tool_frames(self, body: dict[str, Any]) -> Frames:
        """vLLM with a tool parser: the role chunk, each call's first fragment (id, type, name, empty
        arguments), its arguments in three pieces, then the finish chunk (``tool_calls``)."""
        eol = self.behaviour.eol
        role = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        yield sse(self._chunk(True, role), eol)
        for index, (name, arguments) in enumerate(self.behaviour.tool_calls):
            first = {"id": f"chatcmpl-tool-{index}abc", "type": "function", "index": index,
                     "function": {"name": name, "arguments": ""}}  # fmt: skip
            yield sse(self._chunk(True, self._tool_choice([first])), eol)
            third = max(1, len(arguments) // 3)
            for piece in (arguments[:third], arguments[third : 2 * third], arguments[2 * third :]):
                yield sse(
                    self._chunk(
                        True, self._tool_choice([{"index": index, "function": {"arguments": piece}}])
                    ),
                    eol,
                )
        finish = {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "tool_calls",
            "stop_reason": None,
        }
        yield sse(self._chunk(True, finish), eol)
        if (body.get("stream_options") or {}).get("include_usage") and self.behaviour.usage:
            p, n = self.behaviour.prompt_tokens, 9
            yield sse(
                self._chunk(True, None, {"prompt_tokens": p, "total_tokens": p + n, "completion_tokens": n}),
                eol,
            )
        yield sse(b"[DONE]", eol)

    @staticmethod
    def _tool_choice(calls: list[dict[str, Any]]) -> dict[str, Any]:
        return {"index": 0, "delta": {"tool_calls": calls}, "logprobs": None, "finish_reason": None}

    async def completion(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            body = request.json()
            if await self._unknown_model(body, exchange):
                return
            if body.get("suffix") is not None:  # vLLM's renderer refuses every suffix
                error = error_object(400, "suffix is not currently supported", None)
                await exchange.respond(400, compact(error))
                return
            script = plan(self.behaviour, body.get("max_tokens", 16), body.get("stop") or [])
            if body.get("stream") is False:
                await exchange.respond(200, compact(self._whole_completion(body, script)))
                return
            await exchange.stream("text/event-stream; charset=utf-8", self._frames(body, script, chat=False))

    def _whole_completion(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        """A completion answered whole (`stream: false`), as vLLM's `CompletionResponse`. With `echo`, the
        text begins with the prompt and, with `logprobs`, the entries begin with the prompt's tokens
        (`prompt_pieces`), the first with no log probability; `usage.prompt_tokens` counts them."""
        texts, top = list(script.texts()), _top_logprobs(body, chat=False)
        generated = script.count + (1 if script.ending in ("eos", "stop") else 0)
        raw = body["prompt"]
        ids = isinstance(raw, list) and bool(raw) and isinstance(raw[0], int)  # one prompt of token ids
        prompt = "".join(id_pieces(raw)) if ids else raw if isinstance(raw, str) else "".join(raw)
        pieces = (id_pieces(raw) if ids else prompt_pieces(prompt)) if body.get("echo") else []
        prompt_tokens = len(pieces) if body.get("echo") else self.behaviour.prompt_tokens
        logprobs = None
        if top is not None:
            logprobs = group_logprobs(texts, 0, top, False, len(prompt) if pieces else 0)
            if pieces:
                scored = [prompt_logprob(piece, j, top) for j, piece in enumerate(pieces)]
                offsets = [sum(map(len, pieces[:j])) for j in range(len(pieces))]
                logprobs = {
                    "text_offset": offsets + logprobs["text_offset"],
                    "token_logprobs": [s for s, _ in scored] + logprobs["token_logprobs"],
                    "tokens": pieces + logprobs["tokens"],
                    "top_logprobs": [t for _, t in scored] + logprobs["top_logprobs"],
                }
        reason = "length" if script.ending == "length" else "stop"
        choice = {
            "index": 0, "text": (prompt if pieces else "") + "".join(texts), "logprobs": logprobs,
            "finish_reason": reason, "stop_reason": script.stop_word or None,
            "prompt_logprobs": None, "prompt_token_ids": None, "token_ids": None,
        }  # fmt: skip
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + generated,
                 "completion_tokens": generated, "prompt_tokens_details": None}  # fmt: skip
        return {
            "id": "cmpl-3f1d2c9a8b7e4f60a1b2c3d4e5f60718", "object": "text_completion", "created": CREATED,
            "model": MODEL, "choices": [choice], "service_tier": None, "system_fingerprint": None,
            "usage": usage, "kv_transfer_params": None,
        }  # fmt: skip

    async def _frames(self, body: dict[str, Any], script: Script, *, chat: bool) -> Frames:
        b, eol, p = self.behaviour, self.behaviour.eol, self.behaviour.prompt_tokens
        if chat:
            yield sse(
                self._chunk(
                    chat,
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    },
                ),
                eol,
            )
        if chat:  # a reasoning parser's output: before the answer, in a field of its own
            for piece in b.thinking:
                thought = {"index": 0, "delta": {"reasoning": piece}, "logprobs": None, "finish_reason": None}
                yield sse(self._chunk(chat, thought), eol)
        last = script.count - 1 if script.ending == "length" else None
        top = _top_logprobs(body, chat)
        texts, step = list(script.texts()), b.stream_interval
        for first in range(0, len(texts), step):
            group = texts[first : first + step]
            final = first + len(group) - 1
            choice = self._choice(chat, "".join(group), "length" if final == last else None)
            if top is not None:
                offset = sum(map(len, texts[:first]))
                choice["logprobs"] = group_logprobs(group, first, top, chat, offset)
            yield sse(self._chunk(chat, choice), eol)
        if script.ending == "fail":
            if b.failure == "drop":
                yield DROP
            elif b.failure == "error":
                error = json.dumps(error_object(b.error_status, b.error_message, b.error_type))
                yield sse(error.encode(), eol) + sse(b"[DONE]", eol)
            return
        generated = script.count + (len(b.thinking) if chat else 0)
        if script.ending in ("eos", "stop"):  # the EOS token, or the one completing the stop string: no text
            generated += 1
            reason = self._choice(chat, "", "stop", script.stop_word or None)
            yield sse(self._chunk(chat, reason), eol)
        if (body.get("stream_options") or {}).get("include_usage") and self.behaviour.usage:
            usage = {"prompt_tokens": p, "total_tokens": p + generated, "completion_tokens": generated}
            yield sse(self._chunk(chat, None, usage), eol)
        yield sse(b"[DONE]", eol)

    def _choice(
        self, chat: bool, text: str, reason: str | None, stop_reason: str | None = None
    ) -> dict[str, Any]:
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            if reason:
                choice["stop_reason"] = stop_reason
            return choice
        return {
            "index": 0, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": stop_reason,
            "prompt_token_ids": None, "token_ids": None,
        }  # fmt: skip

    def _chunk(self, chat: bool, choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        if chat:
            data: dict[str, Any] = {
                "id": "chatcmpl-8b2b91720edd4372b0579e89255b4828",
                "object": "chat.completion.chunk",
            }
        else:
            data = {"id": "cmpl-3f1d2c9a8b7e4f60a1b2c3d4e5f60718", "object": "text_completion"}
        data.update(created=CREATED, model=MODEL, choices=[choice] if choice else [])
        if usage is not None:
            data["usage"] = usage
        elif not chat:
            data["usage"] = None
        return compact(data)
