"""vLLM's OpenAI-compatible server (``vllm serve``): the OpenAI adapter, with vLLM's health, version and
KV-cache gauge (wire notes §2).

The stream needs nothing of its own: vLLM's mid-stream ``data: {"error": {…}}`` followed by
``data: [DONE]`` is raised at the error event, before ``[DONE]`` could be taken for success, and its
``stop_reason`` (the matched stop string) turns ``finish_reason: "stop"`` into ``stop_sequence``. Each
chunk is one decode step, the last one included (its text is ``""`` for EOS), so it counts as a token.
Health is ``/health`` (200 with an empty body; connections are refused until the model is loaded).
Tokenizing is vLLM's ``/tokenize`` (``prompt``, or chat ``messages`` with the generation prompt;
``add_special_tokens``: ``tokens``) and ``/detokenize`` (``tokens``: ``prompt``), with the model's name.

Requests carry ``X-Request-Id`` (vLLM takes it as its request id with ``--enable-request-id-headers``).
Option ``priority_scheduling`` (for an engine started with ``--scheduling-policy priority``): each request
carries the job's class as vLLM's ``priority`` (interactive 0, batch 1; lower runs first), so the jobs
already on the engine are served in our order too. Off by default: vLLM releases before 0.10 refuse a
nonzero ``priority`` when they schedule first come first served (0.32 takes it and ignores it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from worker_adapters._wire import as_dict, as_str, option_bool, wants_chat
from worker_adapters.base import AdapterError, SubmitRequest, TokenEvent, WorkerProps
from worker_adapters.openai_http import (
    CHAT,
    COMPLETIONS,
    OpenAIAdapter,
    models_of,
    openai_embeddings,
    openai_events,
    request_body,
    scored_prompt,
)

_KV_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # current name, then pre-0.11


def kv_cache_usage(metrics: str) -> float | None:
    """Mean KV-cache usage (0..1) over the engines (data-parallel ranks) in a Prometheus exposition."""
    for name in _KV_GAUGES:
        values = []
        for line in metrics.splitlines():
            if line.startswith((name + "{", name + " ")):
                try:
                    values.append(float(line.rsplit(" ", 1)[1]))
                except (IndexError, ValueError):
                    continue
        if values:
            return sum(values) / len(values)
    return None


_PRIORITY = {"interactive": 0, "batch": 1}


class VllmAdapter(OpenAIAdapter):
    engine = "vllm"
    default_health_path = "/health"
    final_step_chunks = True  # the chunk with finish_reason is the last decode step (EOS: text "")
    request_ids = True

    @property
    def tokenizes(self) -> bool:
        return True  # vLLM's /tokenize and /detokenize (`OpenAIAdapter.tokenize`)

    def _events(self, req: SubmitRequest) -> AsyncGenerator[TokenEvent, None]:
        if req.inputs is not None:  # a model served with `--runner pooling`
            return openai_embeddings(self.http, req)
        chat = wants_chat(self.config.api, req, self.engine)
        body = request_body(req, req.model, chat=chat)
        if option_bool(self.config.options, "priority_scheduling"):
            body["priority"] = _PRIORITY[req.priority]
        if req.prompt_logprobs is not None:
            return scored_prompt(self.http, req, body, chat=chat)
        return openai_events(self.http, req, CHAT if chat else COMPLETIONS, body, final_step_chunks=True)

    async def props(self) -> WorkerProps:
        models, ctx_max = models_of(await self.http.get_json("/v1/models"))
        version = as_str(as_dict(await self.http.get_json("/version")).get("version"))
        try:
            kv = kv_cache_usage(await self.http.get_text("/metrics"))
        except AdapterError:
            kv = None  # metrics are optional for placement; the models and version above are not
        return WorkerProps(models=models, ctx_max=ctx_max, engine_version=version, kv_cache_usage_ratio=kv)
