"""Scaling out (issue 17): one process on in-memory state, then one, two and three replicas on one Redis,
in one run, with the same fake engines and load generator for every setup.

Each setup is a deployment, with a pool for each of three fake engines started once for the run: fast
(tokens as fast as the socket takes them), paced (a token every 10 ms) and slow (a token a second).
As issue 17 measured it, the system under test (every replica and redis-server) runs alone on one core
and the fake engines and the load generator on another (where the machine has two cores or more), so
that the load generator does not take the replicas' core and its load does not pass for theirs.
The measures whose targets are ratios to the one process (jobs, relay) are taken in rounds, each round
measuring every setup in turn (in an order that rotates), each on a deployment started for it and
alone on its core: a shared VM's speed drifts by a third within minutes, and measures taken minutes
apart would compare the drift. A setup's figure is its median round, and its ratio the median of its
rounds' ratios to the one process's measure of the same round.

Jobs: 50-token jobs in a closed loop, posted to the replicas in turn and read through the replica that
admitted them. In the same rounds, one replica alone on the core at a third of that concurrency (what
each of three replicas carries): three replicas' CPU a job over its own is what sharing one core costs.
TTFT: 50-token jobs paced by the engine (a token every 10 ms, no prefill, so the time to first token is
what the deployment adds), at fixed offered rates (open loop, the same seeded Poisson arrivals for every
setup), posted and read as the jobs are; the CPU a job at each rate is compared with the one process's.
Relay: one long stream, posted to the first replica and read through the last. Streams: slow streams (a
token a second), all open together, each posted to one replica and read through the next: whether every
one ends, each replica's peak RSS and the Redis client connections (they should not grow with the
streams). CPU is every orchestratord process's plus redis-server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

from bench.client import Client
from bench.load import (
    Job,
    JobResult,
    closed_loop,
    open_loop,
    open_loop_at,
    poisson_arrivals,
    through_orchestrator,
)
from bench.procs import (
    MODEL,
    Child,
    EngineSpec,
    OrchestratorSpec,
    _spawn,
    core_split,
    free_port,
    pinned,
    scratch_dir,
    start_engine,
    wait_ready,
)
from bench.results import Context, target
from bench.scenarios.common import outcome, rate
from bench.scenarios.open_streams import most_open
from bench.stats import summary

TOKENS = 50
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
HAVE_REDIS = Path(REDIS).exists()
ONE_PROCESS = "one process, memory"
THREE = "three replicas, Redis"
SETUPS = ((ONE_PROCESS, 1, False), ("one replica, Redis", 1, True), ("two replicas, Redis", 2, True),
          (THREE, 3, True))  # fmt: skip
# One replica alone on the core at the concurrency each of the three replicas carries in the jobs measure
# (a third of it): the same work a job and the same Redis as each of the three, so three replicas' CPU a
# job over its own is what four processes taking turns on one core cost them (`sharing_a_core`).
AT_A_SHARE = "one replica, Redis, a third of the concurrency"
ENGINES = {
    "fast": EngineSpec(ttft_ms=0.0, interval_ms=0.0),  # jobs and relay
    "paced": EngineSpec(ttft_ms=0.0, interval_ms=10.0),  # TTFT
    "slow": EngineSpec(ttft_ms=0.0, interval_ms=1000.0),  # open streams
}
STREAM_RATE = 200.0  # slow streams opened per second
PATIENCE_S = 30.0  # how long past its tokens' time a bench client waits for its stream's end
MAX_WAIT_S = 20.0  # queue.max_wait_s, every class: under the clients' patience
SAMPLE_S = 0.25
# the held-open measure starts this long after the opening and ends this long before the first stream ends
SETTLE_S = 2.0
SLOTS = 2048  # per engine replica
MB = 2**20
_T = TypeVar("_T")


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int
    max_seconds: float
    long_tokens: int
    rates: tuple[float, ...]  # offered 50-token jobs/s for the TTFT, open loop
    rate_seconds: float  # of arrivals at each rate
    streams_per_replica: int
    hold_s: float  # how long the slow streams outlast their opening (which a busy machine may slow)
    rounds: int  # of the jobs and relay measures, every setup in turn


FULL = Load(
    32, 2000, 20.0, 200_000, (25.0, 50.0, 100.0), 15.0, streams_per_replica=2000, hold_s=10.0, rounds=5
)
QUICK = Load(16, 300, 5.0, 10_000, (25.0, 50.0), 5.0, streams_per_replica=200, hold_s=5.0, rounds=2)
SMOKE = Load(2, 10, 2.0, 5_000, (10.0,), 1.0, streams_per_replica=5, hold_s=4.0, rounds=2)


@dataclass
class Deployment:
    replicas: list[Child]
    redis: subprocess.Popen[bytes] | None
    redis_port: int | None

    def pids(self) -> list[int]:
        return [r.pid for r in self.replicas] + ([self.redis.pid] if self.redis else [])

    def connections(self) -> int | None:
        """Redis's connected clients, less this probe's own connection; None without Redis."""
        if self.redis_port is None:
            return None
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as conn:
            conn.sendall(b"INFO clients\r\n")
            text = conn.recv(65536).decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("connected_clients:"):
                return int(line.split(":")[1]) - 1
        return None

    def rss_mb(self) -> list[float]:
        """Each replica's resident memory now (0 for one that is gone)."""
        out = []
        for r in self.replicas:
            try:
                out.append(psutil.Process(r.pid).memory_info().rss / MB)
            except psutil.Error:
                out.append(0.0)
        return out


