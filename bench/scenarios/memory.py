"""Memory is given back (issue 20, item 8): orchestratord's RSS idle, after a round of jobs, once their
retention has passed and housekeeping has purged them, and after a second round; what holds the rest
(glibc's heap, pymalloc's arenas, objects the collector tracks), and what each remedy gives back.

Each variant starts its own orchestratord, with the built-in mock engine (no engine process: only
orchestratord's memory is measured) and a retention longer than a round takes, so that a round's jobs
are all retained at once, as they are with the default 600 s. It runs under ``bench/memory_probe.py``:
``serve`` as operators run it, plus a SIGUSR1 hook that reports the allocators' figures and, after the
last round, runs ``gc.collect()`` and then glibc's ``malloc_trim(0)`` by hand. Variants: no trim;
three allocator settings from the environment (each without trim); and the trim after purges
orchestratord does itself (``memory.trim_interval_s``), waited for after the retention.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.client import Client
from bench.load import closed_loop, through_orchestrator
from bench.memory_probe import rss_mb
from bench.procs import MODEL, REPO, Child, free_port, scratch_dir, wait_ready
from bench.results import Context
from bench.scenarios.common import outcome

TOKENS = 50
WARM_UP = 50


@dataclass(frozen=True)
class Load:
    jobs: int  # per round
    concurrency: int
    retention_s: float  # longer than a round takes: a round's jobs are all retained at its end
    trim_interval_s: float  # memory.trim_interval_s where orchestratord trims (60: the default)
    settle_s: float  # waited after the retention (and after the trim interval)


FULL = Load(jobs=5000, concurrency=32, retention_s=60.0, trim_interval_s=60.0, settle_s=3.0)
QUICK = Load(jobs=500, concurrency=16, retention_s=8.0, trim_interval_s=5.0, settle_s=2.0)
SMOKE = Load(jobs=20, concurrency=4, retention_s=0.5, trim_interval_s=0.5, settle_s=1.0)


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    trim: bool = False  # orchestratord trims after purges; otherwise memory.trim_interval_s is 0
    rounds: int = 1


VARIANTS = (
    Variant("no trim", rounds=2),
    Variant("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"}),
    # a fixed threshold (the default's value) also turns off glibc's dynamic mmap threshold
    Variant("MALLOC_TRIM_THRESHOLD_=131072", {"MALLOC_TRIM_THRESHOLD_": "131072"}),
    Variant("PYTHONMALLOC=malloc", {"PYTHONMALLOC": "malloc"}),
    Variant("trim after purge (shipped)", trim=True, rounds=2),
)


def config(port: int, load: Load, variant: Variant) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "log_format": "json",
        "queue": {"capacity": 1024},
        "limits": {"max_tokens": TOKENS},
        "stream": {"retention_s": load.retention_s},
        "memory": {"trim_interval_s": load.trim_interval_s if variant.trim else 0},
        "pools": [
            {
                "id": "mock",
                "engine": "mock",
                "models": [MODEL],
                "replicas": [{"id": "r0"}],
                "slots": 64,
                "options": {"ttft_ms": 0, "tokens_per_s": 100_000},
            }
        ],
    }


class Probe:
    """orchestratord under bench/memory_probe.py: RSS from /proc, the rest through the hook."""

    def __init__(self, child: Child, workdir: Path) -> None:
        self.child, self.workdir = child, workdir

    def ask(self, *actions: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        answer = self.workdir / "stats.json"
        answer.unlink(missing_ok=True)
        (self.workdir / "actions").write_text(" ".join(actions))
        self.child.popen.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while not answer.exists():
            if time.monotonic() > deadline or self.child.popen.poll() is not None:
                raise RuntimeError(f"the memory probe did not answer {actions}")
            time.sleep(0.05)
        found: list[dict[str, Any]] = json.loads(answer.read_text())
        return found

    def stats(self) -> dict[str, Any]:
        return {"rss_outside_mb": rss_mb(self.child.pid), **self.ask("stats")[0]}

    def cpu_s(self) -> float:
        t = psutil.Process(self.child.pid).cpu_times()
        return float(t.user + t.system)

    def trims(self) -> list[dict[str, Any]]:
        """What orchestratord logged of its own trims."""
        out = []
        for line in (self.workdir / "orchestratord.log").read_text().splitlines():
            if '"memory_trimmed"' in line:
                entry = json.loads(line)
                out.append({k: entry[k] for k in ("jobs", "took_ms", "rss_before_mb", "rss_after_mb")})
        return out


@contextmanager
def probed(load: Load, variant: Variant, source: Path) -> Iterator[Probe]:
    workdir = scratch_dir("memory")
    port = free_port()
    path = workdir / "orchestratord.yaml"
    path.write_text(yaml.safe_dump(config(port, load, variant), sort_keys=False))
    argv = [sys.executable, "-m", "bench.memory_probe", str(workdir), "serve", "--config", str(path)]
    path_ = os.pathsep.join(dict.fromkeys((str(source), str(REPO))))  # orchestratord, then the probe
    env = {**os.environ, **variant.env, "PYTHONPATH": path_}
    with open(workdir / "orchestratord.log", "ab") as log:
        popen = subprocess.Popen(argv, env=env, cwd=source, stdout=log, stderr=subprocess.STDOUT)
    child = Child("orchestratord", f"http://127.0.0.1:{port}", popen)
    try:
        wait_ready(child, "/readyz")
        yield Probe(child, workdir)
    except BaseException:
        print(f"bench: the config and log are kept in {workdir}", file=sys.stderr)
        raise
    finally:
        child.stop()
    shutil.rmtree(workdir, ignore_errors=True)


async def one_round(probe: Probe, client: Client, load: Load, variant: Variant, n: int) -> dict[str, Any]:
    cpu0, began = probe.cpu_s(), time.monotonic()
    job = partial(through_orchestrator, client, TOKENS)
    results = await closed_loop(job, load.concurrency, load.jobs, 3600)
    seconds = time.monotonic() - began
    done = outcome(results)
    row: dict[str, Any] = {
        **{k: done[k] for k in ("requests", "completed", "errors", "error_examples")},
        "seconds": round(seconds, 1),
        "cpu_ms_per_job": round((probe.cpu_s() - cpu0) * 1000 / max(1, done["completed"]), 3),
        "loaded": probe.stats(),
    }
    if variant.trim and n == 0:
        row["trim_loaded_heap"] = probe.ask("trim")[0]  # the cost of one trim, with the heap full
    await asyncio.sleep(load.retention_s + load.settle_s)
    row["after_retention"] = probe.stats()
    if variant.trim:  # its trims come at most trim_interval_s apart
        await asyncio.sleep(load.trim_interval_s)
        row["after_next_trim"] = probe.stats()
    return row


async def measure(load: Load, variant: Variant, source: Path) -> dict[str, Any]:
    with probed(load, variant, source) as probe:
        client = Client(probe.child.base_url)
        try:
            started = probe.stats()
            await closed_loop(partial(through_orchestrator, client, TOKENS), 8, WARM_UP, 60)
            await asyncio.sleep(1.0)
            idle = probe.stats()  # the warm-up's jobs are still retained: about 1 MB
            rounds = [await one_round(probe, client, load, variant, n) for n in range(variant.rounds)]
            by_hand = [] if variant.trim else probe.ask("gc", "trim")
            trims = probe.trims()
        finally:
            client.close()
    return {
        **asdict(variant),
        "started": started,
        "idle": idle,
        "rounds": rounds,
        "by_hand": by_hand,
        "trims_logged": trims,
    }


def summary_row(v: dict[str, Any]) -> dict[str, Any]:
    """RSS (MB) at each step, the last round's; `remedy` is what the trim, by hand or by
    orchestratord, left."""
    last = v["rounds"][-1]
    remedy = v["by_hand"][-1] if v["by_hand"] else last.get("after_next_trim", {})
    return {
        "variant": v["name"],
        "idle_mb": v["idle"]["rss_outside_mb"],
        "loaded_mb": [r["loaded"]["rss_outside_mb"] for r in v["rounds"]],
        "after_retention_mb": [r["after_retention"]["rss_outside_mb"] for r in v["rounds"]],
        "after_gc_mb": v["by_hand"][0]["rss_mb"] if v["by_hand"] else None,
        "after_trim_mb": remedy.get("rss_mb"),
        "cpu_ms_per_job": [r["cpu_ms_per_job"] for r in v["rounds"]],
    }


async def run(ctx: Context) -> dict[str, Any]:
    load = ctx.pick(FULL, QUICK, SMOKE)
    variants = []
    for variant in VARIANTS:
        print(f"bench: memory, {variant.name} ...", file=sys.stderr, flush=True)
        variants.append(await measure(load, variant, ctx.source))
    return {
        "description": " ".join(__doc__.split("\n\n")[0].split()),
        "config": {"load": asdict(load), "tokens_per_job": TOKENS, "warm_up_jobs": WARM_UP},
        "summary": [summary_row(v) for v in variants],
        "variants": variants,
    }
