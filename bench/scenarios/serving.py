"""Real serving load: Poisson arrivals at fixed offered rates, tokens paced by the engine (10 ms apart),
through orchestratord and through vllm-router (a compiled router, the reference), against the engine
alone, in one run with the same engine and load generator.

The system under test has a core to itself; the fake engine and the load generator share the other
(where the machine has two cores or more). At each offered rate, for 50-token and 500-token jobs, the
same seeded arrivals are offered to the engine alone (the baseline), orchestratord's own API
(``POST /v1/tasks``, then ``GET`` its stream), orchestratord's OpenAI surface (``POST
/v1/completions``) and vllm-router (``POST /v1/completions``); every answer is streamed. Then each is
driven one request at a time. Added times are the system's percentile less the engine alone's, at
the same rate.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench.client import Client
from bench.load import JobResult, closed_loop, open_loop_at, poisson_arrivals, through_orchestrator
from bench.openai_surface import TextStream, completion
from bench.procs import (
    Child,
    EngineSpec,
    OrchestratorSpec,
    _spawn,
    core_split,
    free_port,
    pinned,
    scratch_dir,
    start_engine,
    start_orchestrator,
    wait_ready,
)
from bench.results import Context, target
from bench.scenarios.common import outcome
from bench.sse import TaskStream
from bench.stats import difference, summary

ENGINE = EngineSpec(ttft_ms=10.0, interval_ms=10.0)
SERIAL_TOKENS = 5  # one request at a time: the time to first token is what is measured
KEPT = 0.95  # a rate is kept when every job ended and the achieved rate is at least this share of it
ROUTER = Path(sys.executable).with_name("vllm-router")
BASELINE = "engine alone"
NATIVE = "orchestratord /v1/tasks"
TARGET_RATE = 200.0  # issue 18 §2: 200 paced 50-token jobs/s


@dataclass(frozen=True)
class Load:
    classes: tuple[tuple[int, tuple[float, ...]], ...]  # (tokens per job, offered rates in jobs/s)
    seconds: float  # of arrivals at each rate
    serial_jobs: int  # one request at a time, per system
    drain_s: float = 10.0  # each request's own bound beyond the arrivals and its paced tokens


FULL = Load(((50, (25.0, 50.0, 100.0, 200.0, 300.0)), (500, (5.0, 10.0, 20.0, 30.0))), 15.0, 200)
QUICK = Load(((50, (50.0, 100.0, 200.0, 300.0)), (500, (10.0, 20.0))), 4.0, 40)
SMOKE = Load(((20, (20.0,)), (60, (10.0,))), 1.0, 5, drain_s=5.0)


class TimedTaskStream(TaskStream):
    """An orchestratord job stream that keeps each token's arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.token_times: list[float] = []

    def feed(self, chunk: bytes, now: float) -> None:
        before = self.tokens
        super().feed(chunk, now)
        self.token_times.extend([now] * (self.tokens - before))


class TimedTextStream(TextStream):
    """An OpenAI completion stream that keeps each token's arrival time."""

    def __init__(self) -> None:
        super().__init__()
        self.token_times: list[float] = []

    def feed(self, chunk: bytes, now: float) -> None:
        before = self.tokens
        super().feed(chunk, now)
        self.token_times.extend([now] * (self.tokens - before))


@dataclass
class System:
    """One way in: the engine itself, orchestratord (either API) or vllm-router."""

    name: str
    client: Client
    pid: int | None  # the process under test (None: the engine alone, the baseline)
    native: bool = False  # orchestratord's own API rather than OpenAI's /v1/completions

    async def job(self, tokens: int, limit_s: float, gaps: list[float]) -> JobResult:
        """One streamed job; the gaps between its tokens (ms) go to `gaps` when it ended well."""
        stream: TimedTaskStream | TimedTextStream
        if self.native:
            stream = TimedTaskStream()
            result = await through_orchestrator(self.client, tokens, limit_s, stream=stream)
        else:
            stream = TimedTextStream()
            result = await completion(self.client, tokens, limit_s, stream=stream)
        if result.ok:
            times = stream.token_times
            gaps.extend((b - a) * 1000 for a, b in itertools.pairwise(times))
        return result


