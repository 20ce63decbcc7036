"""A fake llama.cpp ``llama-server``: native ``/completion`` and ``/infill`` and its OpenAI routes,
``/health``, ``/props``, ``/slots``, ``/v1/models``, with the bytes the real server writes (wire notes §1)."""

from __future__ import annotations

from typing import Any

from tests.fakes.engines.asgi import (
    DROP,
    Behaviour,
    Exchange,
    FakeEngine,
    Frames,
    Request,
    Script,
    alternative,
    compact,
    logprob_of,
    plan,
    sse,
)
from tests.fakes.engines.vllm import fake_detokenize, fake_tokenize

MODEL = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
BUILD = "b9465-23e6dab86"
N_CTX = 4096
SLOTS = 4
CREATED = 1780390177
ID = "chatcmpl-uI7JNfldkYifvjYLehw5OnRi"
_LOADING = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
_STOP_TYPE = {"eos": "eos", "length": "limit", "stop": "word"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    503: "unavailable_error",
}


def error_body(status: int, message: str, kind: str | None = None) -> bytes:
    kind = kind or _ERROR_TYPES.get(status, "server_error")
    return compact({"error": {"code": status, "message": message, "type": kind}})


def timings(prompt_n: int, predicted_n: int) -> dict[str, Any]:
    return {
        "cache_n": 0,
        "prompt_n": prompt_n,
        "prompt_ms": 18.2,
        "prompt_per_token_ms": 3.03,
        "prompt_per_second": 329.6,
        "predicted_n": predicted_n,
        "predicted_ms": 29.7,
        "predicted_per_token_ms": 9.9,
        "predicted_per_second": 101.0,
    }


def generation_settings(body: dict[str, Any]) -> dict[str, Any]:
    """The full sampling echo of the final event: several KB, so it spans reads (wire notes §8.23)."""
    settings: dict[str, Any] = {
        "n_predict": body.get("n_predict", -1),
        "seed": body.get("seed", 4294967295),
        "temperature": 0.800000011920929,
        "dynatemp_range": 0.0,
        "dynatemp_exponent": 1.0,
        "top_k": 40,
        "top_p": 0.949999988079071,
        "min_p": 0.05000000074505806,
        "xtc_probability": 0.0,
        "xtc_threshold": 0.10000000149011612,
        "typical_p": 1.0,
        "repeat_last_n": 64,
        "repeat_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": body.get("stop", []),
        "max_tokens": body.get("n_predict", -1),
        "n_keep": 0,
        "n_discard": 0,
        "ignore_eos": False,
        "stream": True,
        "logit_bias": [],
        "n_probs": 0,
        "min_keep": 0,
        "grammar": "",
        "samplers": [
            "penalties",
            "dry",
            "top_n_sigma",
            "top_k",
            "typ_p",
            "top_p",
            "min_p",
            "xtc",
            "temperature",
        ],
        "speculative.n_max": 16,
        "speculative.n_min": 0,
        "speculative.p_min": 0.75,
        "timings_per_token": False,
        "post_sampling_probs": False,
        "lora": [],
    }
    settings["dry_sequence_breakers"] = ["\n", ":", '"', "*"] * 64
    return settings


def native_probability(text: str, i: int, n_probs: int) -> dict[str, Any]:
    """llama-server's native entry for the sampled token `i` (`n_probs` alternatives, it first)."""
    tops = [
        {"id": 2000 + r, "token": alternative(text, r), "bytes": list(alternative(text, r).encode()),
         "logprob": logprob_of(i, r)}
        for r in range(n_probs)
    ]  # fmt: skip
    return {"id": 1000 + i, "token": text, "bytes": list(text.encode()), "logprob": logprob_of(i),
            "top_logprobs": tops}  # fmt: skip


