"""Memory is given back (issue 20, item 8): thousands of jobs, once their retention has passed and
housekeeping has purged them, leave no Python objects behind in the server (tracemalloc over the server
running in this process), while at their peak the retained jobs held many times that bound.

The allocator's side (RSS, glibc's heap, pymalloc's arenas) is measured by the bench, `python -m bench
run --scenario memory`; see docs/operations.md#memory.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
import tracemalloc
from collections.abc import Callable

from tests.fakes.servers import LoopbackServer

RETENTION_S = 10.0
JOBS = 2000
CONCURRENCY = 16
BOUND = 512 * 1024  # bytes of Python memory a whole load may leave behind (containers keep their size)
BODY = json.dumps({"model_ref": "m", "prompt": "hi", "max_tokens": 8}).encode()
POST = (
    b"POST /v1/tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


async def run_jobs(base_url: str, n: int) -> None:
    """`n` jobs, CONCURRENCY at a time over keep-alive connections, each stream read to its end. Plain
    HTTP/1.1 on asyncio streams: under tracemalloc, httpx would take most of the test's time."""
    host, port = base_url.removeprefix("http://").split(":")
    remaining = iter(range(n))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in remaining:
                writer.write(POST)
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 202"), head
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                assert length is not None, head
                job = json.loads(await reader.readexactly(int(length.group(1))))
                writer.write(f"GET {job['sse_url']} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
                await reader.readuntil(b"\r\n\r\n")
                stream = await reader.readuntil(b"\r\n0\r\n\r\n")  # the last chunk of the stream
                assert b"event: end" in stream, stream[-500:]
        finally:
            writer.close()
            await writer.wait_closed()

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


def traced(snapshot: tracemalloc.Snapshot) -> int:
    """The Python memory a snapshot holds, less tracemalloc's own."""
    ours = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    return sum(stat.size for stat in ours.statistics("filename"))


def test_thousands_of_jobs_leave_nothing_behind_once_retention_passed(
    make_server: Callable[..., LoopbackServer],
) -> None:
    pool = {"id": "p", "engine": "mock", "models": ["m"], "replicas": [{"id": "r0"}], "slots": 8,
            "options": {"ttft_ms": 0, "tokens_per_s": 100000}}  # fmt: skip
    # what retention holds: finished jobs' logs, and presence checks pending past a job's end
    stream = {"retention_s": RETENTION_S, "attach_timeout_s": RETENTION_S, "reconnect_grace_s": RETENTION_S}
    server = make_server(pools=[pool], stream=stream, queue={"capacity": 4096})
    # Warm up: first-time allocations, caches. These jobs were allocated before tracing started, so
    # their purge frees nothing traced.
    asyncio.run(run_jobs(server.base_url, 200))
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        asyncio.run(run_jobs(server.base_url, JOBS))
        gc.collect()
        peak = tracemalloc.take_snapshot()  # the jobs that ended in the last RETENTION_S are retained
        time.sleep(RETENTION_S + 1.5)  # ... until housekeeping (every 0.25 s) purges them
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held, left = traced(peak) - traced(before), traced(after) - traced(before)
    print(f"memory: {JOBS} jobs; Python memory held at the peak {held} bytes, left after retention {left}")
    grown = "\n".join(str(stat) for stat in after.compare_to(before, "lineno")[:10])
    # A retained 8-token job holds about 3 KB: hundreds of them at the peak, whatever the machine's pace.
    assert held > 2 * BOUND, f"at the peak the retained jobs held only {held} bytes"
    assert left < BOUND, f"{left} bytes more after {JOBS} jobs past retention ({held} at peak):\n{grown}"
