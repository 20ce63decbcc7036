"""SIGTERM mid-stream, against `orchestratord serve` as a child process: stop admitting (503 with
Retry-After), let running jobs finish within the grace period, end the rest with a retriable error,
and give every open stream its terminal event before the process exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.api.helpers import wait_for
from tests.fakes.servers import serve_in_process
from tests.fakes.sse import Event, read_events

GRACE_S = 2.0
CONFIG = f"""
shutdown_grace_s: {GRACE_S}
pools:
  - id: default
    engine: mock
    models: [mock]
    replicas: [{{id: r0}}]
    slots: 3
    options: {{tokens_per_s: 40}}
"""


class Reader(threading.Thread):
    """One client reading one job's stream; notes when its terminal event arrived."""

    def __init__(self, base_url: str, job: dict[str, Any]) -> None:
        super().__init__()
        self.base_url, self.job = base_url, job
        self.events: list[Event] = []
        self.ended_at = 0.0

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            self.events = read_events(client, self.job["sse_url"])
        self.ended_at = time.monotonic()

    @property
    def terminal(self) -> Event:
        return self.events[-1]


def _submit(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "shutdown", **body})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_issue_7_sigterm_mid_stream_every_client_gets_a_terminal_event(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    with (
        serve_in_process("--config", str(config)) as (base, proc),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        short = _submit(client, max_tokens=int(GRACE_S * 40 / 2))  # finishes within the grace period
        long = _submit(client, max_tokens=4000)
        silent = _submit(client, prompt="[[mock hang]]", max_tokens=5)  # an engine that sends nothing
        queued = [_submit(client, max_tokens=5) for _ in range(3)]
        readers = {
            name: Reader(base, job) for name, job in [("short", short), ("long", long), ("silent", silent)]
        }
        readers |= {f"queued{i}": Reader(base, job) for i, job in enumerate(queued)}
        for reader in readers.values():
            reader.start()
        wait_for(lambda: client.get(silent["status_url"]).json()["state"] == "running")
        wait_for(lambda: client.get(long["status_url"]).json()["tokens_out"] > 0)

        signaled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        refused = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "late", "max_tokens": 1})
        ready = client.get("/readyz")
        status = client.get(long["status_url"])
        for reader in readers.values():
            reader.join(GRACE_S + 20)
        assert proc.wait(30) == 0
        stopped = time.monotonic()

    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "SHUTTING_DOWN" and refused.json()["retriable"] is True
    assert int(refused.headers["retry-after"]) >= 1 and int(refused.headers["x-backoff-ms"]) >= 1
    assert ready.status_code == 503 and ready.json()["checks"]["accepting"] is False
    assert status.status_code == 200  # reads are still served while draining

    assert all(not r.is_alive() for r in readers.values())
    assert all(r.terminal.event in ("end", "error") for r in readers.values())
    assert readers["short"].terminal.event == "end"
    assert readers["short"].terminal.data["stop_reason"] == "max_tokens"
    for name in ("long", "silent"):  # still running when the grace period ran out
        terminal = readers[name].terminal
        assert (terminal.event, terminal.data["code"], terminal.data["retriable"]) == (
            "error",
            "WORKER_RESET",
            True,
        )
        assert readers[name].ended_at - signaled >= GRACE_S * 0.9
    for i in range(3):  # queued: ended at once, not after the grace period
        reader = readers[f"queued{i}"]
        terminal = reader.terminal
        assert (terminal.event, terminal.data["code"], terminal.data["retriable"]) == (
            "error",
            "SHUTTING_DOWN",
            True,
        )
        assert reader.ended_at - signaled < GRACE_S
        assert not [e for e in reader.events if e.event == "token"]
    assert stopped - signaled < GRACE_S + 10


def test_sigterm_with_nothing_running_stops_promptly(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    with (
        serve_in_process("--config", str(config)) as (base, proc),
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        job = _submit(client, max_tokens=2)
        assert read_events(client, job["sse_url"])[-1].event == "end"
        signaled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert time.monotonic() - signaled < GRACE_S