def pools(template: dict[str, Any], engines: dict[str, str], streams: int) -> list[dict[str, Any]]:
    """A pool per fake engine, serving a model named for it (a job picks its engine by its model_ref);
    the slow engine's pool has as many engine replica ids, all at its one address, as `streams` need
    slots (slots are the deployment's, at most 4,096 per engine replica)."""
    out = []
    for name, url in engines.items():
        count = math.ceil((streams + 64) / SLOTS) if name == "slow" else 1
        replicas = [{"id": f"r{k}", "url": url} for k in range(count)]
        pool = {**template, "id": name, "models": [name], "engine_model": MODEL, "replicas": replicas}
        out.append({**pool, "options": dict(template["options"])})
    return out


@contextlib.contextmanager
def deployment(
    ctx: Context,
    engines: dict[str, str],
    replicas: int,
    shared: bool,
    streams: int,
    workdir: Path,
    cores: set[int] | None = None,
) -> Iterator[Deployment]:
    """`replicas` orchestratord processes in front of the engines, on one Redis when `shared`, with
    slots and client connections for `streams` open together; all of them on `cores` when given."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis, rport = None, None
        extra: dict[str, Any] = {}
        if shared:
            rport = free_port()
            with pinned(cores):
                redis = subprocess.Popen(
                    [REDIS, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            stack.callback(redis.wait)
            stack.callback(redis.terminate)
            time.sleep(0.3)
            extra = {"state_url": f"redis://127.0.0.1:{rport}/0", "redis": {"key_prefix": "bench:"}}
        limits = {"max_tokens": 200_000, "max_connections": max(8192, 2 * streams + 1024)}
        # what an operator whose clients wait PATIENCE_S sets: refuse (429) a job not expected to start
        # within MAX_WAIT_S, rather than queue it past its client's patience
        queue = {"capacity": 4096, "max_wait_s": dict.fromkeys(("interactive", "batch"), MAX_WAIT_S)}
        spec = OrchestratorSpec(slots=SLOTS, extra={**extra, "limits": limits, "queue": queue})
        children = []
        for i in range(replicas):
            port = free_port()
            config = spec.config(port, engines["fast"])
            config["pools"] = pools(config["pools"][0], engines, streams)
            path = workdir / f"orchestratord-{i}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            argv = [sys.executable, "-m", "orchestratord", "serve", "--config", str(path)]
            log = workdir / f"o{i}.log"
            child = Child(
                f"orchestratord-{i}", f"http://127.0.0.1:{port}", _spawn(argv, log, ctx.source, cores)
            )
            stack.callback(child.stop)
            children.append(child)
        for child in children:
            wait_ready(child, "/readyz")
        yield Deployment(children, redis, rport)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


@dataclass(frozen=True)
class Cpu:
    """CPU seconds the deployment's processes spent: all of them, and redis-server's share."""

    total: float
    redis: float


async def measured(dep: Deployment, work: Callable[[], Awaitable[_T]]) -> tuple[_T, Cpu]:
    """What `work()` returned, and the CPU the deployment's processes spent meanwhile."""
    redis = [dep.redis.pid] if dep.redis else []
    cpu0, redis0 = cpu_seconds(dep.pids()), cpu_seconds(redis)
    result = await work()
    return result, Cpu(cpu_seconds(dep.pids()) - cpu0, cpu_seconds(redis) - redis0)