@dataclass
class Meter:
    """CPU seconds of the system under test, the engine, the load generator (this process) and the
    rest of the machine, between two readings."""

    sut: psutil.Process | None
    engine: psutil.Process
    me: psutil.Process = field(default_factory=psutil.Process)

    def read(self) -> tuple[float, ...]:
        busy = psutil.cpu_times()
        machine = busy.user + busy.system + busy.nice + busy.irq + busy.softirq
        sut = _cpu(self.sut) if self.sut is not None else 0.0
        return time.perf_counter(), sut, _cpu(self.engine), _cpu(self.me), machine

    def since(self, before: tuple[float, ...], jobs: int, tokens: int) -> dict[str, Any]:
        now = self.read()
        wall, sut, engine, me, machine = (b - a for a, b in zip(before, now, strict=True))
        other = max(0.0, machine - sut - engine - me)
        alone = self.sut is None  # the engine alone: no process under test
        return {
            "wall_s": round(wall, 3),
            "cpu_s": None if alone else round(sut, 3),
            "cpu_cores": None if alone else round(sut / wall, 3),
            "cpu_ms_per_job": round(sut * 1000 / jobs, 3) if jobs and not alone else None,
            "cpu_us_per_token": round(sut * 1e6 / tokens, 2) if tokens and not alone else None,
            "engine_cpu_cores": round(engine / wall, 3),
            "loadgen_cpu_cores": round(me / wall, 3),
            "other_work_cpu_cores": round(other / wall, 3),
        }


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def achieved(results: Sequence[JobResult]) -> float:
    """Jobs ended per second: ended jobs less one over the time from the first end to the last."""
    ends = sorted(r.ended_at for r in results if r.ok and r.ended_at is not None)
    if len(ends) < 2 or ends[-1] <= ends[0]:
        return 0.0
    return (len(ends) - 1) / (ends[-1] - ends[0])


async def level(system: System, tokens: int, rate: float, load: Load, meter: Meter) -> dict[str, Any]:
    """`system` at one offered rate: the same seeded Poisson arrivals as every other system."""
    arrivals = poisson_arrivals(rate, load.seconds, seed=tokens * 100_003 + round(rate * 10))
    job_s = (ENGINE.ttft_ms + (tokens - 1) * ENGINE.interval_ms) / 1000
    limit_s = load.seconds + job_s + load.drain_s
    system.client.close()  # fresh keep-alive connections, opened before the clock starts
    await system.client.prewarm(min(2048, int(rate * job_s * 1.5) + 8))
    gaps: list[float] = []
    before = meter.read()
    results, late = await open_loop_at(partial(system.job, tokens, limit_s, gaps), arrivals)
    done = [r for r in results if r.ok]
    cpu = meter.since(before, len(done), sum(r.tokens for r in results))
    rate_done = achieved(results)
    return {
        "system": system.name,
        "tokens": tokens,
        "offered_per_s": rate,
        "achieved_per_s": round(rate_done, 1),
        **outcome(results),
        "never_ended": len(results) - len(done),
        "kept": len(done) == len(results) and rate_done >= KEPT * rate,
        "ttft_ms": summary(r.ttft_ms for r in done),
        "itl_ms": summary(gaps),
        "arrival_lateness_ms": summary(late),
        "resources": cpu,
    }


async def serial(system: System, load: Load, meter: Meter) -> dict[str, Any]:
    """`system` one request at a time (SERIAL_TOKENS tokens each)."""
    gaps: list[float] = []
    job = partial(system.job, SERIAL_TOKENS, 30.0, gaps)
    before = meter.read()
    results = await closed_loop(job, 1, load.serial_jobs, max(5.0, load.serial_jobs * 0.2))
    done = [r for r in results if r.ok]
    return {
        "system": system.name,
        **outcome(results),
        "ttft_ms": summary(r.ttft_ms for r in done),
        "resources": meter.since(before, len(done), sum(r.tokens for r in results)),
    }


def added(rows: list[dict[str, Any]]) -> None:
    """Each row's added TTFT and inter-token delay over the engine alone's row at the same level."""
    base = {(r.get("tokens"), r.get("offered_per_s")): r for r in rows if r["system"] == BASELINE}
    for row in rows:
        ref = base.get((row.get("tokens"), row.get("offered_per_s")))
        if ref is None or row["system"] == BASELINE:
            continue
        row["added_ttft_ms"] = difference(row["ttft_ms"], ref["ttft_ms"])
        if "itl_ms" in row:
            row["added_itl_ms"] = difference(row["itl_ms"], ref["itl_ms"])


