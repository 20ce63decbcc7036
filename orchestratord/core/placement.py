"""Placement: choose a pool and replica for a task from snapshots. Pure: data in, decision out.

Filters, in order: the pin/avoid/prefer restriction, not draining, serves the model, context fits,
output fits (`max_tokens_out`), device mask, ready, a free slot. Scoring among survivors: affinity
(the replica of the session's last turn, or of the prompt cache key's last job) first, then least
loaded, then most free slots, then (pool_id, replica_id) as a deterministic tie-break.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from orchestratord.core.tasks import PlacementPrefs
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """What placement needs to know of a task."""

    model: str
    tokens_needed: int
    prefs: PlacementPrefs = field(default_factory=PlacementPrefs)
    # (pool_id, replica_id) that served the session's last turn, or its prompt cache key's last job
    affinity: tuple[str, str] | None = None
    device_mask: str | None = None
    tokens_out: int = 0  # the task's max_tokens: a pool's max_tokens_out must allow it
    holdback: float = 0.0  # a batch job: the share of each pool's slots it may not take


@dataclass(frozen=True, slots=True)
class DecisionLog:
    candidates: tuple[str, ...]
    filtered: tuple[tuple[str, str], ...]  # (pool_id[/replica_id], reason)
    reason: str
    pinned: bool
    fallback: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "candidates": list(self.candidates),
            "filtered": [f"{who}: {why}" for who, why in self.filtered],
            "reason": self.reason,
            "pinned": self.pinned,
            "fallback": self.fallback,
        }


@dataclass(frozen=True, slots=True)
class Assigned:
    pool_id: str
    replica_id: str
    engine: str
    engine_version: str
    log: DecisionLog
    affinity_hit: bool = False


@dataclass(frozen=True, slots=True)
class NoCapacity:
    """Nothing can take the task now. `kind` says whether waiting can help (busy) or not."""

    kind: str  # "busy" | "unready" | "invalid"
    message: str
    log: DecisionLog


def allowed_pools(prefs: PlacementPrefs, pool_ids: Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """The pools a task may use, and whether they are a fallback from its preference."""
    if prefs.mode == "pin" and prefs.pin_pool_id is not None:
        return (prefs.pin_pool_id,), False
    usable = tuple(p for p in pool_ids if p not in prefs.avoid_pools)
    if prefs.mode == "prefer" and prefs.prefer_pools and not prefs.allow_fallback:
        return tuple(p for p in usable if p in prefs.prefer_pools), False
    return usable, False


def decide(req: PlacementRequest, pools: Sequence[PoolSnapshot]) -> Assigned | NoCapacity:
    pinned = req.prefs.mode == "pin"
    allowed, _ = allowed_pools(req.prefs, [p.pool_id for p in pools])
    filtered: list[tuple[str, str]] = []
    eligible = [p for p in pools if _pool_ok(p, req, allowed, filtered)]
    free = [
        (p, r) for p in eligible for r in p.replicas
        if _replica_ok(p, r, req.model, filtered) and _not_held_back(p, r, req.holdback, filtered)
    ]  # fmt: skip
    candidates = tuple(f"{p.pool_id}/{r.replica_id}" for p, r in free)
    if not free:
        return _no_capacity(req, pools, eligible, filtered, candidates, pinned)
    prefers = req.prefs.mode == "prefer" and bool(req.prefs.prefer_pools)
    preferred = [(p, r) for p, r in free if prefers and p.pool_id in req.prefs.prefer_pools]
    fallback = prefers and not preferred
    pick_from = preferred or free
    pool, replica = min(pick_from, key=lambda pr: _score(pr[0], pr[1], req.affinity))
    hit = req.affinity == (pool.pool_id, replica.replica_id)
    reason = "affinity" if hit else "least loaded"
    log = DecisionLog(candidates, tuple(filtered), reason, pinned, fallback)
    return Assigned(pool.pool_id, replica.replica_id, pool.engine, pool.engine_version, log, hit)


def _pool_ok(
    p: PoolSnapshot, req: PlacementRequest, allowed: Sequence[str], out: list[tuple[str, str]]
) -> bool:
    checks = (
        (p.pool_id in allowed, "excluded by placement preferences"),
        (not p.draining, "draining"),
        (req.model in p.models, f"does not serve {req.model}"),
        (req.tokens_needed <= p.ctx_max, f"context {req.tokens_needed} > ctx_max {p.ctx_max}"),
        (
            req.tokens_out <= p.max_tokens_out,
            f"max_tokens {req.tokens_out} > max_tokens_out {p.max_tokens_out}",
        ),
        (req.device_mask is None or req.device_mask == p.device_mask, "device mask differs"),
    )
    for ok, why in checks:
        if not ok:
            out.append((p.pool_id, why))
            return False
    return True


def _replica_ok(p: PoolSnapshot, r: ReplicaSnapshot, model: str, out: list[tuple[str, str]]) -> bool:
    if not r.ready:
        out.append((f"{p.pool_id}/{r.replica_id}", "not ready"))
        return False
    if not _serves(p, r, model):
        out.append((f"{p.pool_id}/{r.replica_id}", f"its engine does not list {p.engine_name(model)!r} now"))
        return False
    if r.slots_free <= 0:
        out.append((f"{p.pool_id}/{r.replica_id}", "no free slot"))
        return False
    return True


def _serves(p: PoolSnapshot, r: ReplicaSnapshot, model: str) -> bool:
    """Whether the replica's engine answers to the model's name now (engines that list no names
    serve their one model whatever the request names)."""
    return r.serves is None or p.engine_name(model) in r.serves


def _score(
    p: PoolSnapshot, r: ReplicaSnapshot, affinity: tuple[str, str] | None
) -> tuple[int, float, int, str, str]:
    affine = 0 if affinity == (p.pool_id, r.replica_id) else 1
    return (affine, r.load, -r.slots_free, p.pool_id, r.replica_id)


def _not_held_back(p: PoolSnapshot, r: ReplicaSnapshot, holdback: float, out: list[tuple[str, str]]) -> bool:
    if holdback > 0 and p.slots_free <= math.floor(holdback * p.slots_total + 1e-9):
        out.append((f"{p.pool_id}/{r.replica_id}", "its free slots are held back for interactive work"))
        return False
    return True


def _no_capacity(
    req: PlacementRequest,
    pools: Sequence[PoolSnapshot],
    eligible: Sequence[PoolSnapshot],
    filtered: list[tuple[str, str]],
    candidates: tuple[str, ...],
    pinned: bool,
) -> NoCapacity:
    if pinned and not any(p.pool_id == req.prefs.pin_pool_id for p in pools):
        kind, message = "invalid", f"pinned pool {req.prefs.pin_pool_id!r} does not exist"
    elif not eligible and _only_draining(req, pools):
        kind, message = "unready", f"every pool that could serve model {req.model!r} is draining"
    elif not eligible:
        kind, message = "invalid", f"no pool can serve model {req.model!r} with these constraints"
    elif not any(r.ready for p in eligible for r in p.replicas):
        kind, message = "unready", f"no ready replica for model {req.model!r}"
    elif not any(r.ready and _serves(p, r, req.model) for p in eligible for r in p.replicas):
        kind, message = "unready", f"no ready replica's engine lists model {req.model!r} now"
    else:
        kind, message = "busy", f"every replica serving {req.model!r} is busy"
    return NoCapacity(kind, message, DecisionLog(candidates, tuple(filtered), message, pinned, False))


def _only_draining(req: PlacementRequest, pools: Sequence[PoolSnapshot]) -> bool:
    """True when a pool was left out only because it drains: waiting (or retrying) can help."""
    allowed, _ = allowed_pools(req.prefs, [p.pool_id for p in pools])
    return any(_pool_ok(replace(p, draining=False), req, allowed, []) for p in pools if p.draining)
