"""Stream semantics: several readers, resume with Last-Event-ID, retention, cancel on disconnect."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.api.helpers import HANG, state_of, submit, wait_for
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events


def test_second_reader_gets_the_same_events(client: httpx.Client) -> None:
    job = submit(client, max_tokens=20, seed=5)
    first = read_events(client, job["sse_url"])
    second = read_events(client, job["sse_url"])
    assert [(e.id, e.event, e.raw) for e in first] == [(e.id, e.event, e.raw) for e in second]


def test_reconnect_with_last_event_id_loses_nothing_and_repeats_nothing(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[_slow_pool()])
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=40, seed=9)
        head = read_events(client, job["sse_url"], stop_after=6)
        tail = read_events(client, job["sse_url"], headers={"Last-Event-ID": head[-1].id or ""})
        full = read_events(client, job["sse_url"])
    assert [e.id for e in head + tail] == [e.id for e in full]
    assert [e.raw for e in head + tail] == [e.raw for e in full]
    assert tail[-1].event == "end"


def test_finished_log_stays_readable_until_retention_passes(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(stream={"retention_s": 0.5})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=2)
        assert read_events(client, job["sse_url"])[-1].event == "end"
        assert client.get(job["status_url"]).status_code == 200
        wait_for(lambda: client.get(job["status_url"]).status_code == 404, timeout=5)
        assert client.get(job["sse_url"]).status_code == 404


def test_job_nobody_reads_is_canceled_after_the_attach_timeout(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[_slow_pool()], stream={"attach_timeout_s": 0.3})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=1000)
        wait_for(lambda: state_of(client, job["job_id"]) == "canceled", timeout=5)
        events = read_events(client, job["sse_url"])
    assert events[-1].event == "end" and events[-1].data["stop_reason"] == "canceled"
    assert events[-1].data["tokens_out"] < 1000


def test_job_is_canceled_when_its_last_reader_leaves_and_does_not_return(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[_slow_pool()], stream={"reconnect_grace_s": 0.3})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=1000)
        read_events(client, job["sse_url"], stop_after=4)
        wait_for(lambda: state_of(client, job["job_id"]) == "canceled", timeout=5)


def test_reconnect_within_grace_keeps_the_job_running(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[_slow_pool(tokens_per_s=100)], stream={"reconnect_grace_s": 2.0})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=150)
        head = read_events(client, job["sse_url"], stop_after=4)
        tail = read_events(client, job["sse_url"], headers={"Last-Event-ID": head[-1].id or ""})
    assert tail[-1].event == "end" and tail[-1].data["stop_reason"] == "max_tokens"


def test_without_cancel_on_disconnect_the_job_runs_to_the_end(
    make_server: Callable[..., LoopbackServer],
) -> None:
    server = make_server(pools=[_slow_pool(tokens_per_s=200)], stream={"attach_timeout_s": 0.1})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=60, cancel_on_disconnect=False)
        wait_for(lambda: state_of(client, job["job_id"]) == "succeeded", timeout=10)
        status = client.get(job["status_url"]).json()
        events = read_events(client, job["sse_url"])
    assert status["tokens_out"] == 60
    assert status["text"] == "".join(e.data["t"] for e in events if e.event == "token")


def test_keepalive_comments_while_idle(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(pools=[_slow_pool(ttft_ms=700)], stream={"keepalive_s": 0.2})
    keepalives: list[str] = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = submit(client, max_tokens=2)
        events = read_events(client, job["sse_url"], keepalives=keepalives)
    assert events[-1].event == "end"
    assert keepalives, "expected keep-alive comments while waiting for the first token"


def _slow_pool(tokens_per_s: float = 20, ttft_ms: float = 20) -> dict[str, object]:
    return {
        "id": "default",
        "engine": "mock",
        "models": ["mock"],
        "replicas": [{"id": "r0"}],
        "options": {"tokens_per_s": tokens_per_s, "ttft_ms": ttft_ms},
    }


def test_a_reconnect_after_the_terminal_event_is_told_to_stop(client: httpx.Client) -> None:
    """EventSource reconnects to a finished stream for ever unless it gets 204 (the HTML standard)."""
    job = submit(client, max_tokens=3)
    events = read_events(client, job["sse_url"])
    last = events[-1]
    assert last.event == "end"
    again = client.get(job["sse_url"], headers={"Last-Event-ID": last.id or ""})
    assert again.status_code == 204 and again.content == b""
    one_before = client.get(job["sse_url"], headers={"Last-Event-ID": events[-2].id or ""})
    assert one_before.status_code == 200 and "event: end" in one_before.text  # not everything seen yet


def test_a_last_event_id_ahead_of_a_running_stream_is_refused(client: httpx.Client) -> None:
    """An id this stream has not sent yet could only skip events silently: 400, naming the header.
    The newest id it did send resumes as usual."""
    job = submit(client, prompt=HANG, max_tokens=3)
    head = read_events(client, job["sse_url"], stop_after=1)  # `started`: the log has one event
    ahead = client.get(job["sse_url"], headers={"Last-Event-ID": "999"})
    assert ahead.status_code == 400 and ahead.json()["code"] == "INVALID_PARAMS"
    assert "ahead of this stream's newest event" in ahead.json()["message"]
    with client.stream("GET", job["sse_url"], headers={"Last-Event-ID": head[-1].id or ""}) as resumed:
        assert resumed.status_code == 200
    assert client.post(f"/v1/tasks/{job['job_id']}/cancel").status_code == 204
