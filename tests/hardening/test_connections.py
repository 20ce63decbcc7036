"""Hostile connections, against `orchestratord serve` as operators run it (its own uvicorn settings):
headers too long, malformed HTTP, clients that connect and send nothing or trickle their headers,
pipelined requests. One test checks that the in-thread test servers run the same guards."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fakes.servers import LoopbackServer, serve_in_process

HEADER_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 3
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("conn") / "c.yaml"
    config.write_text(
        f"limits: {{header_timeout_s: {HEADER_TIMEOUT_S}, keep_alive_s: {KEEP_ALIVE_S}, "
        f"max_header_bytes: {MAX_HEADER_BYTES}}}\n"
    )
    with serve_in_process("--config", str(config)) as (base, _):
        yield base


def connect(base_url: str) -> socket.socket:
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
    sock.settimeout(HEADER_TIMEOUT_S * 10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """One response with a content-length, and nothing more."""
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw) < response_length(raw):
        chunk = sock.recv(65536)
        assert chunk, f"closed before the response was complete: {raw!r}"
        raw += chunk
    return raw


def response_length(raw: bytes) -> int:
    """The length of the response `raw` begins with (its head complete), body included."""
    head, _, _ = raw.partition(b"\r\n\r\n")
    return len(head) + 4 + int(parse(head + b"\r\n\r\n")[1]["content-length"])


def first_response(raw: bytes) -> bytes:
    return raw[: response_length(raw)]


def trickle_until_closed(sock: socket.socket) -> bytes:
    """Send a byte every 0.1 s; what the server sent before it closed the connection."""
    sock.settimeout(0.1)
    received = b""
    for _ in range(int(HEADER_TIMEOUT_S * 100)):  # ten times the deadline: never done in time
        try:
            sock.sendall(b"X")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError("the server never closed the connection")


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_envelope(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert "x-correlation-id" in headers
    envelope = json.loads(body)
    assert envelope["code"] == code and envelope["retriable"] is False and envelope["message"]
    assert headers["x-should-retry"] == "false"  # as on every other error


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Big": "a" * 70_000}, id="one-long-header"),
        pytest.param({f"X-H{i}": "a" * 100 for i in range(500)}, id="many-headers"),
        pytest.param({"X-Big": "a" * 2_000_000}, id="two-megabytes"),
    ],
)
def test_headers_too_long_are_431_with_the_envelope(base_url: str, headers: dict[str, str]) -> None:
    """What a client sees: the answer, not a reset connection."""
    response = httpx.get(f"{base_url}/v1/tasks/{'0' * 8}", headers=headers, timeout=10)
    assert_envelope(response.status_code, dict(response.headers), response.content, 431, "PAYLOAD_TOO_LARGE")
    assert str(MAX_HEADER_BYTES) in response.json()["message"]
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200


def test_headers_sent_slowly_past_the_limit_are_431(base_url: str) -> None:
    with connect(base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(MAX_HEADER_BYTES // 1000 + 4):
            sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
            time.sleep(0.01)
        assert_envelope(*parse(read_all(sock)), 431, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage"),
        pytest.param(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", id="space-in-target"),
        pytest.param(b"GET /healthz\r\n\r\n", id="http-0.9"),
        pytest.param(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", id="http-2.0-request-line"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, id="tls-hello"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n", id="folded-header"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n", id="nul-in-header"),
        pytest.param(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            id="two-lengths",
        ),
        pytest.param(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"
        ),
    ],
)
def test_malformed_http_is_400_with_the_envelope(base_url: str, request_bytes: bytes) -> None:
    with connect(base_url) as sock:
        sock.sendall(request_bytes)
        assert_envelope(*parse(read_all(sock)), 400, "INVALID_PARAMS")


def test_a_client_that_connects_and_sends_nothing_is_cut_off(base_url: str) -> None:
    with connect(base_url) as sock:
        began = time.monotonic()
        assert read_all(sock) == b""  # closed by the server, not by our own socket timeout
        assert time.monotonic() - began >= HEADER_TIMEOUT_S * 0.9


def test_a_client_that_trickles_its_headers_is_cut_off(base_url: str) -> None:
    with connect(base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        began = time.monotonic()
        with pytest.raises((ConnectionError, BrokenPipeError)):
            for _ in range(int(HEADER_TIMEOUT_S * 50)):  # one byte every 0.1 s: never done in time
                sock.sendall(b"X")
                time.sleep(0.1)
            read_all(sock)
            raise ConnectionError("the server closed the connection")
        assert time.monotonic() - began < HEADER_TIMEOUT_S * 5


def test_idle_keep_alive_connections_are_closed_and_busy_ones_are_not(base_url: str) -> None:
    """An idle connection closes after the keep-alive, and the deadlines never cut a running request."""
    with connect(base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(HEADER_TIMEOUT_S / 2)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(sock).count(b"HTTP/1.1 200") == 2
    with httpx.Client(base_url=base_url, timeout=30) as client:
        job = client.post(
            "/v1/tasks", json={"model_ref": "mock", "prompt": "[[mock slow_start_ms=2500]]", "max_tokens": 2}
        ).json()
        with client.stream("GET", job["sse_url"]) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("event:")]
    assert lines[-1] == "event: end"


def test_an_idle_keep_alive_outlives_the_header_deadline_and_then_closes(base_url: str) -> None:
    """Between requests a connection idles for `keep_alive_s`, not `header_timeout_s`: a load balancer
    reusing a connection idle longer than the header deadline is served, and the connection closes
    quietly once idle for the whole keep-alive."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(base_url) as sock:
        sock.sendall(get)
        read_response(sock)
        time.sleep(HEADER_TIMEOUT_S * 1.6)
        sock.sendall(get)
        answered = read_response(sock)
        idle_from = time.monotonic()
        assert read_all(sock) == b""
        idled = time.monotonic() - idle_from
    assert parse(answered)[0] == 200
    assert KEEP_ALIVE_S * 0.9 <= idled < KEEP_ALIVE_S + HEADER_TIMEOUT_S * 2


