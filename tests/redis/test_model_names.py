"""Any model name a pool can list is served on the Redis backend too (the queue keys jobs by their
route's encoding there); the cases are those of tests/pools/test_model_names.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fakes.servers import LoopbackServer
from tests.pools.test_model_names import pools, run_each_name
from tests.redis.conftest import RedisServer, prefix

pytestmark = pytest.mark.redis


def test_any_model_name_runs_on_redis(
    make_server: Callable[..., LoopbackServer], redis_server: RedisServer
) -> None:
    run_each_name(make_server(pools=pools(), state_url=redis_server.url, redis={"key_prefix": prefix()}))