class LlamaCppEngine(FakeEngine):
    def __init__(self, **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self.n_predict = -1  # the server's `--n-predict`
        self.fim = True  # the model has fill-in-the-middle tokens (else `/infill` answers 501)
        self.routes = {
            ("GET", "/health"): self.health,
            ("GET", "/props"): self.props,
            ("GET", "/slots"): self.slots,
            ("GET", "/v1/models"): self.models,
            ("POST", "/completion"): self.completion,
            ("POST", "/infill"): self.infill,
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.oai_completion,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/apply-template"): self.apply_template,
            ("POST", "/detokenize"): self.detokenize,
        }

    async def _refused(self, exchange: Exchange) -> bool:
        b = self.behaviour
        if b.loading:
            await exchange.respond(503, _LOADING)
            return True
        if b.http_status is not None:
            await exchange.respond(b.http_status, error_body(b.http_status, b.error_message, b.error_type))
            return True
        return False

    async def health(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            await exchange.respond(200, b'{"status":"ok"}')

    async def props(self, request: Request, exchange: Exchange) -> None:
        if await self._refused(exchange):
            return
        slot = {"id": 0, "id_task": -1, "n_ctx": N_CTX, "speculative": False, "is_processing": False}
        # `--n-predict N` (default -1, no limit) is the server's default and ceiling per request
        params = generation_settings({"n_predict": self.n_predict})
        props = {
            "default_generation_settings": {**slot, "params": params},
            "total_slots": SLOTS,
            "model_alias": MODEL,
            "model_path": f"/models/{MODEL}",
            "modalities": {"vision": False, "audio": False},
            "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "build_info": BUILD,
            "is_sleeping": False,
        }
        await exchange.respond(200, compact(props))

    async def slots(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            slots = [{"id": i, "id_task": -1, "n_ctx": N_CTX, "is_processing": False} for i in range(SLOTS)]
            await exchange.respond(200, compact(slots))

    async def models(self, request: Request, exchange: Exchange) -> None:
        entry = {"id": MODEL, "object": "model", "created": CREATED, "owned_by": "llamacpp", "meta": None}
        await exchange.respond(
            200, compact({"models": [{"name": MODEL, "model": MODEL}], "object": "list", "data": [entry]})
        )

    async def tokenize(self, request: Request, exchange: Exchange) -> None:
        """llama-server's `/tokenize` of `content` (`add_special`, false unless asked): `tokens`."""
        body = request.json()
        if not await self._refused(exchange):
            ids = fake_tokenize(body.get("content", ""), bool(body.get("add_special", False)))
            await exchange.respond(200, compact({"tokens": ids}))

    async def apply_template(self, request: Request, exchange: Exchange) -> None:
        """llama-server's `/apply-template`: the chat's prompt by the model's template (the fake's
        `chat_template` joins the turns' contents)."""
        if not await self._refused(exchange):
            text = "".join(m.get("content") or "" for m in request.json()["messages"])
            await exchange.respond(200, compact({"prompt": text}))

    async def detokenize(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            await exchange.respond(
                200, compact({"content": fake_detokenize(request.json().get("tokens", []))})
            )

    async def completion(self, request: Request, exchange: Exchange) -> None:
        if await self._refused(exchange):
            return
        body = request.json()
        script = plan(self.behaviour, body.get("n_predict", -1), body.get("stop", []))
        await exchange.stream("text/event-stream", self._native(body, script))

    async def infill(self, request: Request, exchange: Exchange) -> None:
        """``/infill``: the native stream, its final event's ``prompt`` the FIM prompt the server built."""
        if await self._refused(exchange):
            return
        if not self.fim:
            missing = "prefix token is missing. suffix token is missing. middle token is missing. "
            message = f"Infill is not supported by this model: {missing}"
            await exchange.respond(501, error_body(501, message, "not_supported_error"))
            return
        body = request.json()
        prompt = f"<|fim_prefix|>{body['input_prefix']}<|fim_suffix|>{body['input_suffix']}<|fim_middle|>"
        script = plan(self.behaviour, body.get("n_predict", -1), body.get("stop", []))
        await exchange.stream("text/event-stream", self._native({**body, "prompt": prompt}, script))

    async def _native(self, body: dict[str, Any], script: Script) -> Frames:
        b, eol, p = self.behaviour, self.behaviour.eol, self.behaviour.prompt_tokens
        for i, text in enumerate(script.texts()):
            step: dict[str, Any] = {
                "index": 0,
                "content": text,
                "tokens": [1000 + i],
                "stop": False,
                "id_slot": 0,
            }
            step.update(tokens_predicted=i + 1, tokens_evaluated=p)
            if body.get("n_probs", 0) > 0:  # this token's entry, its alternatives the n likeliest
                step["completion_probabilities"] = [native_probability(text, i, body["n_probs"])]
            if i + 1 == script.count and script.ending != "fail":
                step["timings"] = timings(p, i + 1)
            yield sse(compact(step), eol)
        if script.ending == "fail":
            async for frame in self._failure(b):
                yield frame
            return
        final = {"index": 0, "content": "", "tokens": [], "id_slot": 0, "stop": True, "model": MODEL}
        final.update(tokens_predicted=script.count, tokens_evaluated=p)
        prompt = body.get("prompt", "")  # the prompt's text: token ids detokenized (a word each, here)
        prompt = prompt if isinstance(prompt, str) else "".join(f" w{token_id}" for token_id in prompt)
        final.update(generation_settings=generation_settings(body), prompt=prompt)
        final.update(has_new_line=False, truncated=False, stop_type=_STOP_TYPE[script.ending])
        final.update(
            stopping_word=script.stop_word, tokens_cached=p + script.count, timings=timings(p, script.count)
        )
        yield sse(compact(final), eol)

    async def _failure(self, b: Behaviour) -> Frames:
        if b.failure == "drop":
            yield DROP
        elif b.failure == "error":
            error = error_body(b.error_status, b.error_message, b.error_type)
            end = b.eol.encode()
            yield b"error: " + error + end + end if b.legacy_errors else sse(error, b.eol)

    async def chat(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            body = request.json()
            script = plan(self.behaviour, body.get("max_tokens", -1), body.get("stop", []))
            await exchange.stream("text/event-stream", self._oai(body, script, chat=True))

    async def oai_completion(self, request: Request, exchange: Exchange) -> None:
        if not await self._refused(exchange):
            body = request.json()
            script = plan(self.behaviour, body.get("max_tokens", -1), body.get("stop", []))
            await exchange.stream("text/event-stream", self._oai(body, script, chat=False))

    async def _oai(self, body: dict[str, Any], script: Script, *, chat: bool) -> Frames:
        b, eol, p = self.behaviour, self.behaviour.eol, self.behaviour.prompt_tokens
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choice: dict[str, Any] | None, **extra: Any) -> bytes:
            data: dict[str, Any] = {"choices": [choice] if choice else [], "created": CREATED}
            if chat:  # key orders differ between the two routes
                data.update(id=ID, model=MODEL, system_fingerprint=BUILD, object=kind, **extra)
            else:
                data.update(model=MODEL, system_fingerprint=BUILD, object=kind, **extra, id=ID)
            return sse(compact(data), eol)

        def choice(text: str | None, reason: str | None) -> dict[str, Any]:
            if chat:
                delta = {} if reason else {"content": text}
                return {"finish_reason": reason, "index": 0, "delta": delta}
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}

        if chat:
            yield chunk({"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}})
        for text in script.texts():
            yield chunk(choice(text, None))
        if script.ending == "fail":
            async for frame in self._failure(b):
                yield frame
            if b.legacy_errors and b.failure == "error":
                yield sse(b"[DONE]", eol)
            return
        usage = {"completion_tokens": script.count, "prompt_tokens": p, "total_tokens": p + script.count}
        reason = "length" if script.ending == "length" else "stop"
        if chat:  # finish chunk and usage chunk go out in one write, [DONE] right behind
            last = chunk(choice(None, reason), timings=timings(p, script.count))
            wants_usage = (body.get("stream_options") or {}).get("include_usage")
            yield last + (chunk(None, usage=usage, timings=timings(p, script.count)) if wants_usage else b"")
        else:  # when streaming, the final text is "" (all of it went out already), with usage always
            yield chunk(choice("", reason), usage=usage, timings=timings(p, script.count))
        yield sse(b"[DONE]", eol)
