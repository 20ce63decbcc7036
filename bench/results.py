"""Result files: ``bench/results/<date>-<scenario>.json``, each with the machine it ran on and the
targets of issue 9 §4 checked against what was measured."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.procs import REPO

RESULTS = REPO / "bench" / "results"
_L = TypeVar("_L")
_PACKAGES = (
    "uvicorn", "uvloop", "httptools", "starlette", "fastapi", "orjson", "httpx", "httpx2",
)  # fmt: skip


@dataclass(frozen=True)
class Context:
    """Where a run writes, how big it is, and the machine it runs on (taken when the run starts)."""

    results: Path
    date: str
    scale: str  # "full" (the loads), "quick" or "smoke"
    machine: dict[str, Any] = field(default_factory=dict)
    source: Path = REPO  # the checkout whose orchestratord is measured

    @classmethod
    def today(cls, results: Path = RESULTS, *, scale: str = "full", source: Path = REPO) -> Context:
        return cls(results, dt.date.today().isoformat(), scale, machine(), source.resolve())

    @property
    def quick(self) -> bool:
        return self.scale != "full"

    def pick(self, full: _L, quick: _L, smoke: _L) -> _L:
        """The load of this run's scale."""
        return {"full": full, "quick": quick, "smoke": smoke}[self.scale]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        # what `orchestratord serve` runs (cli.py sets both; the profile scenario checks the stacks)
        "orchestratord_event_loop": "uvloop",
        "orchestratord_http_parser": "httptools",
    }


def git_revision(source: Path = REPO) -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    changed = git("status", "--porcelain", "--", "orchestratord", "worker_adapters", "pool_manager")
    revision = {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted_changes": bool(changed)}
    return {**revision, "source": "repository" if source == REPO else str(source)}


def target(name: str, measured: float | None, limit: float, *, unit: str, at_most: bool) -> dict[str, Any]:
    """One target of §4: met or not, and by how much it was missed (absolute and as a factor)."""
    out: dict[str, Any] = {
        "name": name,
        "target": f"{'≤' if at_most else '≥'} {limit:g} {unit}",
        "limit": limit,
        "unit": unit,
        "measured": None if measured is None else round(measured, 3),
    }
    if measured is None:
        return {**out, "met": False, "miss_by": None, "miss_factor": None}
    met = measured <= limit if at_most else measured >= limit
    gap = measured - limit if at_most else limit - measured
    factor = (measured / limit if at_most else limit / measured) if measured and limit else None
    out.update(met=met, miss_by=None if met else round(gap, 3))
    out["miss_factor"] = None if met or factor is None else round(factor, 2)
    return out


def save(ctx: Context, scenario: str, payload: dict[str, Any]) -> Path:
    ctx.results.mkdir(parents=True, exist_ok=True)
    document = {
        "scenario": scenario,
        "date": ctx.date,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": ctx.scale,
        "quick": ctx.quick,
        "machine": ctx.machine or machine(),
        "revision": git_revision(ctx.source),
        **payload,
    }
    path = ctx.results / f"{ctx.date}-{scenario}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def latest(results: Path, scenario: str) -> dict[str, Any] | None:
    """The newest result file of a scenario (by date in its name), or None."""
    files = sorted(results.glob(f"*-{scenario}.json"))
    files = [f for f in files if f.name[:10].count("-") == 2 and f.name[11:] == f"{scenario}.json"]
    if not files:
        return None
    data: dict[str, Any] = json.loads(files[-1].read_text())
    return data