def in_turn(clients: Sequence[Client], engine: str, tokens: int, limit_s: float, across: bool = False) -> Job:
    """Jobs for `engine` posted to the replicas in turn, each read through the replica it was posted to
    or, when `across`, through the next one."""
    turn = itertools.count()

    def job() -> Coroutine[Any, Any, JobResult]:
        i = next(turn)
        writer, reader = clients[i % len(clients)], clients[(i + int(across)) % len(clients)]
        return through_orchestrator(writer, tokens, limit_s, reader=reader, model_ref=engine)

    return job


@contextlib.asynccontextmanager
async def clients_of(dep: Deployment, max_connections: int = 4096) -> AsyncIterator[list[Client]]:
    """A client for each replica, closed after the block."""
    clients = [Client(r.base_url, max_connections=max_connections) for r in dep.replicas]
    try:
        yield clients
    finally:
        for c in clients:
            c.close()


async def jobs(dep: Deployment, load: Load) -> dict[str, Any]:
    async with clients_of(dep, load.concurrency * 2) as clients:
        one = in_turn(clients, "fast", TOKENS, 120.0)
        await closed_loop(one, load.concurrency, load.concurrency * 2, load.max_seconds)  # warm up
        results, cpu = await measured(
            dep, lambda: closed_loop(one, load.concurrency, load.requests, load.max_seconds)
        )
    done = max(1, outcome(results)["completed"])
    return {
        **outcome(results),
        "jobs_per_s": round(rate(results), 1),
        "cpu_ms_per_job": round(cpu.total * 1000 / done, 3),
        "redis_cpu_ms_per_job": round(cpu.redis * 1000 / done, 3) if dep.redis else None,  # within the above
    }


async def ttft(dep: Deployment, load: Load) -> list[dict[str, Any]]:
    async with clients_of(dep) as clients:
        job = in_turn(clients, "paced", TOKENS, 20.0)  # each rate ends within its arrivals and 20 s
        await closed_loop(job, 4 * len(clients), 4 * len(clients), 5.0)  # warm up: one paced job each
        return [await ttft_at(dep, job, rate, load.rate_seconds) for rate in load.rates]


async def ttft_at(dep: Deployment, job: Job, rate: float, seconds: float) -> dict[str, Any]:
    """The jobs offered at `rate` per second: the same seeded arrivals as for every other setup."""
    arrivals = poisson_arrivals(rate, seconds, seed=round(rate * 10))
    (results, late), cpu = await measured(dep, lambda: open_loop_at(job, arrivals))
    ended = sum(1 for r in results if r.ok)
    refused = sum(1 for r in results if r.status == 429)
    counts = outcome(results)
    return {
        "offered_per_s": rate,
        "requests": len(results),
        "ended": ended,
        "refused_429": refused,
        "never_ended": len(results) - ended - refused,  # neither every token and `end`, nor a 429
        **admitted_and_refused(results),
        "statuses": counts["statuses"],
        "endings": endings(results),
        "error_examples": counts["error_examples"],
        "ttft_ms": summary(r.ttft_ms for r in results if r.ok),
        "cpu_ms_per_job": round(cpu.total * 1000 / ended, 3) if ended else None,
        "arrival_lateness_ms": summary(late),
    }


