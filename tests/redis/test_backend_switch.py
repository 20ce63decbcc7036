"""One setting switches the state backend; clients see the same API either way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from orchestratord.app import build_store
from orchestratord.settings import ConfigError, load_settings, redact_url
from orchestratord.state.memory import MemoryStore
from orchestratord.state.redis import RedisStore
from tests.api.helpers import HANG
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.redis.conftest import RedisServer, prefix

pytestmark = pytest.mark.redis


async def test_state_url_chooses_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ORCHD_STATE_URL", raising=False)
    assert isinstance(build_store(load_settings()), MemoryStore)
    config = tmp_path / "c.yaml"
    config.write_text("state_url: redis://127.0.0.1:6399/2\nredis: {lease_ttl_s: 6, heartbeat_s: 1}\n")
    from_file = build_store(load_settings(config))
    monkeypatch.setenv("ORCHD_STATE_URL", "rediss://cache.internal:6380/0")
    from_env = build_store(load_settings())
    on_a_cluster = build_store(load_settings(None, redis={"cluster": True}))
    try:
        assert isinstance(from_file, RedisStore) and from_file.options.lease_ttl_s == 6
        assert isinstance(from_env, RedisStore) and not from_env.options.cluster
        assert isinstance(on_a_cluster, RedisStore) and on_a_cluster.options.cluster
    finally:
        await from_file.aclose()
        await from_env.aclose()
        await on_a_cluster.aclose()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"state_url": "postgres://db/x"}, r"use memory:// \(one process\) or redis://"),
        ({"state_url": "redis:///0"}, "state_url"),
        ({"state_url": "redis://h:1/0", "redis": {"lease_ttl_s": 2, "heartbeat_s": 1.5}}, "at most half"),
        ({"redis": {"key_prefix": ""}}, "redis.key_prefix"),
        ({"redis": {"cluster": True}}, "redis.cluster is true but state_url 'memory://' is not a Redis URL"),
        ({"state_url": "redis://h:1/3", "redis": {"cluster": True}}, "a Redis Cluster has only database 0"),
    ],
)
def test_bad_redis_settings_name_the_key(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(None, **overrides)


def test_a_password_in_the_url_never_reaches_a_message() -> None:
    assert redact_url("redis://app:s3cret@cache:6379/0") == "redis://app:***@cache:6379/0"
    with pytest.raises(ConfigError) as caught:
        load_settings(None, state_url="redis://:s3cret@/0")
    assert "s3cret" not in str(caught.value)


def test_the_api_is_the_same_on_redis(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer
) -> None:
    server = make_server(state_url=redis_server.url, redis={"key_prefix": prefix()})
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": "hi", "max_tokens": 6}).json()
        events = read_events(client, job["sse_url"])
        assert events[0].event == "started" and events[-1].event == "end"
        assert [e.data["i"] for e in events if e.event == "token"] == list(range(6))
        status = client.get(job["status_url"]).json()
        assert status["state"] == "succeeded" and status["text"] == "".join(
            e.data["t"] for e in events if e.event == "token"
        )
        resumed = read_events(client, job["sse_url"], headers={"Last-Event-ID": events[1].id or ""})
        assert resumed == events[2:]
        finished = client.get(job["sse_url"], headers={"Last-Event-ID": events[-1].id or ""})
        assert finished.status_code == 204  # seen everything of an ended job: EventSource stops
        hanging = client.post("/v1/tasks", json={"model_ref": "mock", "prompt": HANG, "max_tokens": 2}).json()
        started = read_events(client, hanging["sse_url"], stop_after=1)[-1].id or ""
        an_hour_on = f"{int(started.split('-')[0]) + 3_600_000}-0"  # a valid id, past every event
        ahead = client.get(hanging["sse_url"], headers={"Last-Event-ID": an_hour_on})
        assert ahead.status_code == 400 and "ahead of this stream's newest event" in ahead.json()["message"]
        assert client.post(f"/v1/tasks/{hanging['job_id']}/cancel").status_code == 204
        ready = client.get("/readyz").json()
        assert ready["checks"]["state_backend"] is True
