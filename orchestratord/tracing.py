"""OpenTelemetry traces: one span per job that ran, from its admission to its end, parented on the
client's W3C `traceparent` and passed on to the engine (vLLM parents its own request span on it).

The span carries the GenAI semantic conventions' attributes (`gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.request.max_tokens`, `gen_ai.usage.input_tokens` /
`output_tokens`, `gen_ai.response.finish_reasons`) and ours (`orchestratord.job_id`, `.tenant`,
`.pool_id`, `.replica_id`, `.queue_time_ms`, `.time_to_first_token_ms`); each failed attempt is a
span event. It is made by the replica that runs the job, with the admission's time as its start, so a
job admitted on one replica and run on another is one span.

Off unless `tracing.otlp_endpoint` is set: then OpenTelemetry is not even imported, a job costs one
`None` check, and nothing is sent to engines but what the client sent (`traceparent` passes through).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from orchestratord.core.tasks import TaskSpec

_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: str | None) -> str | None:
    """A client's `traceparent` as W3C Trace Context defines version 00, else None (a malformed one
    is ignored, as the standard says, not refused)."""
    return value if value is not None and _TRACEPARENT.match(value) else None


class Tracer:
    """Makes the job spans. `provider` is injected by tests (an in-memory exporter); otherwise one
    exporting over OTLP/HTTP to `endpoint` is built."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        service_name: str = "orchestratord",
        provider: TracerProvider | None = None,
    ) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if provider is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._provider = provider
        self._tracer = provider.get_tracer("orchestratord")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, spec: TaskSpec, admitted_mono: float) -> JobSpan:
        """The job's span, begun at its admission (a monotonic time, mapped to the wall clock)."""
        carrier = {"traceparent": spec.traceparent} if spec.traceparent else {}
        parent = self._propagator.extract(carrier)
        started_ns = time.time_ns() - int((time.monotonic() - admitted_mono) * 1e9)
        chat = spec.messages is not None
        span = self._tracer.start_span(
            f"{'chat' if chat else 'text_completion'} {spec.model_ref}",
            context=parent,
            start_time=started_ns,
            attributes={
                "gen_ai.operation.name": "chat" if chat else "text_completion",
                "gen_ai.request.model": spec.model_ref,
                "gen_ai.request.max_tokens": spec.max_tokens,
                "orchestratord.job_id": spec.job_id,
                "orchestratord.tenant": spec.tenant,
                "orchestratord.priority": spec.priority,
            },
        )
        return JobSpan(span, self._traceparent(span))

    def _traceparent(self, span: Span) -> str:
        from opentelemetry.trace import set_span_in_context

        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return carrier["traceparent"]

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what is batched


class JobSpan:
    """One job's span while it runs; `traceparent` is what its engine requests carry."""

    def __init__(self, span: Span, traceparent: str) -> None:
        self._span = span
        self.traceparent = traceparent

    def set(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self._span.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    def end(self, *, error: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        if error is not None:
            self._span.set_status(Status(StatusCode.ERROR, error))
            self._span.set_attribute("error.type", error.split(":", 1)[0])
        self._span.end()
