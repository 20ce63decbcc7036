"""What a phase cost the orchestrator process: CPU time, peak and sampled RSS, and what else ran.

Peak RSS is the kernel's own high-water mark (``VmHWM``), reset at the start of each phase by writing
``5`` to ``/proc/<pid>/clear_refs`` (Linux ≥ 4.0), so a short spike between two samples is not missed.
Where that is not possible, the maximum of the 100 ms samples stands in. The CPU used by processes
outside the benchmark during the phase is reported too: the machine is shared, and the numbers mean
less when something else was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MB = 1024 * 1024


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(
        t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    )


def _cpu_seconds(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Usage:
    """The orchestrator's resource use over one phase."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rss_start_mb: float
    rss_end_mb: float
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds into phase, RSS MB)
    engine_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    other_cores: float = 0.0

    def as_dict(self, with_samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_cores": round(self.cpu_s / self.wall_s, 3) if self.wall_s else 0.0,
            "peak_rss_mb": round(self.peak_rss_mb, 2),
            "rss_start_mb": round(self.rss_start_mb, 2),
            "rss_end_mb": round(self.rss_end_mb, 2),
            "engine_cpu_cores": round(self.engine_cpu_s / self.wall_s, 3) if self.wall_s else 0.0,
            "loadgen_cpu_cores": round(self.loadgen_cpu_s / self.wall_s, 3) if self.wall_s else 0.0,
            "other_work_cpu_cores": round(self.other_cores, 3),
        }
        if with_samples:
            out["rss_samples_mb"] = [[round(t, 2), round(m, 2)] for t, m in self.samples]
        return out


class Monitor:
    """Watches the orchestrator (and, for the accounting of other work, the engine and ourselves)."""

    def __init__(self, orch_pid: int, engine_pid: int, interval_s: float = 0.1) -> None:
        self._orch = psutil.Process(orch_pid)
        self._engine = psutil.Process(engine_pid)
        self._self = psutil.Process()
        self._interval = interval_s

    @contextlib.asynccontextmanager
    async def phase(self) -> Any:
        """``async with monitor.phase() as result:`` then ``result.usage`` after the block."""
        holder = _Phase()
        hwm = _reset_peak(self._orch.pid)
        start = time.perf_counter()
        cpu0, eng0 = _cpu_seconds(self._orch), _cpu_seconds(self._engine)
        self0, busy0 = _cpu_seconds(self._self), _busy_seconds()
        rss0 = self._rss()
        sampler = asyncio.create_task(self._sample(start, holder.samples))
        try:
            yield holder
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            wall = time.perf_counter() - start
            cpu = _cpu_seconds(self._orch) - cpu0
            eng = _cpu_seconds(self._engine) - eng0
            me = _cpu_seconds(self._self) - self0
            others = max(0.0, _busy_seconds() - busy0 - cpu - eng - me)
            rss1 = self._rss()
            peak = _peak_rss(self._orch.pid) if hwm else None
            sampled = max([rss0, rss1, *(m for _, m in holder.samples)])
            holder.usage = Usage(
                wall_s=wall,
                cpu_s=cpu,
                peak_rss_mb=max(sampled, (peak or 0) / MB),
                rss_start_mb=rss0,
                rss_end_mb=rss1,
                samples=holder.samples,
                engine_cpu_s=eng,
                loadgen_cpu_s=me,
                other_cores=others / wall if wall else 0.0,
            )

    def _rss(self) -> float:
        try:
            return float(self._orch.memory_info().rss) / MB
        except psutil.Error:
            return 0.0

    async def _sample(self, start: float, out: list[tuple[float, float]]) -> None:
        while True:
            out.append((time.perf_counter() - start, self._rss()))
            await asyncio.sleep(self._interval)


class _Phase:
    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.usage: Usage | None = None
