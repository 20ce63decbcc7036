"""A fake Hugging Face TGI router: ``/generate_stream``, ``/v1/chat/completions``, ``/health``,
``/info``, with TGI's bytes (wire notes §3): ``data:`` with no space, the EOS token as a
``special: true`` token event, ``generated_text`` (the whole text) and ``details`` on the last event,
no ``[DONE]`` on the native route, and validation/overload errors as a single event after a 200.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.engines.asgi import DROP, Exchange, FakeEngine, Frames, Request, Script, compact, plan, sse

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
VERSION = "3.3.6-dev0"
CREATED = 1731000000
INFO = {
    "model_id": MODEL,
    "model_sha": "0e9e39f249a16976918f6564b8830bc894c89659",
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 8191,
    "max_total_tokens": 8192,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": VERSION,
    "sha": "db931fcf",
    "docker_label": None,
}
_HEADERS = (("x-accel-buffering", "no"), ("x-compute-type", "gpu+optimized"))
_ERROR_TYPES = {422: "validation", 429: "overloaded", 424: "generation", 500: "incomplete_generation"}


class TgiEngine(FakeEngine):
    def __init__(self, **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self.info_body: dict[str, Any] = dict(INFO)
        self.routes = {
            ("GET", "/health"): self.health,
            ("GET", "/info"): self.info,
            ("POST", "/generate_stream"): self.generate_stream,
            ("POST", "/v1/chat/completions"): self.chat,
        }

    def _error(self, status: int) -> bytes:
        b = self.behaviour
        return compact(
            {"error": b.error_message, "error_type": b.error_type or _ERROR_TYPES.get(status, "generation")}
        )

    async def health(self, request: Request, exchange: Exchange) -> None:
        if self.behaviour.loading:
            await exchange.respond(503, b'{"error":"unhealthy","error_type":"healthcheck"}')
        else:
            await exchange.respond(200, b"")

    async def info(self, request: Request, exchange: Exchange) -> None:
        await exchange.respond(200, compact(self.info_body))

    async def generate_stream(self, request: Request, exchange: Exchange) -> None:
        b = self.behaviour
        if b.http_status is not None:
            await exchange.respond(b.http_status, self._error(b.http_status))
            return
        params = request.json().get("parameters") or {}
        script = plan(b, params.get("max_new_tokens", 100), params.get("stop") or [])
        await exchange.stream("text/event-stream", self._native(params, script), _HEADERS)

    async def _native(self, params: dict[str, Any], script: Script) -> Frames:
        b, eol = self.behaviour, self.behaviour.eol
        texts = list(script.texts()) if script.ending != "fail" else []
        if script.ending in ("eos", "stop"):
            texts.append("</s>" if script.ending == "eos" else script.stop_word)
        if script.ending == "fail":
            for i, text in enumerate(script.texts()):
                yield sse(self._event(i, text, False, None, None), eol, space=False)
            if b.failure == "drop":
                yield DROP
            elif b.failure == "error":
                yield sse(self._error(b.error_status), eol, space=False)
            return
        for i, text in enumerate(texts):
            special = script.ending == "eos" and i == len(texts) - 1
            final = i == len(texts) - 1
            generated = "".join(t for t in texts if t != "</s>") if final else None
            details = None
            if final and params.get("details"):
                reason = {"eos": "eos_token", "length": "length", "stop": "stop_sequence"}[script.ending]
                details = {
                    "finish_reason": reason,
                    "generated_tokens": len(texts),
                    "seed": params.get("seed"),
                }
                details["input_length"] = b.prompt_tokens
            yield sse(self._event(i, text, special, generated, details), eol, space=False)

    def _event(self, i: int, text: str, special: bool, generated: str | None, details: Any) -> bytes:
        token = {"id": 2 if special else 18894 + i, "text": text, "logprob": -0.64, "special": special}
        return compact({"index": i + 1, "token": token, "generated_text": generated, "details": details})

    async def chat(self, request: Request, exchange: Exchange) -> None:
        b = self.behaviour
        if b.http_status is not None:
            await exchange.respond(b.http_status, self._error(b.http_status))
            return
        body = request.json()
        script = plan(b, body.get("max_tokens", 100), body.get("stop") or [])
        await exchange.stream("text/event-stream", self._chat(body, script), _HEADERS)

    async def _chat(self, body: dict[str, Any], script: Script) -> Frames:
        b, eol = self.behaviour, self.behaviour.eol

        def chunk(content: str | None, reason: str | None, usage: dict[str, int] | None = None) -> bytes:
            choices = (
                []
                if content is None
                else [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": reason,
                    }
                ]
            )
            data = {"object": "chat.completion.chunk", "id": "", "created": CREATED, "model": MODEL}
            data.update(system_fingerprint=f"{VERSION}-native", choices=choices, usage=usage)
            return sse(compact(data), eol, space=False)

        texts = list(script.texts())
        for i, text in enumerate(texts):
            last = script.ending == "length" and i == len(texts) - 1
            yield chunk(text, "length" if last else None)
        if script.ending == "fail":
            if b.failure == "error":  # always 422 on this route, whatever the cause
                yield sse(
                    compact({"error": {"message": b.error_message, "http_status_code": 422}}),
                    eol,
                    space=False,
                )
                yield sse(b"[DONE]", eol, space=False)
            elif b.failure == "drop":
                yield DROP
            return
        generated = len(texts)
        if script.ending != "length":
            generated += 1
            yield chunk("", "stop" if script.ending == "eos" else "stop_sequence")
        if (body.get("stream_options") or {}).get("include_usage"):
            p = b.prompt_tokens
            yield chunk(
                None,
                None,
                {"prompt_tokens": p, "completion_tokens": generated, "total_tokens": p + generated},
            )
        yield sse(b"[DONE]", eol, space=False)
