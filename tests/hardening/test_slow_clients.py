"""Slow and idle clients are bounded, against `orchestratord serve` as operators run it: a request body
must arrive within its deadline (longer for a long body at the minimum rate), and with more trickling
connections than the process has file descriptors for, a well-behaved client is still answered while
the trickling connections are closed with 408 or dropped."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.servers import serve_in_process

BODY_TIMEOUT_S = 1.0
MIN_RATE = 1000  # bytes/s


def connect(base_url: str, timeout: float = 10.0) -> socket.socket:
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
    sock.settimeout(timeout)
    return sock


def post_head(length: int) -> bytes:
    return (
        f"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def response_of(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """The status and JSON body of the one response the server sends (its head checked for
    `x-should-retry`, which every error carries)."""
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep and b"content-length" in head.lower():
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(body) >= length:
                status = int(head.split()[1])
                assert status < 400 or b"x-should-retry: " in head.lower(), head
                return status, json.loads(body[:length])
    raise AssertionError(f"closed without a whole response: {raw!r}")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("slow") / "c.yaml"
    config.write_text(f"limits: {{body_timeout_s: {BODY_TIMEOUT_S}, min_body_rate_bytes_s: {MIN_RATE}}}\n")
    with serve_in_process("--config", str(config)) as (base, _):
        yield base


def test_a_body_trickled_past_its_deadline_gets_408(base_url: str) -> None:
    with connect(base_url) as sock:
        sock.sendall(post_head(100) + b'{"model_ref"')
        began = time.monotonic()
        with pytest.raises(OSError):  # the server answers and closes while we still trickle
            for _ in range(100):
                sock.sendall(b" ")
                time.sleep(0.1)
        status, envelope = response_of(sock)
    assert time.monotonic() - began < BODY_TIMEOUT_S * 4
    assert status == 408 and envelope["code"] == "REQUEST_TIMEOUT" and envelope["retriable"] is True
    assert "did not arrive within 1 s" in str(envelope["message"])


def test_an_idle_keep_alive_connection_outlives_the_clients_own_expiry(base_url: str) -> None:
    """httpx and the OpenAI SDKs reuse an idle connection for up to 5 s. The server keeps it longer, so
    a request sent just before a client's expiry never meets the server's close (a reset)."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(base_url) as sock:
        sock.sendall(get)
        assert response_of(sock)[0] == 200
        time.sleep(6.0)
        sock.sendall(get)
        assert response_of(sock)[0] == 200


def test_a_long_body_at_the_minimum_rate_gets_the_time_it_needs(base_url: str) -> None:
    """4,000 bytes at the minimum rate of 1,000 bytes/s may take 4 s: sent over 2 s, past the 1 s
    deadline a short body gets, it is served."""
    body = json.dumps({"model_ref": "mock", "prompt": "x" * 3940, "max_tokens": 1}).encode()
    with connect(base_url) as sock:
        sock.sendall(post_head(len(body)))
        for i in range(0, len(body), 500):
            sock.sendall(body[i : i + 500])
            time.sleep(0.25)
        status, answer = response_of(sock)
    assert status == 202 and answer["job_id"]


def test_more_trickling_connections_than_file_descriptors_lock_nobody_out(tmp_path: Path) -> None:
    """The server may open 256 files; 400 connections trickle their headers (the header deadline, 60 s,
    would not save anyone). A well-behaved client still gets its answers within seconds, the server
    keeps its open connections under the cap, and the oldest tricklers are closed, with 408 since
    they had begun a request."""
    config = tmp_path / "c.yaml"
    config.write_text("limits: {header_timeout_s: 60}\n")
    with serve_in_process("--config", str(config), max_files=256) as (base, _):
        tricklers: list[socket.socket] = []
        selector = selectors.DefaultSelector()
        try:
            for _ in range(400):
                sock = connect(base)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                tricklers.append(sock)
            began = time.monotonic()
            with httpx.Client(base_url=base, timeout=10) as client:
                assert client.get("/healthz").status_code == 200
                submitted = client.post(
                    "/v1/tasks", json={"model_ref": "mock", "prompt": "hi", "max_tokens": 2}
                )
                assert submitted.status_code == 202, submitted.text
            assert time.monotonic() - began < 5
            closed, answered = 0, 0
            for key, _ in selector.select(timeout=2):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                closed += 1
                answered += data.startswith(b"HTTP/1.1 408 ")
            assert closed >= 400 - 192, f"only {closed} of 400 trickling connections were closed"
            assert answered == closed, "each had begun a request: each is told why (408)"
        finally:
            selector.close()
            for sock in tricklers:
                sock.close()