@pytest.mark.parametrize("first_bytes", [b"GET /healthz HTTP/1.1\r\n", b"\r\n"], ids=["a-head", "a-crlf"])
def test_a_request_begun_on_an_idle_keep_alive_gets_the_header_deadline_from_its_first_byte(
    base_url: str, first_bytes: bytes
) -> None:
    """After an idle while, the next request's first bytes start the header deadline: a head left
    unfinished (or bytes that begin none, which stop uvicorn's keep-alive timer) is cut off after
    `header_timeout_s`, not after a keep-alive or never."""
    with connect(base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(sock)
        time.sleep(HEADER_TIMEOUT_S * 1.2)
        sock.sendall(first_bytes)
        began = time.monotonic()
        assert read_all(sock) == b""
        waited = time.monotonic() - began
    assert HEADER_TIMEOUT_S * 0.9 <= waited < KEEP_ALIVE_S


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "after-the-response"])
def test_each_request_on_a_keep_alive_connection_gets_its_own_header_deadline(
    base_url: str, pipelined: bool
) -> None:
    """The deadline starts again when a response ends, for headers that began before it or after it;
    trickled bytes keep uvicorn's own keep-alive timeout from ever closing the connection."""
    first, second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /healthz HTTP/1.1\r\n"
    with connect(base_url) as sock:
        if pipelined:
            sock.sendall(first + second)
            received = b""
        else:
            sock.sendall(first)
            received = read_response(sock)
            sock.sendall(second)
        received += trickle_until_closed(sock)
    assert received.count(b"HTTP/1.1 ") == 1 and received.startswith(b"HTTP/1.1 200")


def test_a_malformed_request_pipelined_after_a_good_one_is_answered_after_it(base_url: str) -> None:
    with connect(base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
        raw = read_all(sock)
    ok = first_response(raw)
    assert parse(ok)[0] == 200
    assert_envelope(*parse(raw[len(ok) :]), 400, "INVALID_PARAMS")


def test_headers_over_the_limit_behind_a_streaming_response_are_answered_after_it(base_url: str) -> None:
    """llhttp reads the next request while the stream runs: the 431 waits for the stream's end.
    (The head is sent once the stream has begun: a head that began in the read ending the request
    before it is counted from the next read on.)"""
    job = httpx.post(
        f"{base_url}/v1/tasks",
        json={"model_ref": "mock", "prompt": "[[mock slow_start_ms=500]]", "max_tokens": 2},
        timeout=10,
    ).json()
    with connect(base_url) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % job["sse_url"].encode())
        began = sock.recv(65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(MAX_HEADER_BYTES // 1000 + 4):
            sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        raw = began + read_all(sock)
    stream, refused, rest = raw.partition(b"HTTP/1.1 431 ")
    assert b"event: end" in stream and stream.endswith(b"0\r\n\r\n")  # the whole stream came first
    assert_envelope(*parse(refused + rest), 431, "PAYLOAD_TOO_LARGE")


def test_in_thread_test_servers_run_the_same_guards(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server(limits={"header_timeout_s": HEADER_TIMEOUT_S, "max_header_bytes": 2048})
    with connect(server.base_url) as sock:
        assert read_all(sock) == b""  # a silent client is cut off
    with connect(server.base_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):
            sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        assert_envelope(*parse(read_all(sock)), 431, "PAYLOAD_TOO_LARGE")


def test_the_server_still_serves_after_all_of_this(base_url: str, tmp_path: Path) -> None:
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("megabytes", [2, 16])
def test_a_chunked_body_with_no_length_over_the_limit_is_413(base_url: str, megabytes: int) -> None:
    """Through the server's own HTTP stack: the client sends its whole body and reads the 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model_ref":"mock","max_tokens":1,"prompt":"'
        for _ in range(megabytes * 16):
            yield b"a" * 65536
        yield b'"}'

    response = httpx.post(
        f"{base_url}/v1/tasks", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert "content-length" not in response.request.headers
    assert_envelope(response.status_code, dict(response.headers), response.content, 413, "PAYLOAD_TOO_LARGE")


def test_an_endless_chunked_upload_is_cut_off(base_url: str) -> None:
    """A client that never stops sending is not read forever: the connection ends soon after the limit."""
    chunk = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
    sent = 0
    with connect(base_url) as sock:
        sock.sendall(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # the server closed its end
            while sent < 256 * 2**20:
                sock.sendall(chunk)
                sent += len(chunk)
    # the server drains a refused body up to 64 MiB (so that clients read their 413), then closes
    assert sent < 128 * 2**20


def test_a_client_that_keeps_sending_a_large_body_reads_its_413(base_url: str) -> None:
    """A client that sends its whole 50 MB body before it reads (as most do), over a plain socket so
    that nothing retries a read after a failed write: the server reads the rest and drops it before it
    answers, so the client gets the 413 every time rather than a broken pipe or a connection reset."""
    body = b"x" * 50_000_000
    for _ in range(5):
        with connect(base_url) as sock:
            sock.sendall(
                b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            sock.sendall(body)
            assert_envelope(*parse(read_all(sock)), 413, "PAYLOAD_TOO_LARGE")
