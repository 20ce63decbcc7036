"""A fake Ollama server: ``/api/generate`` and ``/api/chat`` (NDJSON), ``/api/tags``, ``/api/version``
and ``/``, with Ollama's bytes (wire notes §4): Go ``encoding/json`` (compact, HTML-safe escapes),
nanosecond timestamps, a ``done:true`` object with ``done_reason`` and counts (zero counts omitted), and
a ``{"error":"…"}`` line when the model fails mid-stream.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.engines.asgi import DROP, Exchange, FakeEngine, Frames, Request, Script, plan

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


class OllamaEngine(FakeEngine):
    keepalive_frame = b"\n"  # Ollama sends none; a blank line is the NDJSON analogue, for the test

    def __init__(self, **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self.installed = [MODEL]
        self.routes = {
            ("GET", "/"): self.root,
            ("GET", "/api/tags"): self.tags,
            ("GET", "/api/version"): self.version,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/chat"): self.chat,
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
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": details,
            }
            for name in self.installed
        ]
        await exchange.respond(200, go_json({"models": models}))

    async def version(self, request: Request, exchange: Exchange) -> None:
        await exchange.respond(200, go_json({"version": VERSION}))

    async def generate(self, request: Request, exchange: Exchange) -> None:
        await self._serve(request, exchange, chat=False)

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
        options = body.get("options") or {}
        script = plan(b, options.get("num_predict", -1), options.get("stop") or [])
        await exchange.stream("application/x-ndjson", self._lines(body, script, chat=chat))

    async def _lines(self, body: dict[str, Any], script: Script, *, chat: bool) -> Frames:
        b = self.behaviour

        def line(i: int, text: str, **extra: Any) -> bytes:
            obj: dict[str, Any] = {"model": body["model"], "created_at": timestamp(i)}
            if chat:
                obj["message"] = {"role": "assistant", "content": text}
            else:
                obj["response"] = text
            obj.update(extra)
            return go_json(obj) + b"\n"

        for i, text in enumerate(script.texts()):
            yield line(i, text, done=False)
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
        final.update(eval_count=script.count, eval_duration=4535599000)
        yield line(script.count, "", **final)