async def relay(dep: Deployment, load: Load) -> dict[str, Any]:
    writer = Client(dep.replicas[0].base_url)
    reader = Client(dep.replicas[-1].base_url)
    try:
        long = partial(through_orchestrator, writer, load.long_tokens, 300.0, reader, model_ref="fast")
        result, cpu = await measured(dep, long)
    finally:
        writer.close()
        reader.close()
    span = (result.ended_at or 0) - (result.first_token_at or 0)
    return {
        "tokens": result.tokens,
        "ended": result.terminal,
        "tokens_per_s": round(result.tokens / span) if span > 0 else None,
        "cpu_us_per_token": round(cpu.total * 1e6 / result.tokens, 2) if result.tokens else None,
        "redis_cpu_us_per_token": round(cpu.redis * 1e6 / result.tokens, 2)
        if result.tokens and dep.redis
        else None,
    }


def admitted_and_refused(results: Sequence[JobResult]) -> dict[str, int]:
    """Issue 17's two counts: jobs admitted (202) that did not end with every token and `end`, and
    requests answered with anything but 202 or 429 (a 503, a timeout, no answer): overload answered
    otherwise than with 429."""
    return {
        "admitted_not_ended": sum(1 for r in results if r.status == 202 and not r.ok),
        "refused_not_429": sum(1 for r in results if r.status not in (202, 429)),
    }


def endings(results: Sequence[JobResult]) -> dict[str, int]:
    """How the admitted jobs' streams ended: `end` with every token, `end` with too few or too many,
    `error`, or `none` (the stream closed without a terminal event, or the client gave up waiting)."""

    def ending(r: JobResult) -> str:
        if r.terminal == "end":
            return "end" if r.ok else "end, tokens wrong"
        return r.terminal or "none"

    return dict(sorted(Counter(ending(r) for r in results if r.status == 202).items()))


@dataclass
class Peaks:
    redis_connections: int | None
    rss_mb: list[float]


async def watch(dep: Deployment, stop: asyncio.Event) -> Peaks:
    """The most Redis client connections and each replica's highest RSS, sampled every 0.25 s until `stop`."""
    peaks = Peaks(None if dep.redis_port is None else 0, dep.rss_mb())
    while not stop.is_set():
        if peaks.redis_connections is not None:
            # in a thread: a busy redis-server must not stall the load generator's loop; a probe that
            # times out is a sample missed, not the end of the run
            with contextlib.suppress(OSError):
                now = await asyncio.to_thread(dep.connections)
                peaks.redis_connections = max(peaks.redis_connections, now or 0)
        peaks.rss_mb = [max(a, b) for a, b in zip(peaks.rss_mb, dep.rss_mb(), strict=True)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
    return peaks


@dataclass(frozen=True)
class Held:
    """The deployment's CPU seconds between two `time.perf_counter()` moments."""

    start: float
    end: float
    cpu_s: float


async def cpu_between(dep: Deployment, start: float, end: float) -> Held | None:
    """The deployment's CPU from `start` to `end` (perf_counter), sleeping until then; None for a window
    too short to tell anything."""
    if end - start < 0.5:
        return None
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    t0, cpu0 = time.perf_counter(), cpu_seconds(dep.pids())
    await asyncio.sleep(max(0.0, end - t0))
    return Held(t0, time.perf_counter(), cpu_seconds(dep.pids()) - cpu0)


def tokens_within(results: Sequence[JobResult], start: float, end: float, interval_s: float) -> float:
    """The tokens the streams relayed between `start` and `end`: each stream's span from its first token
    to its end (or to `end`, for one that never ended) within the window, a token every `interval_s`."""
    total = 0.0
    for r in results:
        if r.first_token_at is None:
            continue
        last = end if r.ended_at is None else min(end, r.ended_at)
        total += max(0.0, last - max(start, r.first_token_at))
    return total / interval_s


def held_open(results: Sequence[JobResult], held: Held | None) -> dict[str, Any] | None:
    """The CPU a relayed token costs while the admitted slow streams are all open (after the opening,
    before the first of them ends): each token its own engine read, log append and client write, and on
    Redis its own batch, unlike the long stream's."""
    if held is None:
        return None
    window, interval_s = held.end - held.start, ENGINES["slow"].interval_ms / 1000
    tokens = tokens_within(results, held.start, held.end, interval_s)
    return {
        "window_s": round(window, 1),
        "streams_open_mean": round(tokens * interval_s / window, 1),
        "tokens": round(tokens),
        "cpu_us_per_token": round(held.cpu_s * 1e6 / tokens, 1) if tokens else None,
    }


async def streams(dep: Deployment, load: Load) -> dict[str, Any]:
    n = len(dep.replicas)
    count = load.streams_per_replica * n
    opening_s = count / STREAM_RATE
    tokens = math.ceil(opening_s * 1.5 + load.hold_s)  # one a second: they outlast the opening
    idle = dep.rss_mb()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(dep, stop))
    began = time.perf_counter()
    held = asyncio.create_task(cpu_between(dep, began + opening_s + SETTLE_S, began + tokens - SETTLE_S))
    async with clients_of(dep, count + 64) as clients:
        job = in_turn(clients, "slow", tokens, tokens + PATIENCE_S, across=True)
        try:
            results: list[JobResult] = await open_loop(job, STREAM_RATE, count, opening_s + 5.0)
        finally:
            stop.set()
            peaks = await watcher
            held_cpu = await held
    grown = sum(peaks.rss_mb) - sum(idle)
    connections = peaks.redis_connections
    return {
        "streams": count,
        "tokens_each": tokens,
        **outcome(results),
        "endings": endings(results),
        "never_ended": sum(1 for r in results if not r.ok and r.status != 429),
        **admitted_and_refused(results),
        "most_open_at_once": most_open(results),
        "held_open": held_open(results, held_cpu),
        "idle_rss_mb": [round(x, 1) for x in idle],
        "peak_rss_mb": [round(x, 1) for x in peaks.rss_mb],
        "rss_per_stream_kb": round(grown * 1024 / count, 1),
        "redis_connections_peak": connections,
        "redis_connections_per_replica_peak": None if connections is None else round(connections / n, 1),
    }


