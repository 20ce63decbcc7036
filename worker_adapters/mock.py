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
- `loadable` (any): comma-separated models this engine can serve (default: the pool's); it lists them
  as its models, refuses a request for another, and is unready when it can serve none of the pool's.

An embeddings request (`inputs`) gets, after `ttft_ms`, a unit vector of EMBEDDING_DIMS numbers (or the
request's `dimensions`) for each input, made from the model's name and the input's text alone (the same
text embeds the same, as with a real model), and its token count is the inputs' words; `refuse`,
`hang` and `fail_after=0` apply.

An unknown option or a value out of range stops start-up (`check_options`, run by config validation);
a bad directive fails only its request, with INVALID_PARAMS naming the key and the value.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from worker_adapters.base import (
    AdapterConfig,
    Embedding,
    EngineRejected,
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
EMBEDDING_DIMS = 16
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
        """The behaviour the pool's options configure; ValueError names a bad key or value."""
        check_options(options)
        values = {k: _parse(k, str(v)) for k, v in options.items() if k in _BEHAVIOUR}
        return cls(**values)  # type: ignore[arg-type]

    def with_directives(self, prompt: str) -> MockBehaviour:
        """This behaviour with the prompt's `[[mock key=value ...]]` directive applied; a key this
        engine does not know, or a value out of range, is the request's fault: EngineRejected."""
        match = _DIRECTIVE.search(prompt)
        if match is None:
            return self
        merged = {k: getattr(self, k) for k in _BEHAVIOUR}
        for part in match.group(1).split():
            key, _, raw = part.partition("=")
            try:
                if key not in _BEHAVIOUR:
                    raise ValueError(f"unknown mock directive {key!r}; known: {', '.join(_BEHAVIOUR)}")
                merged[key] = _parse(key, raw or "true")
            except ValueError as exc:
                raise EngineRejected(f"bad [[mock]] directive: {exc}", engine="mock") from None
        return MockBehaviour(**merged)


def _number(low: float, *, inclusive: bool) -> Callable[[str], float]:
    bound = f">= {low:g}" if inclusive else f"> {low:g}"

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (value == low and not inclusive) or value > _MAX:
            raise ValueError(f"must be a number {bound} and at most {_MAX}")
        return value

    return parse


def _count(raw: str) -> int | None:
    if raw.lower() in ("none", "null"):
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > _MAX:
        raise ValueError(f"must be a whole number from 0 to {_MAX}, or none")
    return int(raw)


def _flag(raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ValueError("must be true or false")
    return raw.lower() == "true"


def _slots(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 4096:
        raise ValueError("must be a whole number from 1 to 4096")
    return int(raw)


def _models(raw: str) -> str:
    if not any(m.strip() for m in raw.split(",")):
        raise ValueError("must name at least one model (comma-separated)")
    return raw


_MAX = 3_600_000  # an hour in ms; also bounds rates and counts
_BEHAVIOUR: dict[str, Callable[[str], object]] = {
    "ttft_ms": _number(0, inclusive=True),
    "tokens_per_s": _number(0, inclusive=False),
    "eos_after": _count,
    "fail_after": _count,
    "hang": _flag,
    "refuse": _flag,
    "slow_start_ms": _number(0, inclusive=True),
}
_OPTIONS: dict[str, Callable[[str], object]] = {
    **_BEHAVIOUR,
    "slots": _slots,
    "ready": _flag,
    "loadable": _models,
}


def _parse(key: str, raw: str) -> object:
    try:
        return _OPTIONS[key](raw)
    except ValueError as exc:
        raise ValueError(f"{key}={raw!r}: {exc}") from None


def check_options(options: Mapping[str, object]) -> None:
    """ValueError naming the first unknown key or bad value among a mock pool's `options`."""
    for key, value in options.items():
        if key not in _OPTIONS:
            raise ValueError(f"unknown mock option {key!r}; known: {', '.join(_OPTIONS)}")
        _parse(key, str(value))


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
        self._behaviour = MockBehaviour.parse(config.options)  # checks every option
        slots = config.options.get("slots")
        self._slots = None if slots is None else _slots(str(slots))
        loadable = str(config.options.get("loadable", "")).split(",")
        self._loadable = tuple(m.strip() for m in loadable if m.strip()) or config.served
        self._ready = _flag(str(config.options.get("ready", "true")))
        self._cancels: dict[str, asyncio.Event] = {}
        self.stats = MockStats()

    def submit(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        return self._generate(req)

    async def _generate(self, req: SubmitRequest) -> AsyncIterator[TokenEvent]:
        text = _request_text(req)
        behaviour = self._behaviour.with_directives(text)
        if behaviour.refuse:
            raise EngineUnavailable("mock engine refused the request", engine=self.engine)
        if req.model not in self._loadable:  # as an engine that serves several models by name
            raise EngineRejected(f"model {req.model!r} is not served here", engine=self.engine)
        canceled = self._cancels.setdefault(req.task_id, asyncio.Event())
        self.stats.started += 1
        self.stats.active += 1
        self.stats.max_active = max(self.stats.max_active, self.stats.active)
        finished = False
        events = self._embeddings if req.inputs is not None else self._tokens
        try:
            async for event in events(req, text, behaviour, canceled):
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
        eos_after = None if req.ignore_eos else b.eos_after
        limit = req.max_tokens if eos_after is None else min(req.max_tokens, eos_after)
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

    async def _embeddings(
        self, req: SubmitRequest, text: str, b: MockBehaviour, canceled: asyncio.Event
    ) -> AsyncIterator[TokenEvent]:
        await _wait(canceled, (b.ttft_ms + b.slow_start_ms) / 1000)
        if b.hang:
            await canceled.wait()
        if canceled.is_set():
            return
        if b.fail_after == 0:
            raise EngineReset("mock engine failed before its answer", engine=self.engine)
        inputs = req.inputs or ()
        for index, each in enumerate(inputs):
            yield Embedding(index, embedding_of(req.model, each, req.dimensions or EMBEDDING_DIMS))
        yield Finished("eos", sum(_count_words(each) for each in inputs), 0)

    async def cancel(self, task_id: str) -> None:
        event = self._cancels.get(task_id)
        if event is not None:
            event.set()

    def streaming(self, within_s: float) -> bool:
        return False  # in-process: a probe never disturbs a stream, so it is always probed

    async def health(self) -> WorkerHealth:
        if not set(self._config.served) & set(self._loadable):
            wanted = ", ".join(repr(m) for m in self._config.served)
            return WorkerHealth(live=True, ready=False, detail=f"model {wanted} cannot be loaded")
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


def embedding_of(model: str, text: str, dimensions: int = EMBEDDING_DIMS) -> tuple[float, ...]:
    """The mock's embedding of `text`: `dimensions` numbers from its hash (a longer one's first
    EMBEDDING_DIMS are the same), scaled to length 1, as a Matryoshka model's shortened vector is."""
    seed = f"{model}\x00{text}"
    raw: list[float] = []
    for block in range(-(-dimensions // 32)):  # 32 numbers a hash
        digest = hashlib.sha256((f"{seed}\x00{block}" if block else seed).encode()).digest()
        raw += [b - 127.5 for b in digest]
    raw = raw[:dimensions]
    norm = math.sqrt(sum(x * x for x in raw))
    return tuple(x / norm for x in raw)


def _request_text(req: SubmitRequest) -> str:
    if req.inputs is not None:
        return "\n".join(req.inputs)
    if req.messages is not None:
        return "\n".join(f"{m.role}: {m.content}" for m in req.messages)
    return req.prompt or ""


def _seed_bytes(req: SubmitRequest, text: str) -> bytes:
    seed = req.seed if req.seed is not None else req.task_id
    return hashlib.sha256(f"{seed}\x00{req.model}\x00{text}".encode()).digest()


def _count_words(text: str) -> int:
    return max(1, len(text.split()))