@contextlib.contextmanager
def router(engine_url: str, workdir: Path, cores: set[int] | None) -> Iterator[tuple[Child | None, str]]:
    """vllm-router in front of the engine, as its CLI starts it (defaults but for the addresses); or
    None, with the reason, when it is not installed or does not start. Never raises for that."""
    if not ROUTER.exists():
        yield None, f"vllm-router is not installed here ({ROUTER} missing; the bench extra installs it)"
        return
    port = free_port()
    argv = [str(ROUTER), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", engine_url]
    log = workdir / "vllm-router.log"
    try:
        child = Child("vllm-router", f"http://127.0.0.1:{port}", _spawn(argv, log, cores=cores))
    except OSError as exc:
        yield None, f"vllm-router could not be started: {exc}"
        return
    try:
        ready, why = True, ""
        try:
            wait_ready(child, "/v1/models", timeout=60.0)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            ready, why = False, f"vllm-router did not start: {exc}; its log ends: {tail!r}"
        # outside the except clause: an error of the measured block is not chained to a start failure
        yield (child, " ".join(["vllm-router", *argv[1:]])) if ready else (None, why)
    finally:
        child.stop()


def systems_of(eng: Child, orc: Child, rtr: Child | None) -> list[System]:
    out = [
        System(BASELINE, Client(eng.base_url), None),
        System(NATIVE, Client(orc.base_url), orc.pid, native=True),
        System("orchestratord /v1/completions", Client(orc.base_url), orc.pid),
    ]
    if rtr is not None:
        out.append(System("vllm-router /v1/completions", Client(rtr.base_url), rtr.pid))
    return out


async def measure(
    systems: list[System], engine_pid: int, load: Load
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    meters = {
        s.name: Meter(psutil.Process(s.pid) if s.pid else None, psutil.Process(engine_pid)) for s in systems
    }
    for s in systems:  # warm up each path (connections, caches, the first requests' imports)
        await closed_loop(partial(s.job, SERIAL_TOKENS, 30.0, []), 4, 16, 5.0)
    rows = []
    for tokens, rates in load.classes:
        for rate in rates:  # the systems interleaved at each rate: drift on a shared machine hits all
            for s in systems:
                rows.append(await level(s, tokens, rate, load, meters[s.name]))
                _progress(rows[-1])
    serial_rows = [await serial(s, load, meters[s.name]) for s in systems]
    added(rows)
    added(serial_rows)
    return rows, serial_rows


def _progress(row: dict[str, Any]) -> None:
    t = row["ttft_ms"]
    print(
        f"bench: serving {row['system']}: {row['tokens']} tokens at {row['offered_per_s']:g}/s -> "
        f"{row['achieved_per_s']}/s, {row['completed']}/{row['requests']} ended, TTFT p50 {t['p50']} "
        f"p99 {t['p99']} ms, CPU {row['resources']['cpu_cores']} cores",
        file=sys.stderr,
        flush=True,
    )


def targets(
    rows: list[dict[str, Any]], serial_rows: list[dict[str, Any]], tokens: int
) -> list[dict[str, Any]]:
    """Issue 18 §2 for one orchestratord process (its own API) on one core, on the `tokens`-token jobs
    (50 but at smoke scale)."""
    paced = [r for r in rows if r["system"] == NATIVE and r["tokens"] == tokens]
    if not paced:
        return []
    kept = 0.0  # the highest rate kept with every lower rate kept too
    for row in sorted(paced, key=lambda r: r["offered_per_s"]):
        if not row["kept"]:
            break
        kept = row["offered_per_s"]
    at = min(paced, key=lambda r: abs(r["offered_per_s"] - TARGET_RATE))
    rate, add = at["offered_per_s"], at.get("added_ttft_ms", {})
    name = f"at {rate:g} paced {tokens}-token jobs/s (issue 18)"
    one = next((r for r in serial_rows if r["system"] == NATIVE), {})
    return [
        target(
            f"paced {tokens}-token jobs/s kept (issue 18; every job ended, ≥ 95% of the rate achieved)",
            kept,
            TARGET_RATE,
            unit="jobs/s",
            at_most=False,
        ),
        target(f"added TTFT p50 {name}", add.get("p50"), 5.0, unit="ms", at_most=True),
        target(f"added TTFT p99 {name}", add.get("p99"), 20.0, unit="ms", at_most=True),
        target(
            "added TTFT p50 one request at a time (issue 18)",
            one.get("added_ttft_ms", {}).get("p50"),
            1.0,
            unit="ms",
            at_most=True,
        ),
    ]


@contextlib.contextmanager
def kept_on_failure(workdir: Path) -> Iterator[None]:
    """The processes' config and logs are removed after a clean run and kept when it failed."""
    try:
        yield
    except BaseException:
        print(f"bench: the processes' config and logs are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    split = core_split()
    sut = set(split["system_under_test"]) if split["pinned"] else None
    ours = set(split["engine_and_load_generator"]) if split["pinned"] else None
    orch = OrchestratorSpec(slots=1024, queue_capacity=2048)
    workdir = scratch_dir("serving")
    with kept_on_failure(workdir), contextlib.ExitStack() as stack:
        stack.enter_context(pinned(ours))  # the load generator: this process's main thread
        eng = start_engine(ENGINE, workdir, stack, cores=ours)
        orc = start_orchestrator(orch, eng.base_url, workdir, ctx.source, stack, cores=sut)
        rtr, router_note = stack.enter_context(router(eng.base_url, workdir, sut))
        systems = systems_of(eng, orc, rtr)
        try:
            rows, serial_rows = await measure(systems, eng.pid, load)
        finally:
            for s in systems:
                s.client.close()
    return {
        "description": " ".join(__doc__.split("\n\n")[0].split()),
        "engine": {"ttft_ms": ENGINE.ttft_ms, "interval_ms": ENGINE.interval_ms},
        "core_split": split,
        "config": {
            "slots": orch.slots,
            "queue_capacity": orch.queue_capacity,
            "load": {**load.__dict__, "serial_tokens": SERIAL_TOKENS, "kept_share": KEPT},
        },
        "vllm_router": {"ran": rtr is not None, ("command" if rtr else "note"): router_note},
        "systems": [s.name for s in systems],
        "rows": rows,
        "one_at_a_time": serial_rows,
        "targets": targets(rows, serial_rows, load.classes[0][0]),
    }
