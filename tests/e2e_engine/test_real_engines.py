"""One conformance suite, run through orchestratord against every real engine: llama.cpp's own
`llama-server` (the `llamacpp` adapter), llama-cpp-python's OpenAI server (`openai`) and vLLM on the CPU
(`vllm`). The same test body runs against each (real_engines.py says how each is started and what
engine-side evidence it gives); the oracle is always the engine itself, asked directly.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, ValidationError

from tests.e2e_engine.real_engines import (
    MODEL,
    Proxy,
    Real,
    start_llama_cpp_python,
    start_llama_server,
    start_vllm,
    timed_events,
    wait_until,
)
from tests.e2e_engine.tiny_model import write_tiny_llama
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import Event, read_events

pytestmark = pytest.mark.engine
ENGINES = ["llama-server", "llama-cpp-python", "vllm"]
PROMPT = "The river"


@pytest.fixture(scope="module")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 100 tokens/s on one thread: a cancel or a kill lands mid-generation."""
    path = tmp_path_factory.mktemp("gguf") / "slow-llama.gguf"
    return write_tiny_llama(path, n_ctx=4096, n_embd=512, n_layer=8, n_ff=2048, n_head=8)


@pytest.fixture(scope="module", params=ENGINES)
def real(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, slow_gguf: Path
) -> Iterator[Real]:
    workdir = tmp_path_factory.mktemp(request.param)
    if request.param == "llama-server":
        engine = start_llama_server(workdir, slow_gguf)
    elif request.param == "llama-cpp-python":
        engine = start_llama_cpp_python(workdir, slow_gguf)
    else:
        engine = start_vllm(workdir)
    try:
        yield engine
    finally:
        engine.server.stop()


def serve(make_server: Callable[..., LoopbackServer], real: Real, url: str | None = None) -> LoopbackServer:
    return make_server(pools=[real.pool(url)], health_interval_s=0.5)


LONG = 1500  # tokens: about ten seconds of generation on every engine's slow model


def generating(client: httpx.Client, real: Real, posted: dict[str, Any]) -> bool:
    """Wait until the engine is mid-generation; False if the job ended first. For the engines that
    show it (busy slots, running requests): the job runs, then a second more, on time rather than on a
    token count or the engine's gauges, since vLLM on 2 cores streams (and updates its metrics) in
    bursts, often all at the end; and it still runs then. llama-cpp-python shows nothing: its first
    token (it streams evenly). The engine is not asked here: vLLM's API server may answer only once
    the generation is over."""
    if not real.shows_busy:
        first = read_events(client, posted["sse_url"], stop_after=3)  # started, then a token or metrics
        assert first[0].event == "started" and first[-1].event in ("token", "metrics"), first
        return True

    def state() -> str:
        return str(client.get(f"/v1/tasks/{posted['job_id']}").json()["state"])

    wait_until(lambda: state() != "queued", 30, lambda: f"the job running (it is {state()})")
    time.sleep(1.0)
    return state() == "running"


def mid_generation(client: httpx.Client, real: Real) -> tuple[dict[str, Any], float | None]:
    """A long job caught mid-generation, and the engine's count of generated tokens before it. Up to
    three jobs are posted: how fast vLLM generates on 2 cores depends on what else runs, and a job that
    ended before the test could act on it proves nothing."""
    ended = []
    for _ in range(3):
        before = real.generated()
        posted = job(client, prompt="Go on", max_tokens=LONG)
        if generating(client, real, posted):
            return posted, before
        ended.append(client.get(f"/v1/tasks/{posted['job_id']}").json())
    raise AssertionError(f"no job was still running a second after it started: {ended}")


def finished_before(events: list[Event]) -> bool:
    """Whether a job's engine had given it its whole answer (every token asked for, or its end of
    sequence) before the test killed the engine: an `end` that is not a cut answer."""
    last = events[-1].data if events and events[-1].event == "end" else None
    return last is not None and (last["stop_reason"] == "eos" or last["tokens_out"] == LONG)


