"""A route is a value: any model name, any set of pools, and a string encoding that gives it back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from orchestratord.core.capacity import can_serve, has_spare, unservable
from orchestratord.core.route import Route
from pool_manager.snapshot import PoolSnapshot, ReplicaSnapshot

names = st.text(min_size=1, max_size=40)
pool_sets = st.none() | st.frozensets(st.text(min_size=1, max_size=12), max_size=4)


@given(names, pool_sets)
def test_encode_decode_gives_the_route_back(model: str, pools: frozenset[str] | None) -> None:
    route = Route(model, pools)
    assert Route.decode(route.encode()) == route


@given(names, names)
def test_routes_of_different_models_never_share_an_encoding(a: str, b: str) -> None:
    assert (Route(a).encode() == Route(b).encode()) == (a == b)
    assert (Route.to(a, ["p"]).encode() == Route(a).encode()) is False


def test_names_with_separators_stay_whole() -> None:
    route = Route.to("org/m@v1:q4,x", ["pool-a", "p,b"])
    assert route.model == "org/m@v1:q4,x"
    assert route.admits("p,b") and route.admits("pool-a") and not route.admits("p")
    assert Route("m@v1").admits("anything")


def pool(pool_id: str, models: tuple[str, ...], *, draining: bool = False, free: int = 1) -> PoolSnapshot:
    replica = ReplicaSnapshot("r0", ready=True, slots_total=1, slots_free=free)
    return PoolSnapshot(
        pool_id=pool_id, engine="mock", engine_version="1", models=models, ctx_max=4096,
        max_tokens_out=4096, draining=draining, replicas=(replica,),
    )  # fmt: skip


def test_can_serve_a_model_named_like_a_restricted_route() -> None:
    pools = [pool("a", ("m@v1",))]
    assert can_serve(Route("m@v1"), pools)
    assert can_serve(Route.to("m@v1", ["a"]), pools)
    assert not can_serve(Route.to("m@v1", ["b"]), pools)


def test_a_route_has_a_slot_to_spare_with_two_free_across_its_pools() -> None:
    assert not has_spare(Route("m"), [pool("a", ("m",), free=1)])
    assert has_spare(Route("m"), [pool("a", ("m",), free=1), pool("b", ("m",), free=1)])
    assert not has_spare(Route.to("m", ["a"]), [pool("a", ("m",), free=1), pool("b", ("m",), free=1)])
    assert not has_spare(Route("m"), [pool("a", ("m",), free=1), pool("b", ("m",), draining=True, free=5)])


def test_unservable_names_the_draining_pool_or_the_cause() -> None:
    assert unservable(Route("m"), [pool("a", ("m",))], None) is None
    named, why = unservable(Route("m"), [pool("a", ("m",), draining=True)], None) or (None, "")
    assert named == "a" and "draining" in why
    named, why = unservable(Route("m"), [pool("a", ("other",))], "a") or (None, "")
    assert named == "a" and "no longer serves 'm'" in why
