"""Ollama's native API: ``POST /api/generate`` (prompt) and ``POST /api/chat`` (messages), streamed as
NDJSON (wire notes §4).

One JSON object per line: ``response`` (generate) or ``message.content`` (chat) with ``"done":false``,
then one ``"done":true`` object with ``done_reason`` (``stop`` | ``length``) and the counts
``prompt_eval_count`` / ``eval_count`` (omitted when zero), then EOF. A failure after the 200 is one
``{"error":"…"}`` line. Health is ``/api/tags`` (is the model installed?), the version ``/api/version``.

Options: ``raw`` (send prompts without the model's template, ``/api/generate``'s ``raw: true``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from worker_adapters._http import HttpAdapter, relay
from worker_adapters._wire import (
    as_dict,
    as_int,
    as_str,
    chat_messages,
    checked_step,
    option_bool,
    sampling,
    wants_chat,
)
from worker_adapters.base import (
    Finished,
    StopReason,
    SubmitRequest,
    Token,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)

_DONE_REASONS: dict[str, StopReason] = {"stop": "eos", "length": "max_tokens"}


def ollama_body(req: SubmitRequest, model: str, *, chat: bool, raw: bool) -> dict[str, object]:
    body: dict[str, object] = {"model": model}
    if chat:
        body["messages"] = chat_messages(req)
    else:
        body["prompt"] = req.prompt or ""
        if raw:
            body["raw"] = True
    options: dict[str, object] = {"num_predict": req.max_tokens, **sampling(req)}
    body.update(stream=True, options=options)
    return body


class OllamaStream:
    """One NDJSON stream's state: feed it lines; `done` after the ``"done":true`` object."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.done = False

    def feed(self, line: str) -> list[TokenEvent]:
        step = checked_step(line, self.engine)
        text = as_str(step.get("response"))
        if text is None:
            text = as_str(as_dict(step.get("message")).get("content")) or ""
        if step.get("done") is not True:
            return [Token(text)]
        self.done = True
        finished = _finished(step)
        return [Token(text), finished] if text else [finished]


def _finished(final: Mapping[str, Any]) -> Finished:
    return Finished(
        _DONE_REASONS.get(as_str(final.get("done_reason")) or "", "eos"),
        prompt_tokens=as_int(final.get("prompt_eval_count")),
        completion_tokens=as_int(final.get("eval_count")),
    )


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

    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        chat = wants_chat(self.config.api, req, self.engine)
        raw = option_bool(self.config.options, "raw")
        body = ollama_body(req, req.model, chat=chat, raw=raw)
        lines = self.http.ndjson(req, "/api/chat" if chat else "/api/generate", body)
        return relay(self.http, lines, OllamaStream(self.engine), 'a final object with "done":true')

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
        models = answers_to(model_names(await self.http.get_json("/api/tags")))
        version = as_str(as_dict(await self.http.get_json("/api/version")).get("version"))
        return WorkerProps(models=models, engine_version=version)
