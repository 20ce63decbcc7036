"""Human-readable console lines on a terminal, JSON lines otherwise (the scenario's log file shows the
second): `orchestratord serve` with its stderr on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from tests.fakes.servers import REPO, free_port


def read_until(fd: int, marker: bytes, timeout_s: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    return seen


def test_console_lines_on_a_terminal() -> None:
    controller, terminal = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "ORCHD_LOG_FORMAT": "auto"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestratord", "serve", "--port", str(free_port())],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env, cwd=REPO,
    )  # fmt: skip
    os.close(terminal)
    try:
        output = read_until(controller, b"orchestratord_started", timeout_s=30).decode(errors="replace")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(controller)
    assert "orchestratord_started" in output, output
    line = next(text for text in output.splitlines() if "orchestratord_started" in text)
    assert not line.lstrip().startswith("{")
    assert "[info" in line and "pools=['default']" in line  # structlog's console renderer
    for text in filter(str.strip, output.splitlines()):
        try:
            json.loads(text)
        except ValueError:
            continue
        raise AssertionError(f"a JSON line on a terminal: {text}")
