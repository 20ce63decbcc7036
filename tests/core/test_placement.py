"""Placement is a pure function over snapshots: filters, scoring, overrides, and its decision log."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from orchestratord.core.placement import Assigned, NoCapacity, PlacementRequest, decide
from orchestratord.core.tasks import PlacementPrefs
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot


def replica(rid: str, *, free: int = 1, total: int = 4, ready: bool = True) -> ReplicaSnapshot:
    return ReplicaSnapshot(replica_id=rid, ready=ready, slots_total=total, slots_free=free)


def pool(
    pid: str, *replicas: ReplicaSnapshot, models: tuple[str, ...] = ("m",), **kw: object
) -> PoolSnapshot:
    fields: dict[str, object] = {
        "engine": "mock", "engine_version": "1", "ctx_max": 4096, "max_tokens_out": 4096, "draining": False,
    }  # fmt: skip
    fields.update(kw)
    return PoolSnapshot(pool_id=pid, models=models, replicas=replicas or (replica("r0"),), **fields)  # type: ignore[arg-type]


def req(model: str = "m", tokens: int = 100, **prefs: object) -> PlacementRequest:
    return PlacementRequest(model, tokens, PlacementPrefs(**prefs))  # type: ignore[arg-type]


def test_least_loaded_wins_then_free_slots_then_ids() -> None:
    pools = [
        pool("a", replica("r0", free=1)),
        pool("b", replica("r0", free=3)),
        pool("c", replica("r0", free=3)),
    ]
    decision = decide(req(), pools)
    assert isinstance(decision, Assigned) and (decision.pool_id, decision.replica_id) == ("b", "r0")
    assert decision.log.candidates == ("a/r0", "b/r0", "c/r0")


def test_filters_are_logged_with_reasons() -> None:
    pools = [
        pool("draining", draining=True),
        pool("other-model", models=("x",)),
        pool("small", ctx_max=50),
        pool("unready", replica("r0", ready=False)),
        pool("full", replica("r0", free=0)),
        pool("ok"),
    ]
    decision = decide(req(tokens=100), pools)
    assert isinstance(decision, Assigned) and decision.pool_id == "ok"
    reasons = dict(decision.log.filtered)
    assert reasons["draining"] == "draining"
    assert reasons["other-model"] == "does not serve m"
    assert reasons["small"].startswith("context 100 > ctx_max 50")
    assert reasons["unready/r0"] == "not ready"
    assert reasons["full/r0"] == "no free slot"


def test_session_affinity_beats_load() -> None:
    pools = [pool("a", replica("r0", free=1), replica("r1", free=4, total=4))]
    affine = PlacementRequest("m", 10, PlacementPrefs(), affinity=("a", "r0"))
    decision = decide(affine, pools)
    assert isinstance(decision, Assigned) and decision.replica_id == "r0" and decision.affinity_hit
    assert decision.log.reason == "affinity"


def test_pin_is_never_a_silent_fallback() -> None:
    pools = [pool("a", replica("r0", free=0)), pool("b")]
    busy = decide(req(mode="pin", pin_pool_id="a"), pools)
    assert isinstance(busy, NoCapacity) and busy.kind == "busy" and busy.log.pinned
    unready = decide(req(mode="pin", pin_pool_id="a"), [pool("a", replica("r0", ready=False)), pool("b")])
    assert isinstance(unready, NoCapacity) and unready.kind == "unready"
    missing = decide(req(mode="pin", pin_pool_id="zzz"), pools)
    assert isinstance(missing, NoCapacity) and missing.kind == "invalid"
    ok = decide(req(mode="pin", pin_pool_id="b"), pools)
    assert isinstance(ok, Assigned) and ok.pool_id == "b" and ok.log.pinned


def test_prefer_with_and_without_fallback_and_avoid() -> None:
    pools = [pool("a", replica("r0", free=4)), pool("b", replica("r0", free=1))]
    preferred = decide(req(mode="prefer", prefer_pools=("b",)), pools)
    assert isinstance(preferred, Assigned) and preferred.pool_id == "b" and not preferred.log.fallback
    full_b = [pool("a"), pool("b", replica("r0", free=0))]
    fallback = decide(req(mode="prefer", prefer_pools=("b",)), full_b)
    assert isinstance(fallback, Assigned) and fallback.pool_id == "a" and fallback.log.fallback
    strict = decide(req(mode="prefer", prefer_pools=("b",), allow_fallback=False), full_b)
    assert isinstance(strict, NoCapacity) and strict.kind == "busy"
    avoided = decide(req(avoid_pools=("a",)), pools)
    assert isinstance(avoided, Assigned) and avoided.pool_id == "b"


def test_device_mask_filter() -> None:
    pools = [pool("a", device_mask="0"), pool("b", device_mask="1")]
    masked = PlacementRequest("m", 10, PlacementPrefs(), device_mask="1")
    decision = decide(masked, pools)
    assert isinstance(decision, Assigned) and decision.pool_id == "b"


def test_nothing_serves_the_model_is_invalid_not_busy() -> None:
    decision = decide(req(model="nope"), [pool("a")])
    assert isinstance(decision, NoCapacity) and decision.kind == "invalid"


replicas_st = st.lists(
    st.builds(
        replica,
        st.sampled_from(["r0", "r1", "r2"]),
        free=st.integers(0, 4),
        total=st.just(4),
        ready=st.booleans(),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda r: r.replica_id,
)
pools_st = st.lists(
    st.builds(
        lambda pid, reps, models, draining, ctx: pool(
            pid, *reps, models=models, draining=draining, ctx_max=ctx
        ),
        st.sampled_from(["a", "b", "c", "d"]),
        replicas_st,
        st.sampled_from([("m",), ("x",), ("m", "x")]),
        st.booleans(),
        st.sampled_from([64, 4096]),
    ),
    max_size=4,
    unique_by=lambda p: p.pool_id,
)
prefs_st = st.builds(
    PlacementPrefs,
    mode=st.sampled_from(["auto", "prefer", "pin"]),
    pin_pool_id=st.sampled_from([None, "a", "b", "zzz"]),
    prefer_pools=st.sampled_from([(), ("a",), ("b", "c")]),
    avoid_pools=st.sampled_from([(), ("a",), ("d",)]),
    allow_fallback=st.booleans(),
)


@given(pools_st, prefs_st, st.sampled_from([10, 1000]))
def test_random_snapshots_never_violate_the_filters(
    pools: list[PoolSnapshot], prefs: PlacementPrefs, tokens: int
) -> None:
    request = PlacementRequest("m", tokens, prefs)
    first = decide(request, pools)
    assert decide(request, pools) == first  # deterministic
    if isinstance(first, NoCapacity):
        assert first.kind in ("busy", "unready", "invalid")
        if prefs.mode != "pin":
            assert not any(_eligible(p, r, request) for p in pools for r in p.replicas)
        return
    chosen = next(p for p in pools if p.pool_id == first.pool_id)
    rep = next(r for r in chosen.replicas if r.replica_id == first.replica_id)
    assert _eligible(chosen, rep, request)
    if prefs.mode == "pin" and prefs.pin_pool_id is not None:
        assert first.pool_id == prefs.pin_pool_id
    others = [(p, r) for p in pools for r in p.replicas if _eligible(p, r, request)]
    if not (prefs.mode == "prefer" and prefs.prefer_pools):
        assert rep.load == min(r.load for _, r in others)


def _eligible(p: PoolSnapshot, r: ReplicaSnapshot, request: PlacementRequest) -> bool:
    prefs = request.prefs
    pinned = prefs.mode == "pin" and prefs.pin_pool_id is not None
    if pinned and p.pool_id != prefs.pin_pool_id:
        return False
    # A pin names its pool whatever `avoid_pools` says; without a pool to pin (admission refuses that,
    # placement treats it as no pin) the avoided pools stay out, as for every other mode.
    if not pinned and p.pool_id in prefs.avoid_pools:
        return False
    if (
        prefs.mode == "prefer"
        and prefs.prefer_pools
        and not prefs.allow_fallback
        and p.pool_id not in prefs.prefer_pools
    ):
        return False
    return (
        not p.draining
        and "m" in p.models
        and request.tokens_needed <= p.ctx_max
        and r.ready
        and r.slots_free > 0
    )


def test_a_replica_is_offered_only_the_models_its_engine_lists_now() -> None:
    """Engines that serve several models by name (Ollama, vLLM with LoRA adapters) list them; a job goes
    only to a replica whose engine lists its model (under the pool's engine name), and an engine that
    lists nothing serves its one model whatever the name."""
    both = replace(replica("a", free=1), serves=frozenset({"llama", "qwen"}))
    llama_only = replace(replica("b", free=4), serves=frozenset({"llama"}))
    p = pool("p", both, llama_only, models=("llama", "qwen"))
    qwen = decide(req("qwen"), [p])
    assert isinstance(qwen, Assigned) and qwen.replica_id == "a"
    assert ("p/b", "its engine does not list 'qwen' now") in qwen.log.filtered
    llama = decide(req("llama"), [p])
    assert isinstance(llama, Assigned) and llama.replica_id == "b"  # the less loaded one serves it too
    nowhere = decide(req("qwen"), [pool("p", llama_only, models=("llama", "qwen"))])
    assert isinstance(nowhere, NoCapacity) and nowhere.kind == "unready"
    assert nowhere.message == "no ready replica's engine lists model 'qwen' now"
    renamed = pool("p", replace(replica("a"), serves=frozenset({"org/Qwen-7B"})), engine_model="org/Qwen-7B")
    assert isinstance(decide(req("m"), [renamed]), Assigned)  # the pool's engine name is the one looked up
    assert isinstance(decide(req("m"), [pool("p", replica("a"))]), Assigned)  # lists nothing: serves it


def test_a_batch_job_never_takes_the_slots_held_back_for_interactive_work() -> None:
    """`queue.holdback` 0.25 of 8 slots keeps 2: with 2 free a batch job waits (busy, not invalid),
    an interactive one is placed; with 3 free the batch job gets one, on the pool that has them."""
    tight, roomy = pool("a", replica("r0", free=2, total=8)), pool("b", replica("r0", free=3, total=8))
    batch = replace(req(), holdback=0.25)
    held = decide(batch, [tight])
    assert isinstance(held, NoCapacity) and held.kind == "busy"
    assert any("held back for interactive work" in why for _, why in held.log.filtered)
    assert isinstance(decide(req(), [tight]), Assigned)
    placed = decide(batch, [tight, roomy])
    assert isinstance(placed, Assigned) and placed.pool_id == "b"
