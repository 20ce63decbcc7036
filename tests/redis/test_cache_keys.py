"""`prompt_cache_key` placement in a Redis deployment: where a key's last job was placed is the
deployment's, not the placing replica's. A key placed through replica A sends its next job back to that
engine replica when replica B, started after A stopped and so with nothing of A's in its memory, places
it (the official SDK, a mock pool of two engine replicas with one slot each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestratord.app import create_app
from orchestratord.settings import load_settings
from tests.control.helpers import client
from tests.fakes.servers import serve_in_thread
from tests.openai.placing import POOL, chat, on_r1_while_r0_is_busy, ran_on, response
from tests.openai.pools import sdk
from tests.redis.conftest import RedisServer, prefix

pytestmark = pytest.mark.redis


def test_a_replica_places_a_key_where_another_replica_placed_it_last(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {
        "pools": [POOL],
        "state_url": redis_server.url,
        "redis": {"key_prefix": prefix()},
        "catalog": {"dir": str(tmp_path)},
        "shutdown_grace_s": 0.2,
    }
    with serve_in_thread(create_app(load_settings(None, **settings))) as a, client(a) as http:
        on_r1_while_r0_is_busy(http, a, lambda: chat(sdk(a), prompt_cache_key="agent-7"))
    with serve_in_thread(create_app(load_settings(None, **settings))) as b, client(b) as http:
        # Both engine replicas free: a job without the key goes to r0 (least loaded, then by id); the
        # key's jobs go to r1, where A placed the key's last job, through either surface.
        assert ran_on(http, b, chat(sdk(b))) == "r0"
        assert ran_on(http, b, response(sdk(b), prompt_cache_key="agent-7")) == "r1"
        assert ran_on(http, b, chat(sdk(b), prompt_cache_key="agent-7")) == "r1"
        assert ran_on(http, b, chat(sdk(b), prompt_cache_key="agent-8")) == "r0"