async def in_rounds(
    names: Sequence[str], rounds: int, measure: Callable[[str, int], Awaitable[_T]]
) -> dict[str, list[_T]]:
    """`measure(name, round)` for every setup in turn, `rounds` times, the order rotated by one each round
    (no setup always first, or always right after another); each setup's measures, round by round."""
    out: dict[str, list[_T]] = {name: [] for name in names}
    for r in range(rounds):
        for name in [*names[r % len(names) :], *names[: r % len(names)]]:
            out[name].append(await measure(name, r))
    return out


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round whose `key` is the median (the lower middle one of an even count), whole, with every
    round's `key` beside it."""
    measured = sorted((r for r in rounds if r.get(key) is not None), key=lambda r: r[key])
    middle = measured[(len(measured) - 1) // 2] if measured else rounds[0]
    return {**middle, f"{key}_rounds": [r.get(key) for r in rounds]}


def round_ratios(rounds: list[dict[str, Any]], bases: list[dict[str, Any]], key: str) -> list[float | None]:
    """Each round's `key` over the one process's of the same round."""
    return [ratio(r.get(key), b.get(key)) for r, b in zip(rounds, bases, strict=True)]


def median_ratio(ratios: list[float | None]) -> float | None:
    measured = [x for x in ratios if x is not None]
    return round(statistics.median(measured), 3) if measured else None


def compare(
    jobs_rounds: dict[str, list[dict[str, Any]]], relay_rounds: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Each setup's jobs and relay figures (its median round), and its ratios to the one process: the
    median of its rounds' ratios to the one process's measure of the same round."""
    jobs0, relay0 = jobs_rounds[ONE_PROCESS], relay_rounds[ONE_PROCESS]
    out = {}
    for name in jobs_rounds:
        jobs = median_round(jobs_rounds[name], "cpu_ms_per_job")
        cpu = round_ratios(jobs_rounds[name], jobs0, "cpu_ms_per_job")
        jobs |= {"cpu_vs_one_process": median_ratio(cpu), "cpu_vs_one_process_rounds": cpu}
        relay = median_round(relay_rounds[name], "cpu_us_per_token")
        speed = round_ratios(relay_rounds[name], relay0, "tokens_per_s")
        per_token = round_ratios(relay_rounds[name], relay0, "cpu_us_per_token")
        relay |= {
            "tokens_per_s_vs_one_process": median_ratio(speed),
            "tokens_per_s_vs_one_process_rounds": speed,
            "cpu_per_token_vs_one_process": median_ratio(per_token),
            "cpu_per_token_vs_one_process_rounds": per_token,
        }
        out[name] = {"jobs": jobs, "relay": relay}
    return out


def sharing_a_core(jobs_rounds: dict[str, list[dict[str, Any]]], concurrency: int) -> dict[str, Any]:
    """What sharing one core costs three replicas: their CPU a job over that of one replica alone on the
    core at the concurrency each of them carries (`AT_A_SHARE`), round by round, and that replica's own
    ratio to the one process (what a replica with a core of its own costs at that load)."""
    alone = jobs_rounds[AT_A_SHARE]
    vs_one = round_ratios(alone, jobs_rounds[ONE_PROCESS], "cpu_ms_per_job")
    three = round_ratios(jobs_rounds[THREE], alone, "cpu_ms_per_job")
    jobs = median_round(alone, "cpu_ms_per_job")
    return {
        "setup": AT_A_SHARE,
        "concurrency": concurrency,
        "jobs": jobs | {"cpu_vs_one_process": median_ratio(vs_one), "cpu_vs_one_process_rounds": vs_one},
        "three_replicas_cpu_vs_it": median_ratio(three),
        "three_replicas_cpu_vs_it_rounds": three,
    }


def open_loop_ratios(setups: dict[str, dict[str, Any]]) -> None:
    """Each setup's CPU a job at each offered rate, and a slow stream's token while all are open, over the
    one process's (one measure each, minutes apart: the VM's drift is in them, as it is not in the rounds'
    ratios)."""
    base = {t["offered_per_s"]: t["cpu_ms_per_job"] for t in setups[ONE_PROCESS]["ttft"]}
    base_held = setups[ONE_PROCESS]["streams"]["held_open"] or {}
    for row in setups.values():
        for t in row["ttft"]:
            t["cpu_vs_one_process"] = ratio(t["cpu_ms_per_job"], base.get(t["offered_per_s"]))
        held = row["streams"]["held_open"]
        if held is not None:
            held["cpu_vs_one_process"] = ratio(held["cpu_us_per_token"], base_held.get("cpu_us_per_token"))


def targets(setups: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Issue 17's targets for each Redis setup, against the one process of the same run."""
    out = {}
    for name, row in setups.items():
        if name == ONE_PROCESS:
            continue
        jobs, relay, streams = row["jobs"], row["relay"], row["streams"]
        lost = sum(r["admitted_not_ended"] for r in [*row["ttft"], streams])
        other = sum(r["refused_not_429"] for r in [*row["ttft"], streams])
        out[name] = [
            target("CPU per job vs one process", jobs["cpu_vs_one_process"], 1.5, unit="x", at_most=True),
            target("CPU per relayed token vs one process", relay["cpu_per_token_vs_one_process"], 1.25,
                   unit="x", at_most=True),
            target("relay tokens/s vs one process", relay["tokens_per_s_vs_one_process"], 0.75, unit="x",
                   at_most=False),
            target("admitted jobs that did not end with every token (TTFT rates, streams)", lost, 0,
                   unit="jobs", at_most=True),
            target("requests answered with neither 202 nor 429 (TTFT rates, streams)", other, 0,
                   unit="requests", at_most=True),
            # the line, the shared read of `news` and the pub/sub subscription (the WATCH pool opens only
            # for sessions and budgets, which this load has none of): a constant, whatever the streams
            target("Redis connections per replica (peak, streams open)",
                   streams["redis_connections_per_replica_peak"], 3, unit="connections", at_most=True),
        ]  # fmt: skip
    return out


def raise_fd_limit() -> int:
    """Let the load generator (a connection per open stream, more while they open) and the processes it
    starts, which inherit the limit, open as many files as the hard limit allows; that limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine_note(fd_limit: int, split: dict[str, Any]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    if split["pinned"]:
        where = (
            f"the system under test (every orchestratord replica and redis-server) on core "
            f"{split['system_under_test'][0]}, the fake engines and the load generator on core "
            f"{split['engine_and_load_generator'][0]}. One core bounds every setup's jobs/s: three replicas "
            "and Redis share what one process has to itself"
        )
    else:
        where = "every process of the run (replicas, redis-server, fake engines, load generator) shares them"
    return {
        "cores": cores,
        "open_files_limit": fd_limit,
        "core_split": split,
        "note": f"{cores} cores; {where}. N replicas cannot scale beyond the cores they have, so the cost "
        "per job and per token (CPU) says how N replicas on N cores of their own would scale, not the "
        "jobs/s measured here.",
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    out: dict[str, Any] = {
        "description": " ".join(__doc__.split("\n\n")[0].split()),
        "load": {
            **load.__dict__,
            "tokens_per_job": TOKENS,
            "stream_open_per_s": STREAM_RATE,
            "stream_client_patience_s": PATIENCE_S,
            "queue_max_wait_s": MAX_WAIT_S,
        },
        "engines": {
            name: {"ttft_ms": e.ttft_ms, "interval_ms": e.interval_ms} for name, e in ENGINES.items()
        },
        "setups": {},
    }
    if not HAVE_REDIS:
        out["skipped"] = f"no redis-server at {REDIS}: `bash ci/setup.sh test` installs Debian's"
        return out
    split = core_split()  # as issue 17 measured it: the system under test alone on one core
    sut = set(split["system_under_test"]) if split["pinned"] else None
    ours = set(split["engine_and_load_generator"]) if split["pinned"] else None
    out["machine_note"] = machine_note(raise_fd_limit(), split)
    workdir = scratch_dir("redis")  # the processes' logs stay here
    print(f"bench: redis: the processes' logs are in {workdir}", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(pinned(ours))  # the load generator: this process's main thread
        urls = {}
        for name, spec in ENGINES.items():
            (workdir / name).mkdir()
            urls[name] = start_engine(spec, workdir / name, stack, cores=ours).base_url
        setups = {name: (replicas, shared) for name, replicas, shared in SETUPS}

        def deployed(name: str, phase: str) -> contextlib.AbstractContextManager[Deployment]:
            """The setup's deployment, alone on the system under test's core while it is measured."""
            replicas, shared = setups[name]
            streams_total = load.streams_per_replica * replicas
            where = workdir / f"setup-{list(setups).index(name)}-{phase}"
            return deployment(ctx, urls, replicas, shared, streams_total, where, sut)

        share = replace(load, concurrency=max(1, round(load.concurrency / 3)))

        async def jobs_and_relay(name: str, r: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if name == AT_A_SHARE:  # the jobs measure alone: its figure is the cost of sharing a core
                where = workdir / f"setup-{len(setups)}-round-{r}"
                with deployment(ctx, urls, 1, True, load.streams_per_replica, where, sut) as dep:
                    return await jobs(dep, share), None
            with deployed(name, f"round-{r}") as dep:
                return await jobs(dep, load), await relay(dep, load)

        measured_rounds = await in_rounds([*setups, AT_A_SHARE], load.rounds, jobs_and_relay)
        jobs_rounds = {name: [j for j, _ in got] for name, got in measured_rounds.items()}
        out["sharing_a_core"] = sharing_a_core(jobs_rounds, share.concurrency)
        compared = compare(
            {name: jobs_rounds[name] for name in setups},
            {name: [r for _, r in measured_rounds[name] if r is not None] for name in setups},
        )
        print("bench: redis: jobs and relay done", file=sys.stderr, flush=True)
        # Then each setup on its own: the fixed offered rates last, since a rate past a deployment's
        # capacity leaves work behind that would weigh on any measure after it.
        for name, (replicas, _) in setups.items():
            with deployed(name, "streams-ttft") as dep:
                row = out["setups"][name] = {"replicas": replicas, **compared[name]}
                row["streams"] = await streams(dep, load)
                row["ttft"] = await ttft(dep, load)
            print(f"bench: redis: {name} done", file=sys.stderr, flush=True)
    open_loop_ratios(out["setups"])
    out["targets"] = targets(out["setups"])
    return out
