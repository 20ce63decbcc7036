"""A fake Ollama server: ``/api/generate`` and ``/api/chat`` (NDJSON), ``/api/tags``, ``/api/version``
and ``/``, with Ollama's bytes (wire notes §4): Go ``encoding/json`` (compact, HTML-safe escapes),
nanosecond timestamps, a ``done:true`` object with ``done_reason`` and counts (zero counts omitted), and
a ``{"error":"…"}`` line when the model fails mid-stream. Asked for ``logprobs`` (Ollama 0.12.11 and
later), each token's line carries them as Ollama's release notes show them: ``"logprobs":[{"token",
"logprob","bytes","top_logprobs":[…]}]`` after ``done``, ``bytes`` and ``top_logprobs`` omitted when
empty (Go's ``omitempty``). An older Ollama (`version` below 0.12.11) ignores both fields.
"""

from __future__ import annotations

import json
import math
from typing import Any

from tests.fakes.engines.asgi import (
    DROP,
    Exchange,
    FakeEngine,
    Frames,
    Request,
    Script,
    alternative,
    fake_embedding,
    logprob_of,
    plan,
)

MODEL = "llama3.2:latest"
VERSION = "0.33.0"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: object) -> bytes:
    """JSON as Go's encoding/json writes it: compact, raw UTF-8, but <, >, &, U+2028/9 escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in _GO_ESCAPES.items():
        text = text.replace(char, escape)
    return text.encode()


def timestamp(i: int) -> str:
    return f"2026-08-04T08:52:19.{(385406455 + i * 12706548) % 10**9:09d}Z"


def unit(vector: list[float]) -> list[float]:
    """`vector` scaled to length 1, as Ollama normalizes every embedding it sends."""
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def ollama_logprob(text: str, i: int, top: int) -> dict[str, Any]:
    """Token `i`'s entry, the sampled token first among its alternatives (`logprob_of`, `alternative`)."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        out: dict[str, Any] = {"token": token, "logprob": logprob}
        if token:
            out["bytes"] = list(token.encode())
        return out

    sampled = entry(text, logprob_of(i))
    if top:
        sampled["top_logprobs"] = [entry(alternative(text, r), logprob_of(i, r)) for r in range(top)]
    return sampled


