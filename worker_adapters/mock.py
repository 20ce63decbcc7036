"""The built-in mock engine: deterministic tokens from the seed, real timing, fault injection.

Options (pool config `options:`), each also settable per request with a directive in the prompt,
`[[mock fail_after=3 slow_start_ms=200]]`, so tests can inject faults through the public API:

- `ttft_ms` (20): time to first token;  `tokens_per_s` (200): decode rate;
- `eos_after` (none): end with stop reason `eos` after this many tokens;
- `fail_after` (none): raise WORKER_RESET after this many tokens (0: before the first);
- `hang` (false): send nothing until canceled;  `refuse` (false): refuse as unavailable;
- `slow_start_ms` (0): extra delay before the first token;
- `slots` (none): report this many slots, as an engine that knows its capacity would;
- `ready` (true): what the health check answers;
- `loadable` (any): comma-separated models this engine can serve; another model makes it unready.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from worker_adapters.base import (
    AdapterConfig,
    EngineReset,
    EngineUnavailable,
    Finished,
    StopReason,
    SubmitRequest,
    Token,
    TokenEvent,
    WorkerHealth,
    WorkerProps,
)

ENGINE_VERSION = "mock-1"
_DIRECTIVE = re.compile(r"\[\[mock ([^\]]*)\]\]")
_WORDS = (
    "the", "a", "model", "token", "stream", "queue", "pool", "slot", "fair", "fast", "light", "river",
    "stone", "cloud", "signal", "orbit", "amber", "quiet", "north", "echo", "ember", "lattice", "prism",
    "harbor", "meadow", "cipher", "drift", "vector", "bloom", "tide", "ä", "日本", "🙂",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MockBehaviour:
    ttft_ms: float = 20.0
    tokens_per_s: float = 200.0
    eos_after: int | None = None
    fail_after: int | None = None
    hang: bool = False
    refuse: bool = False
    slow_start_ms: float = 0.0

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> MockBehaviour:
        known = set(cls.__dataclass_fields__)
        values = {k: _coerce(str(v)) for k, v in options.items() if k in known}
        return cls(**values)  # type: ignore[arg-type]

    def with_directives(self, prompt: str) -> MockBehaviour:
        match = _DIRECTIVE.search(prompt)
        if match is None:
            return self
        pairs = dict(part.partition("=")[::2] for part in match.group(1).split())
        merged = {k: getattr(self, k) for k in self.__dataclass_fields__}
        merged.update({k: _coerce(v or "true") for k, v in pairs.items() if k in merged})
        return MockBehaviour(**merged)


def _coerce(raw: str) -> float | int | bool | None:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("", "none", "null"):
        return None
    return float(raw) if "." in raw else int(raw)


@dataclass(slots=True)
class MockStats:
    """What the engine observed, for tests and demos."""

    started: int = 0
    completed: int = 0
    canceled: int = 0
    active: int = 0
    max_active: int = 0


class MockAdapter:
    """A real, deterministic in-process engine. Same request and seed give the same tokens."""

    engine = "mock"

    def __init__(self, config: AdapterConfig) -> None:
        self._config = config
        self._behaviour = MockBehaviour.parse(config.options)
        self._slots = _optional_int(config.options.get("slots"))
        loadable = str(config.options.get("loadable", "")).split(",")
        self._loadable = tuple(m.strip() for m in loadable if m.strip()) or (config.model,)
        self._ready = str(config.options.get("ready", "true")).lower() != "false"
        self._cancels: dict[str, asyncio.Event] = {}
        self.stats = MockStats()

    def submit(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        return self._generate(req)

    async def _generate(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        text = _request_text(req)
        behaviour = self._behaviour.with_directives(text)
        if behaviour.refuse:
            raise EngineUnavailable("mock engine refused the request", engine=self.engine)
        canceled = self._cancels.setdefault(req.task_id, asyncio.Event())
        self.stats.started += 1
        self.stats.active += 1
        self.stats.max_active = max(self.stats.max_active, self.stats.active)
        finished = False
        try:
            async for event in self._tokens(req, text, behaviour, canceled):
                finished = isinstance(event, Finished)
                yield event
        finally:
            self.stats.active -= 1
            self._cancels.pop(req.task_id, None)
            if finished:
                self.stats.completed += 1
            else:
                self.stats.canceled += 1

    async def _tokens(
        self, req: SubmitRequest, text: str, b: MockBehaviour, canceled: asyncio.Event
    ) -> AsyncIterator[TokenEvent]:
        rng = random.Random(_seed_bytes(req, text))
        limit = req.max_tokens if b.eos_after is None else min(req.max_tokens, b.eos_after)
        out = ""
        await _wait(canceled, (b.ttft_ms + b.slow_start_ms) / 1000)
        if b.hang:
            await canceled.wait()
        for i in range(limit):
            if canceled.is_set():
                return
            if b.fail_after is not None and i >= b.fail_after:
                raise EngineReset(f"mock engine failed after {i} tokens", engine=self.engine)
            if i:
                await _wait(canceled, 1 / b.tokens_per_s)
            piece = (" " if i else "") + rng.choice(_WORDS)
            out += piece
            yield Token(piece)
            if any(s and s in out for s in req.stop):
                yield Finished("stop_sequence", _count_words(text), i + 1)
                return
        reason: StopReason = "max_tokens" if limit == req.max_tokens else "eos"
        yield Finished(reason, _count_words(text), limit)

    async def cancel(self, task_id: str) -> None:
        event = self._cancels.get(task_id)
        if event is not None:
            event.set()

    async def health(self) -> WorkerHealth:
        if self._config.model not in self._loadable:
            return WorkerHealth(
                live=True, ready=False, detail=f"model {self._config.model!r} cannot be loaded"
            )
        return WorkerHealth(live=True, ready=self._ready, detail="" if self._ready else "mock not ready")

    async def props(self) -> WorkerProps:
        return WorkerProps(slots=self._slots, engine_version=ENGINE_VERSION, models=self._loadable)

    async def aclose(self) -> None:
        for event in self._cancels.values():
            event.set()


async def _wait(canceled: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    try:
        await asyncio.wait_for(canceled.wait(), timeout=seconds)
    except TimeoutError:
        return


def _request_text(req: SubmitRequest) -> str:
    if req.messages is not None:
        return "\n".join(f"{m.role}: {m.content}" for m in req.messages)
    return req.prompt or ""


def _seed_bytes(req: SubmitRequest, text: str) -> bytes:
    seed = req.seed if req.seed is not None else req.task_id
    return hashlib.sha256(f"{seed}\x00{req.model}\x00{text}".encode()).digest()


def _count_words(text: str) -> int:
    return max(1, len(text.split()))


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))
