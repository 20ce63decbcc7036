"""The processes under test: the fake engine and orchestratord, each a child on a free loopback port.

orchestratord runs exactly as operators run it (``python -m orchestratord serve --config FILE``) with one
pool pointing at the fake engine: of the ``openai`` engine, unless a scenario overrides the pool's fields
(``OrchestratorSpec.pool``). Both children are always stopped on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-model"


@dataclass(frozen=True, slots=True)
class EngineSpec:
    ttft_ms: float = 0.0
    interval_ms: float = 0.0
    max_tokens: int | None = None

    def args(self) -> list[str]:
        out = ["--ttft-ms", str(self.ttft_ms), "--interval-ms", str(self.interval_ms)]
        return out + (["--tokens", str(self.max_tokens)] if self.max_tokens is not None else [])


@dataclass(frozen=True, slots=True)
class OrchestratorSpec:
    slots: int = 1024
    queue_capacity: int = 1024
    max_tokens: int = 200_000
    extra: dict[str, Any] = field(default_factory=dict)  # top-level config fields
    pool: dict[str, Any] = field(default_factory=dict)  # the pool's fields (e.g. "engine": "vllm")

    def config(self, port: int, engine_url: str) -> dict[str, Any]:
        pool = {
            "id": "bench",
            "engine": "openai",
            "models": [MODEL],
            "replicas": [{"id": "r0", "url": engine_url}],
            "slots": self.slots,
            "ctx_max": self.max_tokens + 1024,
            "max_tokens_out": self.max_tokens,
            "api": "completion",
            "read_timeout_s": 120.0,
            "options": {"max_connections": max(256, self.slots * 2)},
            **self.pool,
        }
        config: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "log_format": "json",
            "queue": {"capacity": self.queue_capacity},
            "limits": {"max_tokens": self.max_tokens},
            "pools": [pool],
        }
        config.update(self.extra)
        return config


@dataclass
class Child:
    name: str
    base_url: str
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(
    argv: list[str], log: Path, source: Path = REPO, cores: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output in `log`; on `cores` only, when given (every thread it will
    start inherits the affinity, so a runtime that sizes its thread pool by the cores it may use,
    as tokio does, sees those)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    with open(log, "ab") as out, pinned(cores):
        return subprocess.Popen(argv, env=env, cwd=source, stdout=out, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Run the block (and any child forked in it) on `cores` only, then restore this thread's
    affinity; nothing changes when `cores` is None."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def core_split() -> dict[str, Any]:
    """The system under test on one core, the engine and the load generator on another (of the cores
    this process may use); no pinning on a machine with one."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return {"pinned": False, "cores": allowed, "note": "one core: nothing pinned"}
    return {
        "pinned": True,
        "system_under_test": [allowed[-1]],
        "engine_and_load_generator": [allowed[0]],
        "cores": allowed,
    }


def wait_ready(child: Child, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited with code {child.popen.returncode} while starting")
        try:
            with urllib.request.urlopen(child.base_url + path, timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} was not ready at {path} within {timeout} s")


@contextlib.contextmanager
def running(
    engine: EngineSpec, orch: OrchestratorSpec, workdir: Path, source: Path = REPO
) -> Iterator[tuple[Child, Child]]:
    """Start the fake engine, then orchestratord (from the checkout `source`) in front of it;
    yields (engine, orchestratord). `workdir` (config and logs) is removed after a clean exit and
    kept, for its logs, when the block raised."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    try:
        with stack:
            yield _start(engine, orch, workdir, source, stack)
    except BaseException:
        print(f"bench: the processes' config and logs are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)


def _start(
    engine: EngineSpec, orch: OrchestratorSpec, workdir: Path, source: Path, stack: contextlib.ExitStack
) -> tuple[Child, Child]:
    """The two children, each registered on `stack` to be stopped."""
    eng = start_engine(engine, workdir, stack)
    return eng, start_orchestrator(orch, eng.base_url, workdir, source, stack)


def start_engine(
    engine: EngineSpec, workdir: Path, stack: contextlib.ExitStack, cores: set[int] | None = None
) -> Child:
    """The fake engine (on `cores` only, when given), registered on `stack` to be stopped."""
    eport = free_port()
    engine_argv = [sys.executable, "-m", "bench.fake_engine", "--port", str(eport), *engine.args()]
    log = workdir / "engine.log"
    eng = Child("fake engine", f"http://127.0.0.1:{eport}", _spawn(engine_argv, log, cores=cores))
    stack.callback(eng.stop)
    wait_ready(eng, "/v1/models")
    return eng


def start_orchestrator(
    orch: OrchestratorSpec,
    engine_url: str,
    workdir: Path,
    source: Path,
    stack: contextlib.ExitStack,
    cores: set[int] | None = None,
) -> Child:
    """orchestratord from the checkout `source` in front of `engine_url` (on `cores` only, when
    given), registered on `stack` to be stopped."""
    oport = free_port()
    config = workdir / "orchestratord.yaml"
    config.write_text(yaml.safe_dump(orch.config(oport, engine_url), sort_keys=False))
    argv = [sys.executable, "-m", "orchestratord", "serve", "--config", str(config)]
    log = workdir / "orchestratord.log"
    orc = Child("orchestratord", f"http://127.0.0.1:{oport}", _spawn(argv, log, source, cores))
    stack.callback(orc.stop)
    wait_ready(orc, "/readyz")
    return orc


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"orchd-bench-{prefix}-"))
