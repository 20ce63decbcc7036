"""One real run of orchestratord (`python -m orchestratord serve`, a child process) with a mock pool and
a vLLM pool (the fake vLLM engine on loopback), driven through every ending a job can have:
completed, failed, expired, canceled by the client, canceled for lack of a reader, refused with 429,
ended by the shutdown.

It keeps what a client saw (responses, SSE events), what the engine saw (request headers), what a
scraper saw (/metrics while the slot was busy and at the end) and every log line the process wrote.
The metrics and log tests assert on the same run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes.engines.server import serve
from tests.fakes.engines.vllm import MODEL as VLLM_MODEL
from tests.fakes.engines.vllm import VllmEngine
from tests.fakes.servers import serve_in_process
from tests.fakes.sse import Event, read_events
from tests.observability.exposition import value

ATTACH_TIMEOUT_S = 2.0


@dataclass
class Job:
    name: str
    body: dict[str, Any]
    response: httpx.Response
    sent_correlation_id: str | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return str(self.response.json().get("job_id", ""))

    @property
    def correlation_id(self) -> str:
        return self.response.headers["x-correlation-id"]

    @property
    def tokens(self) -> int:
        return sum(1 for e in self.events if e.event == "token")

    def last(self, name: str) -> Event:
        matching = [e for e in self.events if e.event == name]
        assert matching, f"job {self.name} has no {name} event: {[e.event for e in self.events]}"
        return matching[-1]


@dataclass
class Run:
    jobs: dict[str, Job]
    busy_scrape: str  # while the mock slot was held and a job waited
    final_scrape: str
    log_text: str
    engine: VllmEngine
    pools: dict[str, list[str]]  # pool_id → replica ids

    @property
    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text.splitlines() if line.strip()]


def config(engine_url: str) -> dict[str, Any]:
    return {
        "queue": {"capacity": 1},
        # keep-alives rarer than the client's read timeout: a stuck stream fails the run, not hangs it
        "stream": {"attach_timeout_s": ATTACH_TIMEOUT_S, "reconnect_grace_s": 1.0, "keepalive_s": 60},
        "shutdown_grace_s": 2,
        "pools": [
            {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1},
            {
                "id": "vpool",
                "engine": "vllm",
                "models": ["qwen"],
                "engine_model": VLLM_MODEL,
                "replicas": [{"id": "v0", "url": engine_url}],
                "slots": 2,
            },
        ],
    }


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


class Driver:
    def __init__(self, client: httpx.Client) -> None:
        self.c = client
        self.jobs: dict[str, Job] = {}

    def submit(self, name: str, cid: str | None = None, **body: Any) -> Job:
        headers = {"X-Correlation-Id": cid} if cid else {}
        response = self.c.post("/v1/tasks", json=body, headers=headers)
        job = self.jobs[name] = Job(name, body, response, cid)
        return job

    def run(self, name: str, cid: str | None = None, **body: Any) -> Job:
        job = self.submit(name, cid, **body)
        assert job.response.status_code == 202, job.response.text
        job.events = read_events(self.c, job.response.json()["sse_url"])
        return job

    def state(self, job: Job) -> str:
        return str(self.c.get(f"/v1/tasks/{job.job_id}").json()["state"])

    def scrape(self) -> str:
        response = self.c.get("/metrics")
        assert response.status_code == 200
        return response.text


def drive(d: Driver) -> tuple[str, str]:
    """The jobs; returns the busy and final scrapes."""
    d.run("A1", "obs-A1", model_ref="mock", prompt="alpha beta gamma delta", max_tokens=5,
          session_id="sess-obs", deadline_ms=60_000)  # fmt: skip
    d.run("A2", None, model_ref="mock", prompt="one two three", max_tokens=4, priority="batch")
    d.run("A3", "obs-A3", model_ref="mock", prompt="many tokens here", max_tokens=40, priority="batch")
    d.run("V", "obs-V1", model_ref="qwen", prompt="hello vllm", max_tokens=6)
    d.run("B", "obs-B", model_ref="mock", prompt="[[mock fail_after=2]] fail soon", max_tokens=5)
    hold = d.submit("H", "obs-H", model_ref="mock", prompt="[[mock hang]] hold the slot", max_tokens=5,
                    cancel_on_disconnect=False)  # fmt: skip
    wait_until(lambda: d.state(hold) == "running", "the holding job runs")
    late = d.submit("D", "obs-D", model_ref="mock", prompt="too late", max_tokens=5, priority="batch",
                    deadline_ms=800, cancel_on_disconnect=False)  # fmt: skip
    assert late.response.status_code == 202, late.response.text
    wait_until(lambda: d.state(late) == "failed", "the deadline job expires")
    late.events = read_events(d.c, late.response.json()["sse_url"])
    waiting = d.submit("Q", "obs-Q", model_ref="mock", prompt="waiting in line", max_tokens=5)
    assert waiting.response.status_code == 202, waiting.response.text
    refused = d.submit("R", "obs-R", model_ref="mock", prompt="no room", max_tokens=5)
    assert refused.response.status_code == 429, refused.response.text
    busy = ""

    def queued_seen() -> bool:
        nonlocal busy
        busy = d.scrape()
        return value(busy, "queue_depth", pool_id="default", priority="interactive") == 1

    wait_until(queued_seen, "queue_depth shows the waiting job")
    wait_until(
        lambda: d.state(waiting) == "canceled", "the unread job is canceled", timeout=ATTACH_TIMEOUT_S + 10
    )
    assert d.c.post(f"/v1/tasks/{hold.job_id}/cancel").status_code == 204
    hold.events = read_events(d.c, hold.response.json()["sse_url"])
    waiting.events = read_events(d.c, waiting.response.json()["sse_url"])
    final = ""

    def settled() -> bool:
        nonlocal final
        final = d.scrape()
        free = value(final, "pool_slots_free", pool_id="default")
        return free == 1 and value(final, "queue_depth", pool_id="default", priority="interactive") == 0

    wait_until(settled, "the slot is free and the queue empty")
    # after the final scrape: a job still running at shutdown, ended by the drain (shutdown_grace_s)
    last = d.submit("S", "obs-S", model_ref="mock", prompt="[[mock hang]] until shutdown", max_tokens=5,
                    cancel_on_disconnect=False)  # fmt: skip
    wait_until(lambda: d.state(last) == "running", "the last job runs")
    return busy, final


def run(tmp: Path) -> Run:
    engine = VllmEngine()
    with serve(engine) as engine_url:
        path = tmp / "orchestratord.yaml"
        path.write_text(yaml.safe_dump(config(engine_url)))
        log_path = tmp / "orchestratord.log"
        with (
            serve_in_process("--config", str(path), log_path=log_path) as (base, _),
            httpx.Client(base_url=base, timeout=15) as client,
        ):
            wait_until(lambda: client.get("/readyz").status_code == 200, "orchestratord is ready")
            driver = Driver(client)
            busy, final = drive(driver)
    pools = {"default": ["r0"], "vpool": ["v0"]}
    return Run(driver.jobs, busy, final, log_path.read_text(encoding="utf-8"), engine, pools)
