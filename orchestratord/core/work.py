"""How long a job holds a slot, from the work it asks for (documented in docs/admission.md).

A job's work is its prompt's length and the tokens it is expected to generate: the client's
`expected_tokens`, else the length jobs of its model and tenant reached when they stopped on their
own (learned), else `max_tokens`; never more than `max_tokens`. Each pool's rates are measured from its
runs that ended well: seconds per generated token (decode time over the tokens after the first), and
the time to the first token as a line over the prompt's length (`a + b * prompt_tokens`, least squares
over recent runs). Older measurements fade (each new one weighs as much as the last ~20 together), so
the rates follow an engine whose load changes.

From these, a queued job's service time is `first_token(prompt) + expected * per_token`; a running
job's remaining time is what is left of it: the first token's time still to come (half its age again
once it is overdue), and its expected tokens not yet generated (once it has outrun them, half again
what it generated so far, up to `max_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DECAY = 0.95  # the weight each older measurement keeps when a new one comes
ALPHA = 0.2  # the weight of a new length in the moving average


@dataclass(frozen=True, slots=True)
class Work:
    """What a job asks of a slot: its prompt's tokens, the tokens it is expected to generate, its limit."""

    prompt_tokens: int
    expected_tokens: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Progress:
    """A running job as its replica sees it: its work, how long it has run, what it generated."""

    work: Work | None  # None: not known here (the age is all there is)
    age_s: float
    tokens: int


@dataclass(slots=True)
class Line:
    """y = a + b * x by least squares over decayed sums; b never below 0 (a longer prompt never makes
    the first token come sooner)."""

    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n = self.n * DECAY + 1
        self.sx = self.sx * DECAY + x
        self.sy = self.sy * DECAY + y
        self.sxx = self.sxx * DECAY + x * x
        self.sxy = self.sxy * DECAY + x * y

    def at(self, x: float) -> float | None:
        if self.n <= 0:
            return None
        mx, my = self.sx / self.n, self.sy / self.n
        var = self.sxx / self.n - mx * mx
        if var <= 1e-9 * max(1.0, mx * mx):  # every prompt was about as long: the mean is all we know
            return my
        slope = max(0.0, (self.sxy / self.n - mx * my) / var)
        return max(0.0, my + slope * (x - mx))


@dataclass(slots=True)
class Mean:
    """A decayed mean (the same fading as `Line`)."""

    n: float = 0.0
    total: float = 0.0

    def add(self, value: float) -> None:
        self.n = self.n * DECAY + 1
        self.total = self.total * DECAY + value

    @property
    def value(self) -> float | None:
        return self.total / self.n if self.n > 0 else None


class WorkRates:
    """Per pool, the measured rates; per (model, tenant), the length of jobs that stopped on their own."""

    def __init__(self) -> None:
        self._per_token: dict[str, Mean] = {}
        self._first: dict[str, Line] = {}
        self._lengths: dict[tuple[str, str], float] = {}

    def observe(
        self, pool_id: str, *, prompt_tokens: int, first_token_s: float | None, tokens: int, decode_s: float
    ) -> None:
        """A run on `pool_id` that ended well: its first token came `first_token_s` after it started,
        then `tokens - 1` more in `decode_s`."""
        if first_token_s is not None:
            self._first.setdefault(pool_id, Line()).add(prompt_tokens, first_token_s)
        if tokens > 1 and decode_s > 0:
            self._per_token.setdefault(pool_id, Mean()).add(decode_s / (tokens - 1))

    def observe_length(self, model: str, tenant: str, tokens: int) -> None:
        """A job of `model` and `tenant` stopped on its own (not at its limit) after `tokens`."""
        for key in ((model, tenant), (model, "")):
            old = self._lengths.get(key)
            self._lengths[key] = float(tokens) if old is None else old + ALPHA * (tokens - old)

    def expected_tokens(self, model: str, tenant: str, max_tokens: int, expected: int | None = None) -> int:
        if expected is not None:
            return min(expected, max_tokens)
        learned = self._lengths.get((model, tenant), self._lengths.get((model, "")))
        return max_tokens if learned is None else max(1, min(max_tokens, round(learned)))

    def known(self, pool_id: str) -> bool:
        return pool_id in self._per_token and pool_id in self._first

    def service(self, pool_id: str, work: Work) -> float | None:
        """Seconds a job doing `work` is expected to hold a slot of `pool_id`; None before the pool
        has both rates."""
        first, per_token = self._rates(pool_id, work.prompt_tokens)
        if first is None or per_token is None:
            return None
        return first + max(0, work.expected_tokens - 1) * per_token

    def remaining(self, pool_id: str, progress: Progress) -> float | None:
        """Seconds until a running job frees its slot of `pool_id`; None before the pool has rates."""
        work = progress.work
        if work is None:
            return None
        first, per_token = self._rates(pool_id, work.prompt_tokens)
        if first is None or per_token is None:
            return None
        if progress.tokens == 0:
            wait = first - progress.age_s
            return (wait if wait > 0 else progress.age_s / 2) + max(0, work.expected_tokens - 1) * per_token
        left = work.expected_tokens - progress.tokens
        if left <= 0:  # it outran what it was expected to generate
            left = min(work.max_tokens - progress.tokens, max(1, progress.tokens // 2))
        return max(0, left) * per_token

    def _rates(self, pool_id: str, prompt_tokens: int) -> tuple[float | None, float | None]:
        line, mean = self._first.get(pool_id), self._per_token.get(pool_id)
        return (None if line is None else line.at(prompt_tokens)), (None if mean is None else mean.value)

    # -- shared by replicas -------------------------------------------------------------------------
    def export(self) -> dict[str, object]:
        """What this replica measured, as plain data another replica can `merge`."""
        return {
            "per_token": {p: [m.n, m.total] for p, m in self._per_token.items()},
            "first": {p: [f.n, f.sx, f.sy, f.sxx, f.sxy] for p, f in self._first.items()},
            "lengths": [[m, t, v] for (m, t), v in self._lengths.items()],
        }

    @classmethod
    def merged(cls, parts: list[Mapping[str, object]]) -> WorkRates:
        """The rates of several replicas as one: their decayed sums added (each replica's runs count
        as if one replica had seen them all), their learned lengths averaged."""
        rates = cls()
        lengths: dict[tuple[str, str], list[float]] = {}
        for part in parts:
            for pool, (n, total) in _items(part.get("per_token")):
                mean = rates._per_token.setdefault(pool, Mean())
                mean.n, mean.total = mean.n + n, mean.total + total
            for pool, (n, sx, sy, sxx, sxy) in _items(part.get("first")):
                line = rates._first.setdefault(pool, Line())
                line.n, line.sx, line.sy = line.n + n, line.sx + sx, line.sy + sy
                line.sxx, line.sxy = line.sxx + sxx, line.sxy + sxy
            for model, tenant, value in part.get("lengths") or []:  # type: ignore[attr-defined]
                lengths.setdefault((model, tenant), []).append(value)
        rates._lengths = {key: sum(values) / len(values) for key, values in lengths.items()}
        return rates


def _items(value: object) -> list[tuple[str, list[float]]]:
    return list(value.items()) if isinstance(value, dict) else []
