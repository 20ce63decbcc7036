"""The console script, as an operator runs it: separate processes, real sockets, real signals."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from orchestratord import cli
from orchestratord.cli import GC_THRESHOLDS, build_parser
from orchestratord.settings import load_settings
from tests.fakes.servers import REPO, serve_in_process
from tests.fakes.sse import Event, read_events

REQUEST = {"model_ref": "mock", "prompt": "tell me about queues", "max_tokens": 40, "seed": 1234}


def _tokens(base: str) -> list[str]:
    with httpx.Client(base_url=base, timeout=30) as client:
        job = client.post("/v1/tasks", json=REQUEST).json()
        return [e.raw for e in read_events(client, job["sse_url"]) if e.event == "token"]


def test_issue_2_same_request_and_seed_give_identical_tokens_across_server_runs() -> None:
    with serve_in_process() as (base, _):
        first = _tokens(base)
    with serve_in_process() as (base, _):
        second = _tokens(base)
    assert len(first) == 40
    assert first == second
    with serve_in_process() as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        other = client.post("/v1/tasks", json={**REQUEST, "seed": 99}).json()
        different = [e.raw for e in read_events(client, other["sse_url"]) if e.event == "token"]
    assert different != first


def test_default_bind_is_loopback_8080() -> None:
    args = build_parser().parse_args(["serve"])
    settings = load_settings(args.config, host=args.host, port=args.port)
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_bad_config_stops_start_up_naming_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "pools.yaml"
    config.write_text(
        "pools:\n  - id: gpu\n    engine: llamacpp\n    models: [m]\n"
        "    replicas: [{id: a, url: 'not a url'}]\n"
        "    slotz: 4\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "orchestratord", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "pools.0.slotz: unknown key" in result.stderr
    assert "pools.0.replicas.0.url" in result.stderr


def test_sigterm_mid_stream_every_client_gets_a_terminal_event(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "shutdown_grace_s: 1\npools:\n  - {id: default, engine: mock, models: [mock], replicas: [{id: r0}],"
        " slots: 2, options: {tokens_per_s: 20}}\n"
    )
    results: list[list[Event]] = []
    with (
        serve_in_process("--config", str(config)) as (base, proc),
        httpx.Client(base_url=base, timeout=30) as c,
    ):
        jobs = [c.post("/v1/tasks", json={**REQUEST, "max_tokens": 15}).json() for _ in range(1)]
        jobs += [c.post("/v1/tasks", json={**REQUEST, "max_tokens": 2000}).json() for _ in range(3)]

        def read(url: str) -> None:
            with httpx.Client(base_url=base, timeout=30) as own:
                results.append(read_events(own, url))

        readers = [threading.Thread(target=read, args=(j["sse_url"],)) for j in jobs]
        for r in readers:
            r.start()
        import time

        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        refused = c.post("/v1/tasks", json=REQUEST)
        for r in readers:
            r.join(30)
        assert proc.wait(30) == 0
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert len(results) == 4
    terminals = [events[-1] for events in results]
    assert all(t.event in ("end", "error") for t in terminals)
    assert any(t.event == "end" and t.data["stop_reason"] == "max_tokens" for t in terminals)
    errors = [t for t in terminals if t.event == "error"]
    assert errors and all(t.data["retriable"] for t in errors)


def test_serve_freezes_start_up_objects_and_collects_the_young_generation_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`serve` tunes the collector after building the app and before the server runs."""
    seen: dict[str, object] = {}

    class Server:
        def __init__(self, config: object, app_state: object) -> None:
            pass

        def run(self) -> None:
            seen.update(thresholds=gc.get_threshold(), frozen=gc.get_freeze_count())

    monkeypatch.setattr(cli, "DrainingServer", Server)
    thresholds = gc.get_threshold()
    try:
        cli.serve(load_settings(None))
        assert seen["thresholds"] == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > thresholds[0]
        assert isinstance(seen["frozen"], int) and seen["frozen"] > 0  # start-up objects skip every walk
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
