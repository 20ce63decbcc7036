"""One guidellm run against an OpenAI-compatible base URL, and the figures read from its JSON report.

A run is one ``guidellm run`` process, guidellm's own CLI as shipped: a constant-rate profile at each of
the plan's rates in turn, each bounded by ``max_duration``, on synthetic prompts of a fixed length with a
fixed output length, streaming, over HTTP/1.1. Its JSON report holds one benchmark per rate; `figures`
reads from each what this harness reports for its own load generator too, and `fields_sent` the fields
of the request bodies guidellm sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.guidellm_env import GuideLLM
from bench.procs import MODEL


@dataclass(frozen=True)
class Plan:
    rates: tuple[float, ...]  # requests/s, one benchmark each
    seconds: float  # per rate
    prompt_tokens: int
    output_tokens: int
    workers: int  # guidellm's worker processes (its default, 10, is meant for bigger machines)
    # Requests in flight at most. guidellm also prepares half as many ahead of time: its default,
    # 10,240, has it build 5,120 synthetic prompts per rate, about a core of CPU on this machine.
    max_concurrency: int


@dataclass(frozen=True)
class Target:
    base_url: str
    request_format: str  # "/v1/completions" or "/v1/chat/completions"
    health: str = "health"  # the route guidellm checks before it starts (vLLM's /health by default)


def options(target: Target, plan: Plan, processor: Path, report: Path) -> list[str]:
    """guidellm's command-line options, each as JSON (its ``kind=…`` form cannot nest)."""
    backend = {
        "kind": "openai_http",
        "target": target.base_url,
        "model": MODEL,
        "request_format": target.request_format,
        "http2": False,
        "api_routes": {"/health": target.health},  # merged into guidellm's routes
    }
    profile = {"kind": "constant", "rate": list(plan.rates), "max_concurrency": plan.max_concurrency}
    constraints = [{"kind": "max_duration", "seconds": plan.seconds}]
    spec: list[tuple[str, Any]] = [
        ("--backend", backend),
        ("--profile", profile),
        *(("--constraint", c) for c in constraints),
        ("--data", {"kind": "synthetic_text", "prompt_tokens": plan.prompt_tokens,
                    "output_tokens": plan.output_tokens}),
        ("--tokenizer", {"kind": "huggingface_auto", "model": str(processor)}),
        ("--output", {"kind": "json", "path": str(report)}),
    ]  # fmt: skip
    out = [part for name, value in spec for part in (name, orjson.dumps(value).decode())]
    return [*out, "--disable-console-interactive"]


@dataclass(frozen=True)
class Workdir:
    """Where runs keep their processor, reports and logs (the scenario's scratch directory)."""

    path: Path
    processor: Path

    def report(self, name: str) -> Path:
        return self.path / f"guidellm-{name}.json"

    def log(self, name: str) -> Path:
        return self.path / f"guidellm-{name}.log"


async def benchmark(
    tool: GuideLLM,
    target: Target,
    plan: Plan,
    work: Workdir,
    name: str,
    *,
    started: Callable[[int], None] = lambda pid: None,
) -> dict[str, Any]:
    """Run guidellm, telling `started` its process id; its JSON report (``benchmarks``: one per rate)."""
    argv = [str(tool.executable), "run", *options(target, plan, work.processor, work.report(name))]
    env = tool.env(GUIDELLM__MAX_WORKER_PROCESSES=str(plan.workers))
    limit_s = 120.0 + 2 * plan.seconds * len(plan.rates)  # start-up (torch) and each rate's drain
    log = os.open(work.log(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log, stderr=log, start_new_session=True
        )
        started(proc.pid)
        try:
            code = await asyncio.wait_for(proc.wait(), limit_s)
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            raise RuntimeError(f"guidellm ran past {limit_s:.0f} s; log: {work.log(name)}") from None
    finally:
        os.close(log)
    if code != 0:
        raise RuntimeError(f"guidellm exited with code {code}; log: {work.log(name)}")
    report: dict[str, Any] = orjson.loads(work.report(name).read_bytes())
    return report


def _kill_group(pid: int) -> None:
    """guidellm and the workers it spawned (they share the session it was started in)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _stats(stats: dict[str, Any], scale: float = 1.0) -> dict[str, Any]:
    """guidellm's distribution → this harness's summary (count, mean, p50, p95, p99, max)."""
    if not stats["count"]:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    pct = stats["percentiles"]
    out = {"count": stats["count"], "mean": round(stats["mean"] * scale, 3)}
    out.update({k: round(pct[k] * scale, 3) for k in ("p50", "p95", "p99")})
    return {**out, "max": round(stats["max"] * scale, 3)}


def figures(bench: dict[str, Any]) -> dict[str, Any]:
    """What one guidellm benchmark (one rate) measured, in the harness's terms."""
    m, totals = bench["metrics"], bench["metrics"]["request_totals"]
    errored = bench["requests"]["errored"]
    errors = sorted({str(r["info"]["error"]) for r in errored if r["info"].get("error")})
    return {
        "rate_offered": bench["config"]["strategy"]["rate"],
        "requests": totals["total"],
        "completed": totals["successful"],
        "errors": totals["errored"],
        "incomplete": totals["incomplete"],
        "error_examples": errors[:3],
        "requests_per_s": round(m["requests_per_second"]["successful"]["mean"], 2),
        "ttft_ms": _stats(m["time_to_first_token_ms"]["successful"]),
        "itl_ms": _stats(m["inter_token_latency_ms"]["successful"]),
        "request_latency_ms": _stats(m["request_latency"]["successful"], 1000.0),
        "output_tokens_per_s": round(m["output_tokens_per_second"]["total"]["mean"], 1),
        "output_tokens_per_request": _stats(m["output_token_count"]["successful"])["p50"],
        "prompt_tokens_per_request": _stats(m["prompt_token_count"]["successful"])["p50"],
        "measured_s": round(bench["duration"], 3),
    }


def fields_sent(report: dict[str, Any]) -> list[str]:
    """The fields of the first successful request's body (``stream_options``' as ``stream_options.x``)."""
    for bench in report["benchmarks"]:
        for request in bench["requests"]["successful"]:
            body = orjson.loads(request["request_args"])["body"]
            options = body.get("stream_options") or {}
            return sorted(body) + [f"stream_options.{k}" for k in sorted(options)]
    return []


def busy_window(bench: dict[str, Any]) -> tuple[float, float]:
    """From the first request sent to the last one ended (``time.time()``), over every request the
    benchmark kept: the span in which the server worked for it."""
    infos = [r["info"] for group in ("successful", "errored", "incomplete") for r in bench["requests"][group]]
    starts = [i["started_at"] for i in infos if i.get("started_at")]
    ends = [i["completed_at"] for i in infos if i.get("completed_at")]
    if not starts or not ends:
        return bench["start_time"], bench["end_time"]
    return min(starts), max(ends)
