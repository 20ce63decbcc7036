"""Traces that cross into the engines: with `tracing.otlp_endpoint` set, each job that ran is one span,
exported over OTLP/HTTP to a local receiver, parented on the client's `traceparent`, with the GenAI
attributes; the engine's request carries a `traceparent` whose parent is that span."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.fakes.engines import vllm as fake
from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP traces endpoint: it keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def span_of(self, job_id: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for span in self.spans:
                if attributes(span).get("orchestratord.job_id") == job_id:
                    return span
            time.sleep(0.05)
        raise AssertionError(f"no span for job {job_id} in {len(self.spans)} spans")


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in value.array_value.values]
            if kind == "array_value"
            else getattr(value, kind)
        )
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_a_job_is_one_span_parented_on_the_client_and_the_engine_is_told(
    make_server: Callable[..., LoopbackServer], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms, not 5 s
    engine = VllmEngine()
    with serve(engine) as url:
        pool = {"id": "v", "engine": "vllm", "models": [fake.MODEL], "replicas": [{"id": "a", "url": url}]}
        server = make_server(
            pools=[pool], tracing={"otlp_endpoint": receiver.url, "service_name": "orch-test"}
        )
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            body = {"model_ref": fake.MODEL, "prompt": "Hello", "max_tokens": 5}
            traced = client.post(
                "/v1/tasks", json=body, headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
            ).json()
            assert read_events(client, traced["sse_url"])[-1].event == "end"
            sent = engine.record.last("/v1/completions").headers["traceparent"]
            plain = client.post("/v1/tasks", json=body, headers={"traceparent": "00-zz-not-valid"}).json()
            assert read_events(client, plain["sse_url"])[-1].event == "end"

    span = receiver.span_of(traced["job_id"])
    assert span.trace_id.hex() == TRACE and span.parent_span_id.hex() == PARENT  # the client's trace
    assert sent == f"00-{TRACE}-{span.span_id.hex()}-01"  # the engine's request: a child of the job span
    found = attributes(span)
    assert span.name == f"text_completion {fake.MODEL}"
    assert found["gen_ai.operation.name"] == "text_completion"
    assert found["gen_ai.request.model"] == fake.MODEL and found["gen_ai.request.max_tokens"] == 5
    assert found["gen_ai.usage.output_tokens"] == 5 and found["gen_ai.usage.input_tokens"] == 7
    assert found["gen_ai.response.finish_reasons"] == ["max_tokens"]
    assert found["orchestratord.pool_id"] == "v" and found["orchestratord.queue_time_ms"] >= 0
    assert found["orchestratord.time_to_first_token_ms"] >= found["orchestratord.queue_time_ms"]
    root = receiver.span_of(plain["job_id"])  # a malformed traceparent is ignored: a trace of its own
    assert root.parent_span_id == b"" and root.trace_id.hex() != TRACE


def test_without_an_endpoint_nothing_is_traced_and_the_clients_trace_still_reaches_the_engine(
    make_server: Callable[..., LoopbackServer],
) -> None:
    engine = VllmEngine()
    with serve(engine) as url:
        pool = {"id": "v", "engine": "vllm", "models": [fake.MODEL], "replicas": [{"id": "a", "url": url}]}
        server = make_server(pools=[pool])
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            body = {"model_ref": fake.MODEL, "prompt": "Hello", "max_tokens": 2}
            job = client.post(
                "/v1/tasks", json=body, headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
            ).json()
            assert read_events(client, job["sse_url"])[-1].event == "end"
    assert engine.record.last("/v1/completions").headers["traceparent"] == f"00-{TRACE}-{PARENT}-01"
