"""The mock engine's options and prompt directives are checked: a bad directive fails its own job with
INVALID_PARAMS naming the key and the value (never an INTERNAL crash), a bad option stops start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from orchestratord.settings import ConfigError, load_settings
from tests.api.helpers import submit
from tests.conftest import mock_pool
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from worker_adapters.base import AdapterConfig, EngineRejected, Finished, SubmitRequest
from worker_adapters.mock import MockAdapter

BAD_DIRECTIVES = [
    ("ttft_ms=abc", "ttft_ms='abc'"),
    ("tokens_per_s=0", "tokens_per_s='0'"),
    ("tokens_per_s=-5", "tokens_per_s='-5'"),
    ("slow_start_ms=nan", "slow_start_ms='nan'"),
    ("ttft_ms=1e400", "ttft_ms='1e400'"),
    ("fail_after=2.5", "fail_after='2.5'"),
    ("eos_after=-1", "eos_after='-1'"),
    ("hang=maybe", "hang='maybe'"),
    ("fail_aftr=3", "'fail_aftr'"),
    ("slots=2", "'slots'"),  # an engine-wide option, not settable per request
]


def _adapter(**options: Any) -> MockAdapter:
    return MockAdapter(AdapterConfig(engine="mock", base_url="", model="mock", options=options))


@pytest.mark.parametrize(("directive", "named"), BAD_DIRECTIVES)
async def test_a_bad_directive_is_rejected_naming_the_key_and_value(directive: str, named: str) -> None:
    adapter = _adapter()
    request = SubmitRequest(task_id="t", model="mock", prompt=f"[[mock {directive}]] hi", max_tokens=3)
    with pytest.raises(EngineRejected) as caught:
        [event async for event in adapter.submit(request)]
    assert caught.value.code == "INVALID_PARAMS" and not caught.value.retriable
    assert named in caught.value.message
    assert adapter.stats.started == 0


async def test_good_directives_still_apply() -> None:
    adapter = _adapter()
    prompt = "[[mock eos_after=2 ttft_ms=0 tokens_per_s=1e5 hang=false fail_after=none]] hi"
    events = [
        e async for e in adapter.submit(SubmitRequest(task_id="t", model="mock", prompt=prompt, max_tokens=9))
    ]
    assert events[-1] == Finished("eos", prompt_tokens=7, completion_tokens=2) and len(events) == 3


def test_a_bad_directive_ends_the_job_with_invalid_params(make_server: Callable[..., LoopbackServer]) -> None:
    server = make_server()
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for directive, named in BAD_DIRECTIVES[:2]:
            job = submit(client, prompt=f"[[mock {directive}]] hello", max_tokens=4)
            events = read_events(client, job["sse_url"])
            assert events[-1].event == "error"
            error = events[-1].data
            assert error["code"] == "INVALID_PARAMS" and error["retriable"] is False
            assert named in error["message"]
            assert client.get(job["status_url"]).json()["state"] == "failed"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"tokens_per_s": 0}, "tokens_per_s='0'"),
        ({"ttft_ms": "abc"}, "ttft_ms='abc'"),
        ({"slots": 0}, "slots='0'"),
        ({"ready": "sometimes"}, "ready='sometimes'"),
        ({"loadable": " , "}, "loadable"),
        ({"tokens_per_sec": 10}, "'tokens_per_sec'"),
    ],
)
def test_bad_options_stop_start_up_and_adapter_construction(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(pools=[mock_pool(options=options)])
    assert "pools.0" in str(caught.value) and named in str(caught.value)
    with pytest.raises(ConfigError, match="replicas 'r1' options"):  # a replica's own options too
        load_settings(pools=[mock_pool(replicas=[{"id": "r0"}, {"id": "r1", "options": options}])])
    with pytest.raises(ValueError, match=named.replace("'", ".")):
        _adapter(**options)