class OllamaEngine(FakeEngine):
    keepalive_frame = b"\n"  # Ollama sends none; a blank line is the NDJSON analogue, for the test

    def __init__(self, **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self.installed = [MODEL]
        self.version_text = VERSION  # what /api/version answers
        self.shortens = True  # /api/embed takes `dimensions` (an older Ollama ignores it)
        self.inserts = False  # the model's template takes a suffix (capability "insert": a code model's)
        self.digest = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"
        self.context_length = 131072  # the model's trained context (`llama.context_length`)
        self.architecture = "llama"  # `general.architecture`: "gptoss" takes effort levels for `think`
        self.parameters = 'stop                           "<|start_header_id|>"'  # the Modelfile's PARAMETERs
        self.routes = {
            ("GET", "/"): self.root,
            ("GET", "/api/tags"): self.tags,
            ("GET", "/api/version"): self.version,
            ("POST", "/api/show"): self.show,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/embed"): self.embed,
        }

    async def root(self, request: Request, exchange: Exchange) -> None:
        await exchange.respond(200, b"Ollama is running", "text/plain; charset=utf-8")

    async def tags(self, request: Request, exchange: Exchange) -> None:
        details = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"]}
        details.update(parameter_size="3.2B", quantization_level="Q4_K_M")
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2026-07-30T10:01:02.123456789-07:00",
                "size": 2019393189,
            }
            | {
                "digest": self.digest,
                "details": details,
            }
            for name in self.installed
        ]
        await exchange.respond(200, go_json({"models": models}))

    async def version(self, request: Request, exchange: Exchange) -> None:
        await exchange.respond(200, go_json({"version": self.version_text}))

    async def show(self, request: Request, exchange: Exchange) -> None:
        name = request.json().get("model")
        if name not in self.installed and f"{name}:latest" not in self.installed:
            await exchange.respond(404, go_json({"error": f"model '{name}' not found"}))
            return
        details = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"]}
        details.update(parameter_size="3.2B", quantization_level="Q4_K_M")
        info = {
            "general.architecture": self.architecture,
            "general.file_type": 15,
            "general.parameter_count": 3212749888,
            "llama.attention.head_count": 24,
            "llama.block_count": 28,
            f"{self.architecture}.context_length": self.context_length,
            "llama.embedding_length": 3072,
            "tokenizer.ggml.model": "gpt2",
        }
        show = {
            "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
            "modelfile": '# Modelfile generated by "ollama show"\nFROM /root/.ollama/blobs/sha256-dd\n',
            "parameters": self.parameters,
            "template": "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>",
            "details": details,
            "model_info": info,
            "capabilities": ["completion", "tools"]
            + (["insert"] if self.inserts else [])
            + (["thinking"] if self.behaviour.thinking else []),
            "modified_at": "2026-07-30T10:01:02.123456789-07:00",
        }
        await exchange.respond(200, go_json(show))

    async def generate(self, request: Request, exchange: Exchange) -> None:
        await self._serve(request, exchange, chat=False)

    async def embed(self, request: Request, exchange: Exchange) -> None:
        """Ollama's `/api/embed`: every input's vector, and the tokens read."""
        b, body = self.behaviour, request.json()
        if b.http_status is not None:
            await exchange.respond(b.http_status, go_json({"error": b.error_message}))
            return
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = [fake_embedding(text) for text in inputs]
        if body.get("dimensions") and self.shortens:  # the first numbers, normalized again
            vectors = [unit(vector[: body["dimensions"]]) for vector in vectors]
        answer = {"model": body["model"], "embeddings": vectors,
                  "total_duration": 14143917, "load_duration": 1019500,
                  "prompt_eval_count": sum(len(text.split()) for text in inputs)}  # fmt: skip
        await exchange.respond(200, go_json(answer))

    async def chat(self, request: Request, exchange: Exchange) -> None:
        await self._serve(request, exchange, chat=True)

    async def _serve(self, request: Request, exchange: Exchange, *, chat: bool) -> None:
        b = self.behaviour
        body = request.json()
        if b.http_status is not None:
            message = BUSY if b.http_status == 503 else b.error_message
            await exchange.respond(b.http_status, go_json({"error": message}))
            return
        if body.get("model") not in self.installed and f"{body.get('model')}:latest" not in self.installed:
            await exchange.respond(
                404, go_json({"error": f'model "{body.get("model")}" not found, try pulling it first'})
            )
            return
        form = body.get("format")
        if form is not None and form != "json" and not isinstance(form, dict):  # "json" or a JSON schema
            await exchange.respond(400, go_json({"error": "invalid JSON schema in format"}))
            return
        if not chat and body.get("suffix") and not self.inserts:  # `scheduleRunner`'s capability check
            name = f"registry.ollama.ai/library/{body['model'].removesuffix(':latest')}:latest"
            await exchange.respond(400, go_json({"error": f"{name} does not support insert"}))
            return
        think = body.get("think")
        if think not in (None, True, False, "low", "medium", "high"):  # what every release takes
            await exchange.respond(400, go_json({"error": f"invalid think value: {json.dumps(think)}"}))
            return
        if think not in (None, False) and not b.thinking:
            await exchange.respond(400, go_json({"error": f'"{body["model"]}" does not support thinking'}))
            return
        options = body.get("options") or {}
        script = plan(b, options.get("num_predict", -1), options.get("stop") or [])
        if chat and body.get("tools") and b.tool_calls:
            await exchange.stream("application/x-ndjson", self._tool_lines(body))
            return
        await exchange.stream("application/x-ndjson", self._lines(body, script, chat=chat))

    async def _tool_lines(self, body: dict[str, Any]) -> Frames:
        """A model that calls tools: one line holding its calls whole (arguments as a JSON object, no id),
        then the `done` line (`done_reason` "stop")."""
        b = self.behaviour
        calls = [{"function": {"name": name, "arguments": json.loads(args)}} for name, args in b.tool_calls]
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        yield (
            go_json({"model": body["model"], "created_at": timestamp(0), "message": message, "done": False})
            + b"\n"
        )
        final: dict[str, Any] = {"model": body["model"], "created_at": timestamp(1)}
        final.update(message={"role": "assistant", "content": ""}, done=True, done_reason="stop")
        final.update(total_duration=4883583458, prompt_eval_count=b.prompt_tokens, eval_count=9)
        yield go_json(final) + b"\n"

    async def _lines(self, body: dict[str, Any], script: Script, *, chat: bool) -> Frames:
        b = self.behaviour

        def line(i: int, text: str, thinking: str | None = None, **extra: Any) -> bytes:
            obj: dict[str, Any] = {"model": body["model"], "created_at": timestamp(i)}
            if chat:
                obj["message"] = {"role": "assistant", "content": text}
                if thinking is not None:
                    obj["message"]["thinking"] = thinking
            else:
                obj["response"] = text
                if thinking is not None:
                    obj["thinking"] = thinking
            obj.update(extra)
            return go_json(obj) + b"\n"

        thinking = () if body.get("think") is False else b.thinking  # `think: false` turns it off
        for i, piece in enumerate(thinking):  # a thinking model's reasoning: empty text beside it
            yield line(i, "", piece, done=False)
        release = tuple(int(part) for part in self.version_text.split("."))
        reports = body.get("logprobs") is True and release >= (0, 12, 11)
        top = int(body.get("top_logprobs") or 0)
        for i, text in enumerate(script.texts()):
            extra = {"logprobs": [ollama_logprob(text, i, top)]} if reports else {}
            yield line(i + len(thinking), text, done=False, **extra)
        if script.ending == "fail":
            if b.failure == "error":
                yield go_json({"error": b.error_message}) + b"\n"
            elif b.failure == "drop":
                yield DROP
            return
        final: dict[str, Any] = {
            "done": True,
            "done_reason": "length" if script.ending == "length" else "stop",
        }
        if not chat:
            final["context"] = [128006, 882, 128007, 271]
        final.update(total_duration=4883583458, load_duration=1334875)
        if b.prompt_tokens:  # omitempty: absent when the whole prompt came from the cache
            final.update(prompt_eval_count=b.prompt_tokens, prompt_eval_duration=342546000)
        final.update(eval_count=script.count + len(thinking), eval_duration=4535599000)
        yield line(script.count, "", **final)
