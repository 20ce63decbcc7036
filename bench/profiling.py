"""Sampling profiles of the orchestrator under load, with py-spy, and what they say in numbers.

py-spy attaches to the running orchestratord (no restart, no instrumentation) and writes collapsed
stacks (``frame;frame;… count``, one line per distinct stack). Idle time (waiting in the event loop's
poll) is not sampled, so every percentage here is a share of the time the process was busy.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
GROUPS = (
    ("orchestratord/", "orchestratord"),
    ("worker_adapters/", "worker_adapters"),
    ("pool_manager/", "pool_manager"),
    ("bench/", "bench"),
    ("sse_starlette/", "sse_starlette"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("uvicorn/", "uvicorn"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpcore"),
    ("anyio/", "anyio"),
    ("h11/", "h11"),
    ("structlog/", "structlog"),
    ("pydantic/", "pydantic"),
    ("pydantic_core/", "pydantic"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/", "asyncio (stdlib)"),
    ("logging/", "logging (stdlib)"),
    ("json/", "json (stdlib)"),
)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(pid: int, seconds: float, out: Path, rate: int = 200) -> str | None:
    """Sample `pid` for `seconds` into `out` (collapsed stacks). Returns an error message, or None."""
    exe = py_spy()
    if exe is None:
        return "py-spy is not installed (pip install py-spy)"
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate)]
    argv += ["--format", "raw", "--function", "--nonblocking", "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    text, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    written = await asyncio.to_thread(out.exists)
    if proc.returncode != 0 or not written:
        return f"py-spy failed ({proc.returncode}): {text.decode(errors='replace')[-300:]}"
    return None


def parse(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def group_of(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match.group("file") if match else frame
    for marker, name in GROUPS:
        if marker in path:
            return name
    return "other"


def short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match.group('func')} ({match.group('file')})"


def summarize(text: str, top: int = 20) -> dict[str, Any]:
    """Self time by package and by function, and inclusive time of the busiest functions."""
    stacks = parse(text)
    total = sum(n for _, n in stacks)
    if not total:
        return {"samples": 0}
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        leaf = frames[-1]
        own[short(leaf)] += n
        packages[group_of(leaf)] += n
        for name in {short(f) for f in frames if group_of(f) not in ("asyncio (stdlib)", "other")}:
            inclusive[name] += n

    def share(counter: Counter[str], k: int) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(k)]

    seen = {f for frames, _ in stacks for f in frames if "protocols/http/" in f}
    protocol = sorted({name for name in ("h11", "httptools") if any(f"{name}_impl" in f for f in seen)})
    return {
        "samples": total,
        "uvicorn_http_protocol": "+".join(protocol) or None,
        "self_by_package_pct": share(packages, len(packages)),
        "self_by_function_pct": share(own, top),
        "inclusive_by_function_pct": share(inclusive, top),
    }


def keep(raw: Path, dest: Path) -> Path:
    """Store the collapsed stacks gzipped next to the results (flamegraph.pl or speedscope read them)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with raw.open("rb") as src, gzip.open(dest, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest
