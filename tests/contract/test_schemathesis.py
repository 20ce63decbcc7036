"""schemathesis against a live orchestratord (real uvicorn on loopback), over every operation of the
contract (data.yaml and control.yaml, merged as the app serves them at /openapi.json).

Each operation gets positive and negative cases; every response must pass the five conformance checks.
The stateful test follows the contract's links (the 202's `job_id` into the stream, status and cancel
operations), so the checks also see real jobs in every state. The stream's events themselves are
validated against their schemas in `test_sse_events.py`.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.stateful import run_state_machine_as_test
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestratord.api.openapi import contract_document
from orchestratord.app import create_app
from orchestratord.settings import load_settings
from tests.contract.shape import operations, resolve
from tests.fakes.servers import LoopbackServer, serve_in_thread

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES_PER_OPERATION = 60
SERVED_MODEL = "mock"
REQUEST_TIMEOUT_S = 15

# A fast engine, so the stateful phase can read whole streams of real jobs in a few milliseconds.
LIVE_SETTINGS: dict[str, Any] = {
    "pools": [
        {
            "id": "default",
            "engine": "mock",
            "models": [SERVED_MODEL],
            "replicas": [{"id": "r0"}],
            "slots": 8,
            "max_tokens_out": 512,
            "options": {"ttft_ms": 0, "tokens_per_s": 100000},
        }
    ],
    "limits": {"max_tokens": 512},
}

schema = schemathesis.openapi.from_dict(contract_document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
# 503 is a declared state of the service, not a crash: `/readyz` while no pool is ready, a submit while
# the pools are drained (the control plane's drain is among the operations under test) or the server
# is stopping. status_code_conformance still requires it to be declared for the operation and
# response_schema_conformance that it carries the envelope; any other 5xx fails not_a_server_error.
schema.config.checks.not_a_server_error.expected_statuses = ["2xx", "3xx", "4xx", "503"]


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Random model names are all refused (400); half the bodies name the served model, so admission,
    dispatch and streaming are exercised too. Those also send their integers as JSON integers: to JSON
    Schema `1118.0` is an integer, but bodies are validated without coercion (a float is refused where
    the contract says integer), so as generated most of them would be refused too."""
    if isinstance(body, dict) and "model_ref" in body:
        served = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in body.items()}
        return st.sampled_from([body, {**served, "model_ref": SERVED_MODEL}])
    return st.just(body)


@schema.hook
def flatmap_headers(context: Any, headers: Any) -> st.SearchStrategy[Any]:
    """Half the stream reads send no `Last-Event-ID`: a random id is mostly one the stream never sent
    (a 400, or 204 past a finished job's end), and the stateful test must also read real streams."""
    if context.operation.path != "/v1/tasks/{job_id}/stream" or not headers or "Last-Event-ID" not in headers:
        return st.just(headers)
    return st.sampled_from([headers, {k: v for k, v in headers.items() if k != "Last-Event-ID"}])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    catalog = {"dir": str(tmp_path_factory.mktemp("catalog"))}  # its random entries stay out of ./var
    with serve_in_thread(create_app(load_settings(None, **LIVE_SETTINGS, catalog=catalog))) as server:
        yield server


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_the_served_document_is_the_contract_and_every_operation_is_tested(live: LoopbackServer) -> None:
    served = httpx.get(f"{live.base_url}/openapi.json", timeout=10).json()
    assert served == contract_document()
    for ref in _refs(served):  # schemathesis silently skips what it cannot resolve
        assert ref.startswith("#/"), f"{ref} points outside the served document"
        assert resolve(served, {"$ref": ref}) is not None
    tested = {(op.ok().path, op.ok().method.lower()) for op in schema.get_all_operations()}
    assert tested == set(operations(served))
    assert {"submitTask", "getTask", "cancelTask", "streamTask"} <= {
        op["operationId"] for op in operations(served).values()
    }


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms(case: schemathesis.Case, live: LoopbackServer) -> None:
    case.call_and_validate(base_url=live.base_url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)


def test_stateful_links_conform(make_server: Callable[..., LoopbackServer]) -> None:
    """Follow the links of the 202 (its `job_id` into stream, status and cancel) on a fresh server."""
    server = make_server(**LIVE_SETTINGS)
    tasks = schema.include(tag="tasks")
    tasks.config.update(base_url=server.base_url)
    seen: Counter[tuple[str, int]] = Counter()

    class Workflow(tasks.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"timeout": REQUEST_TIMEOUT_S}

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            seen[(case.operation.label, response.status_code)] += 1

        def validate_response(
            self, response: Any, case: schemathesis.Case, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs, recorder=self.recorder)

    run_state_machine_as_test(
        Workflow,
        settings=settings(
            max_examples=40, stateful_step_count=6, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
    # The links were followed: real jobs were streamed to their end, read and canceled.
    assert seen[("POST /v1/tasks", 202)] > 0
    assert seen[("GET /v1/tasks/{job_id}/stream", 200)] > 0
    assert seen[("GET /v1/tasks/{job_id}", 200)] > 0
    assert seen[("POST /v1/tasks/{job_id}/cancel", 204)] > 0


def test_the_checks_see_a_response_that_breaks_the_contract(live: LoopbackServer) -> None:
    """Not vacuous: a contract that no longer matches the server (a field the 202 lacks) fails."""
    tampered = copy.deepcopy(contract_document())
    admitted = tampered["components"]["schemas"]["AdmissionResponse"]
    admitted["required"].append("lease_id")
    broken = schemathesis.openapi.from_dict(tampered)
    case = broken["/v1/tasks"]["POST"].Case(
        body={"model_ref": SERVED_MODEL, "prompt": "x", "max_tokens": 1},
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(FailureGroup) as failure:
        case.call_and_validate(base_url=live.base_url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
    assert "lease_id" in str(failure.value)
