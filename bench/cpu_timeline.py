"""CPU used by orchestratord, the engine and the load generator over any window of wall-clock time,
from periodic samples.

``bench/monitor.py`` measures a phase that the caller brackets. An outside tool such as guidellm runs
several measured benchmarks in one process, each with its own start and end (wall-clock, ``time.time()``)
known only from its report afterwards; so the timeline samples cumulative CPU seconds every 100 ms while
the tool runs, and the CPU of a window is read afterwards by linear interpolation between samples.

The load generator is whichever process `watch` was last given, with its descendants (guidellm's worker
processes) and the children it has already reaped, less orchestratord and the engine (children of our
own process). Other work is the machine's busy time less the three.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psutil


def _cpu_seconds(proc: psutil.Process, *, reaped: bool = False) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + (t.children_user + t.children_system if reaped else 0.0))


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + t.softirq)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.time()
    orchestrator: float  # cumulative CPU seconds
    engine: float
    loadgen: float
    machine: float  # cumulative busy seconds of all CPUs


@dataclass
class Timeline:
    """Samples taken while `recording()` is open; `window(start, end)` reads them afterwards."""

    orch_pid: int
    engine_pid: int
    interval_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _procs: tuple[psutil.Process, psutil.Process] = field(init=False)
    _loadgen: psutil.Process | None = field(init=False, default=None)
    _loadgen_base: float = field(init=False, default=0.0)  # the cumulative count when it was watched
    _loadgen_last: float = field(init=False, default=0.0)  # its own CPU at the last sample

    def __post_init__(self) -> None:
        self._procs = (psutil.Process(self.orch_pid), psutil.Process(self.engine_pid))

    def watch(self, pid: int) -> None:
        """Count `pid` (and its descendants) as the load generator from now on."""
        self.sample()
        self._loadgen, self._loadgen_last = psutil.Process(pid), 0.0
        self._loadgen_base = self.samples[-1].loadgen - self._loadgen_seconds()  # what it uses from now on

    def _loadgen_seconds(self) -> float:
        root = self._loadgen
        if root is None:
            return 0.0
        try:
            tree = root.children(recursive=True)
        except psutil.Error:
            return self._loadgen_last  # it has ended: its count stands
        ours = (self.orch_pid, self.engine_pid)
        total = _cpu_seconds(root, reaped=True) + sum(_cpu_seconds(p) for p in tree if p.pid not in ours)
        self._loadgen_last = max(self._loadgen_last, total)  # a child between exit and reaping drops out
        return self._loadgen_last

    def sample(self) -> None:
        orch, engine = self._procs
        loadgen = self._loadgen_base + self._loadgen_seconds()
        now = Sample(time.time(), _cpu_seconds(orch), _cpu_seconds(engine), loadgen, _busy_seconds())
        self.samples.append(now)

    @contextlib.asynccontextmanager
    async def recording(self) -> AsyncIterator[Timeline]:
        async def loop() -> None:
            while True:
                self.sample()
                await asyncio.sleep(self.interval_s)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample()

    def _at(self, t: float) -> Sample:
        """The cumulative counters at time `t`, interpolated (clamped to the recorded span)."""
        i = bisect.bisect_left([s.at for s in self.samples], t)
        if i == 0:
            return self.samples[0]
        if i == len(self.samples):
            return self.samples[-1]
        a, b = self.samples[i - 1], self.samples[i]
        f = (t - a.at) / (b.at - a.at) if b.at > a.at else 0.0
        return Sample(
            t,
            a.orchestrator + f * (b.orchestrator - a.orchestrator),
            a.engine + f * (b.engine - a.engine),
            a.loadgen + f * (b.loadgen - a.loadgen),
            a.machine + f * (b.machine - a.machine),
        )

    def window(self, start: float, end: float, jobs: int) -> dict[str, Any]:
        """CPU of each party between `start` and `end` (``time.time()``), and the orchestrator's per job."""
        a, b = self._at(start), self._at(end)
        wall = b.at - a.at
        if wall <= 0:
            raise ValueError(f"empty window {start}..{end}")
        orch, engine, loadgen = b.orchestrator - a.orchestrator, b.engine - a.engine, b.loadgen - a.loadgen
        other = max(0.0, b.machine - a.machine - orch - engine - loadgen)
        return {
            "wall_s": round(wall, 3),
            "orch_cpu_s": round(orch, 3),
            "orch_cpu_cores": round(orch / wall, 3),
            "orch_cpu_ms_per_job": round(orch * 1000 / jobs, 3) if jobs else None,
            "engine_cpu_cores": round(engine / wall, 3),
            "loadgen_cpu_cores": round(loadgen / wall, 3),
            "other_cpu_cores": round(other / wall, 3),
        }