def job(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    """A job posted as a client should: a retriable 429 (our event loop lagging while an engine starts
    on the same 2 cores) is retried after its Retry-After, up to four times."""
    body = {"model_ref": MODEL, "temperature": 0.0, "seed": 7, **fields}
    for _ in range(4):
        answer = client.post("/v1/tasks", json=body)
        if answer.status_code != 429 or not answer.json().get("retriable"):
            break
        time.sleep(min(float(answer.headers.get("Retry-After", "1")), 10.0))
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


@pytest.mark.parametrize(("chat", "stopping"), [(False, False), (True, False), (False, True)],
                         ids=["completion", "chat", "stop-string"])  # fmt: skip
def test_text_and_token_count_are_the_engines(
    make_server: Callable[..., LoopbackServer], real: Real, chat: bool, stopping: bool
) -> None:
    stop: list[str] = []
    if stopping:  # a stop string from the middle of what the engine says: it cuts there, and so do we
        whole, _ = real.direct(chat=chat, text=PROMPT, max_tokens=24)
        stop = [whole[10:13]]
    text, count = real.direct(chat=chat, text=PROMPT, max_tokens=24, stop=stop)
    before = real.generated()  # after the direct request's tokens were counted
    server = serve(make_server, real)
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        shape: dict[str, Any] = (
            {"messages": [{"role": "user", "content": PROMPT}]} if chat else {"prompt": PROMPT}
        )
        if stop:
            shape["stop"] = stop
        events = read_events(client, job(client, max_tokens=24, **shape)["sse_url"])
    end = events[-1]
    assert end.event == "end", end.data
    expected = "max_tokens"
    if stopping:  # OpenAI's finish_reason "stop" is an EOS and a stop string alike: we say eos
        expected = "stop_sequence" if real.tells_stop_strings else "eos"
    assert end.data["stop_reason"] == expected, end.data
    if stopping:
        assert stop[0] not in text and len(text) < len(whole)
    relayed = "".join(e.data["t"] for e in events if e.event == "token")
    assert relayed.encode() == text.encode()  # byte for byte, control characters included
    if real.counts_in_stream or not stopping:
        assert end.data["tokens_out"] == count
    else:  # the estimate counts what was relayed; the engine also counted the stop string's tokens
        assert end.data["tokens_out"] <= count
    assert ("tokens_out_estimated" in end.data) is not real.counts_in_stream  # an estimate is named one
    if before is not None:  # the engine's own counter grew by as much
        wait_until(
            lambda: real.generated_since(before) == count,
            10,
            lambda: f"{real.name}'s counter grew by {real.generated_since(before)}, not {count}",
        )
    indexes = [e.data["i"] for e in events if e.event == "token"]
    assert indexes == list(range(len(indexes)))  # `i` stays the gap-free index of token events


def test_tokens_are_relayed_as_the_engine_sends_them(
    make_server: Callable[..., LoopbackServer], real: Real, record_property: Callable[[str, object], None]
) -> None:
    """Timestamps at both ends: a proxy in front of the engine notes when its first text passed, the
    client when its first token event arrived. The difference is ours, whatever the engine's pace.
    Best of three jobs: the proxy, orchestratord and the client share one process (and its GIL) with
    a CPU-bound engine on two cores, and a relay that holds tokens back is slow every time."""
    lags: list[float] = []
    with Proxy(int(real.url.rsplit(":", 1)[1])) as proxy:
        server = serve(make_server, real, proxy.url)
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            for _ in range(3):
                posted = job(client, prompt=PROMPT, max_tokens=64)
                began = time.monotonic()
                arrivals = list(timed_events(client, posted["sse_url"]))
                assert arrivals[-1][1].event == "end", arrivals[-1][1].data
                first_token = next(at for at, event in arrivals if event.event == "token" and event.data["t"])
                lags.append((first_token - proxy.first_text_at(began)) * 1000)
                if lags[-1] < 100:
                    break
    lag_ms = min(lags)
    record_property("first_token_lag_ms", round(lag_ms, 1))
    print(f"{real.name}: first token {', '.join(f'{lag:.1f}' for lag in lags)} ms after the engine sent it")
    # measured here: 0.5 to 4 ms; the bound only has to catch a relay that holds tokens back (the issue
    # saw one wait for the engine's end, seconds), not the scheduling noise of a loaded 2-core machine
    # (once 1,245 ms with vLLM busy on both cores)
    assert lag_ms < 1000, f"the first token waited {lag_ms:.0f} ms in orchestratord, best of {len(lags)}"


def test_health_probes_never_cut_a_running_stream(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """llama-cpp-python ends a running stream with `[DONE]` and no finish reason as soon as any other
    request waits for its model (`interrupt_requests`, on by default), and a probe of `/v1/models`
    does: probes every 0.2 s used to cut every stream longer than that. A replica that is generating
    is left alone by the prober."""
    server = make_server(pools=[real.pool()], health_interval_s=0.2)
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        began = time.monotonic()
        events = read_events(client, job(client, prompt=PROMPT, max_tokens=300)["sse_url"])
        took = time.monotonic() - began
    assert events[-1].event == "end", events[-1].data
    assert took > 0.6, f"the stream took {took:.2f} s: too short to have met a probe"


def test_a_cancel_frees_the_engine_and_stops_its_generation(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """For the engines that count what they generate: the canceled job's generation stops short of
    its end. vLLM on 2 cores, beside the rest of the suite, sometimes generates a whole answer in one
    burst before the cancel reaches it (its API server notices the closed connection only when its
    loop next runs); each of up to three jobs is a fresh chance, and an engine that never stops fails
    all three."""
    server = serve(make_server, real)
    generated: list[float] = []
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        for _ in range(3 if real.shows_busy else 1):
            posted, before = mid_generation(client, real)
            assert client.post(f"/v1/tasks/{posted['job_id']}/cancel").status_code == 204
            end = read_events(client, posted["sse_url"])[-1]
            assert end.event == "end" and end.data["stop_reason"] == "canceled"
            if before is None:
                break
            wait_until(lambda: not real.busy(), 10, f"{real.name} freed its slot")
            generated.append(real.generated_since(before))
            if generated[-1] < LONG:
                break
    if before is not None:
        assert generated[-1] < LONG, f"the engine generated every token asked for, each time: {generated}"
    else:  # llama-cpp-python serves one request at a time: a short one finishes only if ours stopped
        began = time.monotonic()
        _, count = real.direct(chat=False, text="Hi", max_tokens=4)
        assert count == 4 and time.monotonic() - began < 8  # the rest of ours would take 10 s or more


def test_a_prompt_beyond_the_engines_context_is_one_clean_refusal(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """The pool's ctx_max (100,000) is a ceiling; the engine's context is what holds. Either admission
    refuses at once (the engine reported its context) or the engine's own refusal comes back as one
    INVALID_PARAMS error with its reason."""
    server = serve(make_server, real)
    long_prompt = "hello " * (real.ctx + 200)  # more tokens than the context, whatever the tokenizer
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        wait_until(lambda: client.get("/v1/pools/real/health").json()["ready"], 15, "pool ready")
        answer = client.post("/v1/tasks", json={"model_ref": MODEL, "prompt": long_prompt, "max_tokens": 8})
        if answer.status_code == 400:
            assert answer.json()["code"] == "INVALID_PARAMS"
            said = f"({real.ctx}, as its engine reports it)" if real.reports_ctx else f"({real.ctx})"
            assert said in answer.json()["message"]
            return
        assert answer.status_code == 202, answer.text
        events = read_events(client, answer.json()["sse_url"])
    errors = [e for e in events if e.event == "error"]
    assert len(errors) == 1 and events[-1] is errors[0], [e.event for e in events]
    assert errors[0].data["code"] == "INVALID_PARAMS" and errors[0].data["retriable"] is False
    assert "context" in errors[0].data["message"], errors[0].data["message"]  # the engine's reason


def test_max_tokens_beyond_what_the_context_leaves(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """A short prompt and max_tokens up to the context: refused at admission, refused by the engine as
    one INVALID_PARAMS error, or (where the engine cuts the output to what is left) ended with
    `context_length`, never `max_tokens`."""
    server = serve(make_server, real)
    asked = real.ctx - 2
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        wait_until(lambda: client.get("/v1/pools/real/health").json()["ready"], 15, "pool ready")
        body = {"model_ref": MODEL, "prompt": PROMPT * 4, "max_tokens": asked, "temperature": 0.0}
        answer = client.post("/v1/tasks", json=body)
        if answer.status_code == 400:
            assert str(real.ctx) in answer.json()["message"]
            return
        assert answer.status_code == 202, answer.text
        events = read_events(client, answer.json()["sse_url"])
    last = events[-1]
    if last.event == "error":
        assert last.data["code"] == "INVALID_PARAMS" and "max_tokens" in last.data["message"]
        return
    assert last.event == "end"
    if last.data["stop_reason"] != "eos":  # the model may end by itself first
        assert last.data["stop_reason"] == "context_length", last.data
        assert last.data["tokens_out"] < asked


def test_a_killed_engine_gives_one_retriable_error_then_its_replica_comes_back(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    server = serve(make_server, real)
    with httpx.Client(base_url=server.base_url, timeout=300) as client:

        def ready() -> bool:
            return bool(client.get("/v1/pools/real/health").json()["ready"])

        for _ in range(3):
            posted, _ = mid_generation(client, real)
            real.server.kill()
            events = read_events(client, posted["sse_url"])
            if not finished_before(events):
                break
            # vLLM on 2 cores streams in bursts: the whole answer may lie in our socket's buffer by the
            # time the engine dies. That job proves nothing; another is tried with the engine back.
            real.server.start()
            wait_until(ready, 5, "the replica ready again")
        errors = [e for e in events if e.event == "error"]
        assert len(errors) == 1 and events[-1] is errors[0], (len(events), events[0], events[-1])
        assert errors[0].data["retriable"] is True, errors[0].data
        wait_until(lambda: not ready(), 5, "the replica unready")
        real.server.start()  # same port; returns once the engine answers its health check
        wait_until(ready, 5, "the replica ready within a few health intervals (0.5 s) of the engine")
        again = job(client, prompt=PROMPT, max_tokens=4)
        assert read_events(client, again["sse_url"])[-1].event == "end"


@pytest.mark.parametrize("real", ["vllm"], indirect=True)
def test_each_job_reaches_the_model_it_asked_for(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """vLLM serves one model under two names; the pool lists both and a third the engine does not
    serve. Each job's model is the one in its request to the engine; a job for the third reaches no
    engine and ends with one retriable POOL_UNREADY naming the model, while the replica stays ready."""
    with Proxy(int(real.url.rsplit(":", 1)[1])) as proxy:
        pool = real.pool(proxy.url, models=["tiny", "tiny-b", "ghost"])
        server = make_server(pools=[pool], health_interval_s=0.5)
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            wait_until(lambda: client.get("/v1/pools/real/health").json()["ready"], 15, "pool ready")
            for model in ("tiny-b", "tiny", "tiny-b"):
                end = read_events(
                    client, job(client, model_ref=model, prompt=PROMPT, max_tokens=4)["sse_url"]
                )[-1]
                assert end.event == "end", end.data
            assert proxy.models_asked() == ["tiny-b", "tiny", "tiny-b"]
            ghost = read_events(
                client, job(client, model_ref="ghost", prompt=PROMPT, max_tokens=4)["sse_url"]
            )
            assert [e.event for e in ghost] == ["started", "error"], ghost
            assert ghost[-1].data["code"] == "POOL_UNREADY" and ghost[-1].data["retriable"] is True
            assert "lists model 'ghost'" in ghost[-1].data["message"]
            assert proxy.models_asked() == ["tiny-b", "tiny", "tiny-b"]  # nothing reached the engine
            assert client.get("/v1/pools/real/health").json()["ready"]


@pytest.mark.parametrize("real", ["vllm"], indirect=True)
def test_a_vllm_pool_passes_on_the_jobs_class_and_id(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """With `priority_scheduling`, each request carries the job's class as vLLM's `priority` (batch 1,
    interactive 0), and every request carries `X-Request-Id: <job id>-<n>`; vLLM takes both."""
    with Proxy(int(real.url.rsplit(":", 1)[1])) as proxy:
        pool = real.pool(proxy.url, options={"priority_scheduling": True})
        server = make_server(pools=[pool], health_interval_s=0.5)
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            wait_until(lambda: client.get("/v1/pools/real/health").json()["ready"], 15, "pool ready")
            posted = job(client, prompt=PROMPT, max_tokens=4, priority="batch")
            assert read_events(client, posted["sse_url"])[-1].event == "end"
    sent = b"".join(proxy.sent)
    assert re.search(rb'"priority":\s*1', sent), sent[-400:]
    assert f"x-request-id: {posted['job_id']}-".encode() in sent.lower()


# The second turn of a function-calling loop: the assistant's call (content null) and the tool's result
TOOL_TURNS: list[Any] = [
    {"role": "user", "content": "What time is it in Tokyo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call-1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "JST"}'}}
    ]},
    {"role": "tool", "tool_call_id": "call-1", "content": "09:30"},
]  # fmt: skip


@contextlib.contextmanager
def sdk_through_proxy(
    make_server: Callable[..., LoopbackServer], real: Real
) -> Iterator[tuple[openai.OpenAI, Proxy]]:
    """The official SDK on an orchestratord whose pool reaches `real` through a recording proxy,
    once the pool is ready; the proxy's `sent` holds the bytes that reached the engine."""
    with Proxy(int(real.url.rsplit(":", 1)[1])) as proxy:
        server = make_server(pools=[real.pool(proxy.url)], health_interval_s=0.5)
        with httpx.Client(base_url=server.base_url, timeout=120) as client:
            wait_until(lambda: client.get("/v1/pools/real/health").json()["ready"], 15, "pool ready")
        yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0), proxy


def assert_the_tool_turns_reached_the_engine(proxy: Proxy) -> None:
    sent = b"".join(proxy.sent)
    assert re.search(rb'"tool_call_id":\s*"call-1"', sent) and re.search(rb'"content":\s*null', sent), sent[
        -600:
    ]


@pytest.mark.parametrize("real", ["vllm"], indirect=True)
def test_a_tool_loops_turns_reach_vllm_as_the_sdk_sent_them(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """The second turn of OpenAI's function-calling loop, sent with the official SDK: the assistant's
    call (content null) and the tool's result reach vLLM, which takes them and answers exactly as it
    answers the same turns sent to it directly."""
    greedy = {"temperature": 0.0, "seed": 7, "max_tokens": 6}
    direct = httpx.post(
        real.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": TOOL_TURNS, **greedy},
        timeout=120,
    )
    assert direct.status_code == 200, direct.text
    with sdk_through_proxy(make_server, real) as (sdk, proxy):
        answer = sdk.chat.completions.create(model=MODEL, messages=TOOL_TURNS, **greedy)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == direct.json()["choices"][0]["message"]["content"]
    assert_the_tool_turns_reached_the_engine(proxy)


@pytest.mark.parametrize("real", ["vllm"], indirect=True)
def test_a_function_loop_in_the_deprecated_form_reaches_vllm_as_tool_turns(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """The same turn in the form older clients send (`functions`, the assistant's `function_call`, a
    `function` turn with the result): vLLM, which takes no `functions`, gets the function as a tool and
    the turns as a tool call and its result, and answers as it answers those sent to it directly."""
    function = {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    }
    called = {"name": "get_time", "arguments": '{"zone": "JST"}'}
    legacy: list[Any] = [
        TOOL_TURNS[0],
        {"role": "assistant", "content": None, "function_call": called},
        {"role": "function", "name": "get_time", "content": "09:30"},
    ]
    turns = [TOOL_TURNS[0], {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_fn1", "type": "function", "function": called}]},
             {"role": "tool", "tool_call_id": "call_fn1", "content": "09:30"}]  # fmt: skip
    greedy = {"temperature": 0.0, "seed": 7, "max_tokens": 6}
    body = {"model": MODEL, "messages": turns, "tools": [{"type": "function", "function": function}],
            "tool_choice": "none", **greedy}  # fmt: skip
    direct = httpx.post(real.url + "/v1/chat/completions", json=body, timeout=120)
    assert direct.status_code == 200, direct.text
    with sdk_through_proxy(make_server, real) as (sdk, proxy):
        answer = sdk.chat.completions.create(
            model=MODEL, messages=legacy, functions=[function], function_call="none", **greedy
        )
    said = direct.json()
    assert answer.choices[0].message.content == said["choices"][0]["message"]["content"]
    assert answer.usage is not None and answer.usage.prompt_tokens == said["usage"]["prompt_tokens"]
    sent = b"".join(proxy.sent)
    assert re.search(rb'"tool_call_id":\s*"call_fn1"', sent) and b'"functions"' not in sent, sent[-600:]


@pytest.mark.parametrize("real", ["vllm"], indirect=True)
def test_a_responses_tool_loop_reaches_vllm_as_chat_turns(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """The same loop through the Responses API: a `function_call` item and its `function_call_output`
    reach vLLM as the assistant's call and the tool's result, with a function tool in chat shape, and
    vLLM answers as it answers those chat turns sent to it directly (`tool_choice: none`: the test's
    vLLM runs without a tool-call parser, which `auto` needs)."""
    tool = {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
    items: list[Any] = [
        {"role": "user", "content": "What time is it in Tokyo?"},
        {"type": "function_call", "call_id": "call-1", "name": "get_time", "arguments": '{"zone": "JST"}'},
        {"type": "function_call_output", "call_id": "call-1", "output": "09:30"},
    ]
    body = {"model": MODEL, "messages": TOOL_TURNS, "tools": [{"type": "function", "function": tool}],
            "tool_choice": "none", "temperature": 0.0, "max_tokens": 6}  # fmt: skip
    direct = httpx.post(real.url + "/v1/chat/completions", json=body, timeout=120)
    assert direct.status_code == 200, direct.text
    with sdk_through_proxy(make_server, real) as (sdk, proxy):
        answer = sdk.responses.create(
            model=MODEL, input=items, tools=[{"type": "function", **tool}],  # type: ignore[list-item]
            tool_choice="none", temperature=0.0, max_output_tokens=6,
        )  # fmt: skip
    said = direct.json()["choices"][0]["message"]
    assert answer.output_text == (said["content"] or ""), (answer.output, said)
    assert_the_tool_turns_reached_the_engine(proxy)
    assert re.search(rb'"function":\s*\{"name":\s*"get_time"', b"".join(proxy.sent)), b"".join(proxy.sent)[
        -600:
    ]


class Answer(BaseModel):
    answer: Literal["yes", "no"]
    n: int


def test_structured_output_follows_the_schema(make_server: Callable[..., LoopbackServer], real: Real) -> None:
    """A `response_format` with a JSON schema (the SDKs' `parse`, on Chat Completions and, as
    `text.format`, on the Responses API) reaches the engine, which samples under it (llama.cpp: a
    grammar made from the schema; vLLM: its structured-output backend): even this random model's
    answer parses as the schema says. Without it, the same model writes no such JSON. llama-cpp-python
    takes no `json_schema` type: its pool's `json_schema: json_object` option sends the schema in the
    `json_object` shape it samples under (docs/engines.md)."""
    ask = [{"role": "user", "content": "yes or no?"}]
    greedy: dict[str, Any] = {"temperature": 0.0, "seed": 7}
    with sdk_through_proxy(make_server, real) as (sdk, proxy):
        parsed = sdk.chat.completions.parse(
            model=MODEL,
            messages=ask,
            response_format=Answer,
            max_tokens=256,
            **greedy,  # type: ignore[arg-type]
        )
        response = sdk.responses.parse(
            model=MODEL, input="yes or no?", text_format=Answer, max_output_tokens=256, temperature=0.0
        )
        plain = sdk.chat.completions.create(model=MODEL, messages=ask, max_tokens=64, **greedy)  # type: ignore[arg-type]
    assert isinstance(parsed.choices[0].message.parsed, Answer), parsed.choices[0].message.content
    assert isinstance(response.output_parsed, Answer), response.output_text
    sent = b"".join(proxy.sent)  # the schema reached the engine, in the shape the pool's options say
    if real.options.get("json_schema") == "json_object":
        assert re.search(rb'"response_format":\s*\{"type":\s*"json_object",\s*"schema":', sent), sent[-600:]
    else:
        assert b'"json_schema"' in sent, sent[-600:]
    with pytest.raises(ValidationError):
        Answer.model_validate_json(plain.choices[0].message.content or "")


def test_a_prompt_is_scored_as_the_engine_scores_it(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """What evaluation harnesses send to score a prompt (lm-eval's loglikelihood: `echo`, `logprobs: 1`,
    `max_tokens: 1`, greedy): through orchestratord the SDK gets the engine's own answer, the prompt's
    tokens and their log probabilities (the first null) then the completion's, as the engine gives them
    asked directly. llama-server echoes no prompt: refused, naming `echo`."""
    ask: dict[str, Any] = {"model": MODEL, "prompt": "The river runs to the sea", "max_tokens": 1,
                           "logprobs": 1, "echo": True, "temperature": 0.0}  # fmt: skip
    with sdk_through_proxy(make_server, real) as (sdk, _):
        if real.name == "llama-server":
            with pytest.raises(openai.BadRequestError) as caught:
                sdk.completions.create(**ask)
            assert caught.value.body["param"] == "echo"  # type: ignore[index]
            return
        ours = sdk.completions.create(**ask).choices[0]
        streamed = [c.choices[0] for c in sdk.completions.create(**ask, stream=True) if c.choices]
    direct = httpx.post(f"{real.url}/v1/completions", json=ask, timeout=60).json()["choices"][0]
    assert ours.text == direct["text"] and ours.text.startswith(ask["prompt"])
    assert ours.logprobs is not None and ours.logprobs.tokens == direct["logprobs"]["tokens"]
    assert ours.logprobs.token_logprobs[0] is None and direct["logprobs"]["token_logprobs"][0] is None
    # the engine's own figures (its runs differ in the last decimals)
    assert ours.logprobs.token_logprobs[1:] == pytest.approx(
        direct["logprobs"]["token_logprobs"][1:], abs=1e-3
    )
    # where each token begins, as the engine counts it, whole and streamed
    assert ours.logprobs.text_offset == direct["logprobs"]["text_offset"]
    offsets = [o for c in streamed if c.logprobs for o in c.logprobs.text_offset or ()]
    assert offsets == ours.logprobs.text_offset
    assert streamed[0].text == ask["prompt"] and streamed[0].logprobs is not None
    assert "".join(c.text for c in streamed) == ours.text


def test_a_suffix_fills_the_middle_as_the_engine_fills_it(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """Completions' `suffix` (code completion's fill-in-the-middle), greedy, through the SDK: the answer
    is the engine's own to the same request asked directly (llama-cpp-python takes OpenAI's `suffix`),
    whole and streamed; where the engine cannot, the client reads why: vLLM refuses every suffix (a 400
    naming `suffix`, vLLM not asked), and this model has no FIM tokens for llama-server's `/infill` (a
    400 in llama-server's words; test_llama_server.py fills a gap with a model that has them)."""
    ask: dict[str, Any] = {"model": MODEL, "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))",
                           "max_tokens": 12, "temperature": 0.0, "seed": 7}  # fmt: skip
    with sdk_through_proxy(make_server, real) as (sdk, proxy):
        if real.name != "llama-cpp-python":
            with pytest.raises(openai.BadRequestError) as caught:
                sdk.completions.create(**ask)
            error = caught.value.body
            assert isinstance(error, dict), error
            if real.name == "vllm":
                assert error["param"] == "suffix" and b"/v1/completions" not in b"".join(proxy.sent)
            else:
                assert "Infill is not supported by this model" in error["message"], error
            return
        ours = sdk.completions.create(**ask)
        streamed = [c.choices[0].text for c in sdk.completions.create(**ask, stream=True) if c.choices]
    direct = httpx.post(f"{real.url}/v1/completions", json=ask, timeout=60).json()
    plain = httpx.post(f"{real.url}/v1/completions", json={**ask, "suffix": None}, timeout=60).json()
    assert ours.choices[0].text == direct["choices"][0]["text"] == "".join(streamed)
    assert ours.choices[0].text != plain["choices"][0]["text"]  # the suffix reached the engine
    # llama-cpp-python streams no usage: the prompt's count is orchestratord's estimate, and says so
    assert ours.usage is not None and ours.usage.completion_tokens == direct["usage"]["completion_tokens"]


def engine_tokens(real: Real, text: str) -> list[int]:
    """`text` as the engine's own tokenizer reads it, from its tokenize route."""
    if real.name == "llama-server":
        said = httpx.post(f"{real.url}/tokenize", json={"content": text}, timeout=30).json()
    else:
        said = httpx.post(f"{real.url}/tokenize", json={"model": MODEL, "prompt": text}, timeout=30).json()
    tokens = said["tokens"]
    assert isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens), said
    return tokens


def test_tokenize_and_detokenize_are_the_engines_own(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """`/tokenize` and `/detokenize` through orchestratord give what the engine's own routes give, with
    and without the special tokens; by default a prompt's count, and a chat's, are the prompt tokens
    the engine reads when it generates from them. llama-cpp-python's server (an `openai` pool) has no
    such route: a 400 naming `model`, the engine not asked."""
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where does it run?"}]
    text = "The river runs to the sea"
    asked = [{"model": MODEL, "prompt": text, "add_special_tokens": special} for special in (True, False)]
    with sdk_through_proxy(make_server, real) as (sdk, proxy):
        base = str(sdk.base_url).removesuffix("/v1/")
        with httpx.Client(base_url=base, timeout=60) as http:
            ours = [http.post("/tokenize", json=body) for body in asked]
            if real.name == "llama-cpp-python":
                refused = ours[0].json()["error"]
                assert ours[0].status_code == 400 and refused["param"] == "model", refused
                assert b"tokenize" not in b"".join(proxy.sent)
                return
            ids = ours[0].json()["tokens"]
            back = http.post("/detokenize", json={"model": MODEL, "tokens": ids})
            forms: list[dict[str, Any]] = [{"prompt": text}, {"messages": turns}]
            counts = [http.post("/tokenize", json={"model": MODEL, **form}).json()["count"] for form in forms]
    if real.name == "llama-server":
        native = [{"content": text, "add_special": body["add_special_tokens"]} for body in asked]
        theirs = [httpx.post(f"{real.url}/tokenize", json=body, timeout=30) for body in native]
        said = httpx.post(f"{real.url}/detokenize", json={"tokens": ids}, timeout=30).json()["content"]
    else:
        theirs = [httpx.post(f"{real.url}/tokenize", json=body, timeout=30) for body in asked]
        detokenized = httpx.post(f"{real.url}/detokenize", json={"model": MODEL, "tokens": ids}, timeout=30)
        said = detokenized.json()["prompt"]
    assert [a.status_code for a in ours] == [200, 200], [a.text for a in ours]
    assert [a.json()["tokens"] for a in ours] == [t.json()["tokens"] for t in theirs]
    assert ours[0].json()["count"] == len(ids) and len(ids) > 3
    assert back.status_code == 200 and back.json()["prompt"] == said and text in said
    once = {"model": MODEL, "max_tokens": 1, "temperature": 0.0}
    read = [
        httpx.post(f"{real.url}/v1/{route}", json={**once, **form}, timeout=60).json()["usage"][
            "prompt_tokens"
        ]
        for route, form in zip(("completions", "chat/completions"), forms, strict=True)
    ]
    assert counts == read and counts[1] > counts[0]


def test_a_prompt_of_token_ids_is_answered_as_the_engine_answers_it(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """A prompt sent as the engine's token ids (lm-eval's default), greedy, through the SDK: the engine's
    own answer to the same ids asked directly, whole and streamed; and on vLLM, lm-eval's scoring
    request (`prompt: [[ids]]`, `echo`, `logprobs: 1`, `max_tokens: 1`): the prompt's decoded text, its
    tokens and their figures as vLLM gives them. llama-cpp-python's server takes text prompts only, and
    answers its own validation error as an HTTP 500: a 502 quoting it (the engine's fault, in its words)."""
    ask: dict[str, Any] = {"model": MODEL, "max_tokens": 12, "temperature": 0.0, "seed": 7}
    if real.name == "llama-cpp-python":
        refused = pytest.raises(openai.InternalServerError, match="Input should be a valid string")
        with sdk_through_proxy(make_server, real) as (sdk, _), refused as caught:
            sdk.completions.create(**ask, prompt=[1, 300, 301])
        assert caught.value.status_code == 502
        return
    ids = engine_tokens(real, "The river runs to the sea")
    if real.name == "llama-server":
        native = {"prompt": ids, "n_predict": 12, "temperature": 0.0, "seed": 7}
        direct = httpx.post(f"{real.url}/completion", json=native, timeout=60).json()["content"]
    else:
        said = httpx.post(f"{real.url}/v1/completions", json={**ask, "prompt": ids}, timeout=60).json()
        direct = said["choices"][0]["text"]
    score: dict[str, Any] = {"model": MODEL, "prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True,
                             "temperature": 0.0}  # fmt: skip
    with sdk_through_proxy(make_server, real) as (sdk, _):
        ours = sdk.completions.create(**ask, prompt=ids).choices[0].text
        chunks = sdk.completions.create(**ask, prompt=ids, stream=True)
        streamed = "".join(c.choices[0].text for c in chunks if c.choices)
        if real.name != "vllm":
            assert ours == direct == streamed and len(direct) > 0
            return
        scored = sdk.completions.create(**score).choices[0]
        chunks = sdk.completions.create(**score, stream=True)
        pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]  # (not the finish)
    assert ours == direct == streamed and len(direct) > 0
    theirs = httpx.post(f"{real.url}/v1/completions", json=score, timeout=60).json()["choices"][0]
    assert scored.text == theirs["text"] and scored.logprobs is not None
    # streamed: the prompt's decoded text, then the one completion token's
    last = theirs["logprobs"]["tokens"][-1]
    assert pieces == [theirs["text"][: -len(last)], last]
    assert scored.logprobs.tokens == theirs["logprobs"]["tokens"]
    figures = scored.logprobs.token_logprobs or []
    assert figures[0] is None
    assert figures[1:] == pytest.approx(theirs["logprobs"]["token_logprobs"][1:], abs=1e-3)


def test_top_k_min_p_and_the_repetition_penalty_reach_the_engine(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """vLLM's sampling extensions through the SDK's `extra_body`, greedy: the answer is the engine's own
    to the same request asked directly (llama-server's and llama-cpp-python's `repeat_penalty` for
    vLLM's `repetition_penalty`: the latter's pool says so, `sampling_extensions: repeat_penalty`), and
    not its answer without them (the penalty changes what the model repeats; on llama-cpp-python,
    `top_k: 1` makes sampling greedy)."""
    extended = {"top_k": 5, "min_p": 0.01, "repetition_penalty": 2.0}
    ask: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": 24, "temperature": 0.0, "seed": 7}
    with sdk_through_proxy(make_server, real) as (sdk, _):
        ours = sdk.completions.create(**ask, extra_body=extended).choices[0].text
    if real.name == "llama-server":
        native = {"prompt": PROMPT, "n_predict": 24, "temperature": 0.0, "seed": 7, "top_k": 5, "min_p": 0.01}
        direct = httpx.post(f"{real.url}/completion", json={**native, "repeat_penalty": 2.0}, timeout=60)
        plain = httpx.post(f"{real.url}/completion", json=native, timeout=60)
        theirs, without = direct.json()["content"], plain.json()["content"]
    else:
        penalty = "repeat_penalty" if real.name == "llama-cpp-python" else "repetition_penalty"
        named = {"top_k": 5, "min_p": 0.01, penalty: 2.0}
        direct = httpx.post(f"{real.url}/v1/completions", json={**ask, **named}, timeout=60)
        plain = httpx.post(f"{real.url}/v1/completions", json=ask, timeout=60)
        theirs, without = direct.json()["choices"][0]["text"], plain.json()["choices"][0]["text"]
    assert ours == theirs and len(ours) > 0
    if real.name != "llama-cpp-python":
        assert ours != without, "the penalty changed nothing: the test would not see it dropped"
        return
    # llama-cpp-python's greedy answer repeats nothing here (and it penalizes repeats by default): what
    # shows the fields reached it is `top_k: 1`, which makes sampling at temperature 1 greedy
    sampled = {**ask, "temperature": 1.0}
    with sdk_through_proxy(make_server, real) as (sdk, _):
        one = sdk.completions.create(**sampled, extra_body={"top_k": 1}).choices[0].text
    free = httpx.post(f"{real.url}/v1/completions", json=sampled, timeout=60).json()["choices"][0]["text"]
    assert one == without != free, (
        "sampling at temperature 1 was greedy: the test would not see top_k dropped"
    )


def test_a_socket_carries_an_unstored_conversation_on_as_the_engine_answers_it(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """The Responses API's WebSocket mode with the official SDK (`responses.connect()`), as agents use
    it: `store: false`, and the second turn sends only what is new with `previous_response_id`. The
    engine answers it as it answers the whole conversation sent to it directly."""
    sampling = {"temperature": 0.0}  # (the Responses API has no seed)
    with sdk_through_proxy(make_server, real) as (sdk, _), sdk.responses.connect() as conn:
        conn.response.create(model=MODEL, input=PROMPT, store=False, max_output_tokens=8, **sampling)  # type: ignore[arg-type]
        first = socket_answer(conn)
        conn.response.create(model=MODEL, input="And then?", store=False, max_output_tokens=8,
                             previous_response_id=first.id, **sampling)  # type: ignore[arg-type]  # fmt: skip
        second = socket_answer(conn)
    turns = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first.output_text},
             {"role": "user", "content": "And then?"}]  # fmt: skip
    body = {"model": MODEL, "messages": turns, "max_tokens": 8, **sampling}
    direct = httpx.post(real.url + "/v1/chat/completions", json=body, timeout=120)
    assert direct.status_code == 200, direct.text
    assert second.output_text == (direct.json()["choices"][0]["message"]["content"] or ""), second.output


def socket_answer(conn: Any) -> Any:
    """The response a socket's turn ends with (its events read to the last)."""
    for event in conn:
        assert event.type != "error", event
        if event.type in ("response.completed", "response.incomplete", "response.failed"):
            assert event.type != "response.failed", event
            return event.response
    raise AssertionError("the socket closed before the response ended")


@pytest.mark.parametrize("real", ["vllm"], indirect=True)
def test_a_generic_pool_whose_server_has_vllms_routes_tokenizes_with_them(
    make_server: Callable[..., LoopbackServer], real: Real
) -> None:
    """vLLM behind a generic `openai` pool that says `options: {tokenizer: vllm}` (as a pool in front of
    another orchestratord does): `/tokenize` and `/detokenize` ask vLLM's own routes, and answer what
    they answer, a chat's turns too."""
    server = make_server(
        pools=[real.pool(engine="openai", options={"tokenizer": "vllm"})], health_interval_s=0.5
    )
    turns = [{"role": "user", "content": "Where does the river run?"}]
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        wait_until(lambda: http.get("/v1/pools/real/health").json()["ready"], 15, "pool ready")
        for form in ({"prompt": PROMPT}, {"messages": turns}):
            ours = http.post("/tokenize", json={"model": MODEL, **form})
            theirs = httpx.post(f"{real.url}/tokenize", json={"model": MODEL, **form}, timeout=30)
            assert ours.status_code == 200, ours.text
            assert (
                ours.json()["tokens"] == theirs.json()["tokens"]
                and ours.json()["count"] == theirs.json()["count"]
            )
        ids = ours.json()["tokens"]
        back = http.post("/detokenize", json={"model": MODEL, "tokens": ids})
    said = httpx.post(f"{real.url}/detokenize", json={"model": MODEL, "tokens": ids}, timeout=30).json()
    assert back.status_code == 200 and back.json()["prompt"] == said["prompt"]
