"""The OpenAI adapter against a real engine: llama-cpp-python's server on a tiny generated model.

The engine runs in its own interpreter (``ORCH_ENGINE_PYTHON``, default ``<repo>/.venv-engine/bin/python``),
because llama-cpp-python compiles llama.cpp and brings its own FastAPI/uvicorn. If that interpreter is
missing the tests fail, saying how to install it: this tier is the proof that the adapter speaks to a
real engine, so it must not silently disappear.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gguf
import httpx
import pytest

from tests.api.helpers import wait_for
from tests.e2e_engine.tiny_model import write_tiny_llama
from tests.fakes.engines.harness import collect, texts
from tests.fakes.servers import LoopbackServer
from tests.openai.pools import sdk
from worker_adapters.base import AdapterConfig, ChatMessage, Finished, SubmitRequest, Token
from worker_adapters.openai_http import OpenAIAdapter

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 45.0
INSTALL = (
    "python3.11 -m venv .venv-engine && .venv-engine/bin/pip install 'llama-cpp-python[server]==0.3.36' "
    "(compiles llama.cpp for the CPU, about 4 minutes on 2 cores), or point ORCH_ENGINE_PYTHON at an "
    "interpreter that has it"
)


def engine_python() -> str:
    python = Path(os.environ.get("ORCH_ENGINE_PYTHON") or REPO / ".venv-engine" / "bin" / "python")
    if not python.exists():
        pytest.fail(f"no engine interpreter at {python}. Install it: {INSTALL}", pytrace=False)
    probe = subprocess.run(
        [python, "-c", "import llama_cpp.server"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.fail(
            f"{python} cannot import llama_cpp.server ({probe.stderr.strip()[-300:]}). {INSTALL}",
            pytrace=False,
        )
    return str(python)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Engine:
    """A llama-cpp-python server, started on first use and stopped at the end of the module: by default
    on the tiny model of tiny_model.py with a 512-token context; `model_path`, `n_ctx` and `alias` (the
    name it lists and answers to) for others."""

    workdir: Path
    url: str = ""
    model: Path = field(default_factory=Path)
    log_path: Path = field(default_factory=Path)
    model_path: Path | None = None
    n_ctx: int = 512
    alias: str | None = None
    extra: tuple[str, ...] = ()  # more of its server's options
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> Engine:
        """Start, or start again (same port) after `kill`."""
        if self._process is None or self._process.poll() is not None:
            python = engine_python()
            self.model = self.model_path or write_tiny_llama(self.workdir / "tiny-llama.gguf")
            port = int(self.url.rsplit(":", 1)[1]) if self.url else free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.log_path = self.workdir / "engine.log"
            self._log = self.log_path.open("ab")
            command = [python, "-m", "llama_cpp.server", "--model", str(self.model)]
            command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.n_ctx)]
            if self.alias:
                command += ["--model_alias", self.alias]
            command += self.extra
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
            self._wait_ready()
        return self

    def kill(self) -> None:
        assert self._process is not None
        self._process.kill()
        self._process.wait()

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2) as client:
            while True:
                if self._process.poll() is not None:
                    pytest.fail(
                        f"the engine exited with {self._process.returncode}:\n{self.log()}", pytrace=False
                    )
                try:
                    if client.get(self.url + "/v1/models").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the engine was not ready in {START_TIMEOUT_S} s:\n{self.log()}", pytrace=False
                    )
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    server = Engine(tmp_path_factory.mktemp("llama-cpp-python"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def adapter(engine: Engine) -> AsyncIterator[Callable[[], OpenAIAdapter]]:
    """`adapter()` starts the engine if needed (inside the test, so a missing engine FAILS the test) and
    returns an OpenAI adapter for it, closed after the test."""
    made: list[OpenAIAdapter] = []

    def connect() -> OpenAIAdapter:
        engine.start()
        config = AdapterConfig(
            engine="openai", base_url=engine.url, model=str(engine.model), read_timeout_s=30
        )
        made.append(OpenAIAdapter(config))
        return made[-1]

    yield connect
    for adapter in made:
        await adapter.aclose()


async def engine_usage(engine: Engine, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The same request, not streamed: the engine's own count of the tokens it generated."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(engine.url + path, json={**body, "stream": False})
        response.raise_for_status()
        return response.json()["usage"]  # type: ignore[no-any-return]


async def test_completion_streams_one_token_per_engine_token(engine: Engine, adapter: Any) -> None:
    openai = adapter()
    req = SubmitRequest(
        task_id="e1", model="tiny", max_tokens=40, prompt="Once upon a time", temperature=0.0, seed=7
    )
    events = await collect(openai, req)
    usage = await engine_usage(
        engine, "/v1/completions", {"prompt": req.prompt, "max_tokens": 40, "temperature": 0.0, "seed": 7}
    )
    assert len(texts(events)) == usage["completion_tokens"] >= 40
    # The model never picks EOS (tiny_model.py), so the generation ends at max_tokens. llama-cpp-python
    # sends no usage chunk when streaming, so the counts are unknown.
    assert events[-1] == Finished("max_tokens", prompt_tokens=None, completion_tokens=None)


async def test_chat_streams_one_token_per_engine_token(engine: Engine, adapter: Any) -> None:
    openai = adapter()
    messages = (ChatMessage("user", "Say something."),)
    req = SubmitRequest(task_id="e2", model="tiny", max_tokens=16, messages=messages, temperature=0.0, seed=7)
    events = await collect(openai, req)
    body = {
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 16,
        "temperature": 0.0,
        "seed": 7,
    }
    usage = await engine_usage(engine, "/v1/chat/completions", body)
    assert len(texts(events)) == usage["completion_tokens"]
    assert isinstance(events[-1], Finished) and events[-1].stop_reason == "max_tokens"


async def test_cancel_mid_stream_disconnects_from_the_engine(engine: Engine, adapter: Any) -> None:
    openai = adapter()
    req = SubmitRequest(task_id="e3", model="tiny", max_tokens=450, prompt="Hello", temperature=0.0)
    received = 0
    async with aclosing(openai.submit(req)) as events:
        async for event in events:
            assert isinstance(event, Token)
            received += 1
            if received == 3:
                await openai.cancel("e3")  # the rest of the iteration is empty
    assert received == 3
    deadline = time.monotonic() + 10
    while "Disconnected from client" not in engine.log():
        assert time.monotonic() < deadline, f"the engine did not log the disconnect:\n{engine.log()}"
        await asyncio.sleep(0.05)
    # Generation stopped and the engine's single model lock was released: the next request is served.
    after = await collect(
        openai, SubmitRequest(task_id="e4", model="tiny", max_tokens=4, prompt="Hi", temperature=0.0)
    )
    assert isinstance(after[-1], Finished)


def test_embeddings_come_back_as_llama_cpp_python_computed_them(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """An `openai` pool in front of llama-cpp-python's server started with `--embedding true` on a model
    that pools (mean): every input's vector, in order, as the server computed it, and its token count."""
    model = write_tiny_llama(tmp_path / "pooled.gguf", pooling=gguf.PoolingType.MEAN)
    engine = Engine(tmp_path, model_path=model, alias="tiny", extra=("--embedding", "true")).start()
    inputs = ["The river", "a stone in the water"]
    try:
        direct = httpx.post(
            f"{engine.url}/v1/embeddings",
            json={"model": "tiny", "input": inputs, "encoding_format": "float"},
            timeout=60,
        )
        replicas = [{"id": "a", "url": engine.url}]
        pool = {
            "id": "p",
            "engine": "openai",
            "models": ["tiny"],
            "replicas": replicas,
            "ctx_max": 512,
            "slots": 1,
        }
        server = make_server(pools=[pool], health_interval_s=0.5)
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            wait_for(lambda: http.get("/v1/pools/p/health").json()["ready"], 15)
        ours = sdk(server).embeddings.create(model="tiny", input=inputs)
    finally:
        engine.stop()
    assert direct.status_code == 200, direct.text
    said = sorted(direct.json()["data"], key=lambda item: item["index"])
    assert [item.index for item in ours.data] == [0, 1] and len(said[0]["embedding"]) == 64
    for item, theirs in zip(ours.data, said, strict=True):
        assert item.embedding == pytest.approx(theirs["embedding"], rel=1e-6, abs=1e-7)
    assert ours.usage.prompt_tokens == direct.json()["usage"]["prompt_tokens"]
