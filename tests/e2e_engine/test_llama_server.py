"""orchestratord → the `llamacpp` adapter → llama.cpp's own `llama-server` (built from source by
ci/llama_server.sh, run on a random-weight model this test writes): what llama-server reports about
itself (slots, context per slot) wins over the configuration. `LlamaServer` is also what the
conformance suite (test_real_engines.py) runs: cancel, kill, context limits and the relay are there."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import pytest

from tests.api.helpers import wait_for
from tests.e2e_engine.test_llama_cpp_python import free_port
from tests.e2e_engine.tiny_model import write_tiny_llama
from tests.fakes.servers import LoopbackServer
from tests.fakes.sse import read_events
from tests.openai.pools import sdk

pytestmark = pytest.mark.engine
BUILD = "bash ci/llama_server.sh (ci/setup.sh test --with-engine runs it)"
SLOTS = 2


def binary() -> str:
    path = os.environ.get("ORCH_LLAMA_SERVER", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no llama-server at ORCH_LLAMA_SERVER={path!r}; build it: {BUILD}", pytrace=False)
    return path


@dataclass
class LlamaServer:
    """A native llama-server with two slots of 4,096 tokens on a model slow enough (about 100 tokens/s
    on one thread) that a cancel or a kill lands mid-generation."""

    workdir: Path
    port: int = field(default_factory=free_port)
    model: Path = field(default_factory=Path)
    extra: tuple[str, ...] = ()  # more of llama-server's options
    _process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        if not self.model.is_file():
            self.model = write_tiny_llama(
                self.workdir / "slow-llama.gguf", n_ctx=4096, n_embd=512, n_layer=8, n_ff=2048, n_head=8
            )
        self._log = (self.workdir / "llama-server.log").open("ab")
        command = [binary(), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["-c", str(4096 * SLOTS), "--parallel", str(SLOTS), "--metrics", "--threads", "1"]
        command += self.extra
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, timeout=60)
        return self

    def _healthy(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            pytest.fail(f"llama-server exited: {self.log()}", pytrace=False)
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._log is not None:
            self._log.close()

    def log(self) -> str:
        path = self.workdir / "llama-server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=10).json()

    def tokens_predicted(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("llamacpp:tokens_predicted_total")]
        return float(lines[0].split()[-1])


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama-server"))
    try:
        yield server.start()
    finally:
        server.stop()


def templated(workdir: Path, template: str, *more: str) -> LlamaServer:
    """A llama-server on a tiny model of 4,096 tokens' context, rendering chats with `template` (a
    Jinja chat template); `more`, more of its options."""
    path = workdir / "chat.jinja"
    path.write_text(template)
    model = write_tiny_llama(workdir / "tiny.gguf", n_ctx=4096)
    return LlamaServer(
        workdir, model=model, extra=("--jinja", "--chat-template-file", str(path), *more)
    ).start()


def start(make_server: Callable[..., LoopbackServer], engine: LlamaServer) -> LoopbackServer:
    pool = {
        "id": "llama", "engine": "llamacpp", "models": ["tiny"], "replicas": [{"id": "a", "url": engine.url}],
        "slots": 4, "ctx_max": 8192, "max_tokens_out": 8000, "read_timeout_s": 30,
    }  # fmt: skip
    return make_server(pools=[pool], health_interval_s=0.5)


def test_the_engines_text_and_counts_come_back_unchanged(
    make_server: Callable[..., LoopbackServer], engine: LlamaServer
) -> None:
    server = start(make_server, engine)
    sampling = {"temperature": 0.0, "seed": 7}
    direct = httpx.post(
        f"{engine.url}/completion", json={"prompt": "The river", "n_predict": 24, **sampling}, timeout=60
    ).json()
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        body = {"model_ref": "tiny", "prompt": "The river", "max_tokens": 24, **sampling}
        job = client.post("/v1/tasks", json=body).json()
        events = read_events(client, job["sse_url"])
        end = events[-1].data
        assert events[-1].event == "end", end
        assert "".join(e.data["t"] for e in events if e.event == "token") == direct["content"]
        assert end["tokens_out"] == direct["tokens_predicted"] == 24 and "tokens_out_estimated" not in end
        assert end["tokens_in"] == direct["tokens_evaluated"] and "tokens_in_estimated" not in end
        # the engine's slot count (2) wins over the configured 4, and its context per slot (4,096)
        # over the configured 8,192
        pool = client.get("/v1/pools").json()["pools"][0]
        assert pool["replicas"][0]["slots_total"] == SLOTS == engine.get("/props")["total_slots"]
        n_ctx = engine.get("/props")["default_generation_settings"]["n_ctx"]
        assert (pool["ctx_max"], pool["ctx_max_source"]) == (n_ctx, "engine") == (4096, "engine")


# A Qwen3-like chat template: the assistant's turn opens with a closed, empty thinking block unless the
# request's `enable_thinking` is true (as Qwen3's template turns thinking off)
THINKING_TEMPLATE = (
    "{%- for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if not (enable_thinking is defined and enable_thinking) %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def test_chat_template_kwargs_reach_llama_servers_chat_template(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """A chat job's `chat_template_kwargs` reach llama-server's template: with `enable_thinking`, the
    prompt lacks the closed thinking block, whose 19 bytes are 19 tokens of the tiny byte-level vocabulary."""
    engine = templated(tmp_path, THINKING_TEMPLATE)
    try:
        client = sdk(start(make_server, engine))
        ask = [{"role": "user", "content": "hi"}]
        closed = client.chat.completions.create(model="tiny", messages=ask, max_tokens=2)  # type: ignore[arg-type]
        thinking = client.chat.completions.create(
            model="tiny",
            messages=ask,
            max_tokens=2,
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},  # type: ignore[arg-type]
        )
    finally:
        engine.stop()
    assert closed.usage is not None and thinking.usage is not None
    assert closed.usage.prompt_tokens - thinking.usage.prompt_tokens == len("<think>\n\n</think>\n\n")


# A DeepSeek-R1-like chat template: the generation prompt ends with an open thinking block. llama-server's
# template analysis (common/chat-diff-analyzer.cpp) finds `<think>` and `</think>` around an assistant
# turn's `reasoning_content`, and its parser reads the generation prompt and then the output, so all the
# model writes up to `</think>` is reasoning. A random model never writes `</think>`: `--reasoning-budget`
# has llama-server force it after BUDGET tokens of thought, and what follows is the answer. The space before
# `<think>` is the tiny vocabulary's (bytes, no `<think>` token): it prefixes one to any text tokenized
# alone, as the budget's tag is, so the prompt must hold the same tokens for the budget to start counting.
FORCED_THINKING_TEMPLATE = (
    "{%- for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' and m['reasoning_content'] is defined and m['reasoning_content'] %}"
    "{{ ' <think>\\n' + m['reasoning_content'] + '\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{{ m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n <think>\\n' }}{%- endif %}"
)
BUDGET = 8


def said_directly(engine: LlamaServer, body: dict[str, Any]) -> list[tuple[str, str]]:
    """What llama-server itself streams for `body`: ("reasoning", …) and ("token", …) deltas in order."""
    said: list[tuple[str, str]] = []
    url, body = f"{engine.url}/v1/chat/completions", {**body, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue  # blank lines between events, and `data: [DONE]`
            for choice in orjson.loads(line[len("data: ") :])["choices"]:
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content") is not None:
                    said.append(("reasoning", delta["reasoning_content"]))
                if delta.get("content") is not None:
                    said.append(("token", delta["content"]))
    return said


def test_a_thinking_models_reasoning_comes_apart_from_its_answer_on_every_surface(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """llama-server's own reasoning parser splits the model's output into `reasoning_content` and
    `content`; orchestratord relays the split as llama-server made it: `reasoning` events before the
    `token` events in our stream (and none of it in the job's text), chat's `reasoning` and
    `reasoning_content`, streamed and whole, and the Responses API's `reasoning` item before the message."""
    engine = templated(tmp_path, FORCED_THINKING_TEMPLATE, "--reasoning-budget", str(BUDGET))
    ask = [{"role": "user", "content": "hi"}]
    sampling = {"temperature": 0.0, "seed": 7}
    try:
        direct = said_directly(engine, {"messages": ask, "max_tokens": 32, **sampling})
        server = start(make_server, engine)
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            body = {"model_ref": "tiny", "messages": ask, "max_tokens": 32, **sampling}
            job = http.post("/v1/tasks", json=body).json()
            events = read_events(http, job["sse_url"])
            status = http.get(job["status_url"]).json()
        client = sdk(server)
        chat: Any = {"model": "tiny", "messages": ask, "max_tokens": 32, "temperature": 0.0, "seed": 7}
        chunks = list(client.chat.completions.create(**chat, stream=True))
        whole = client.chat.completions.create(**chat)
        response = client.responses.create(model="tiny", input="hi", max_output_tokens=32, temperature=0.0)
    finally:
        engine.stop()
    thought = "".join(t for kind, t in direct if kind == "reasoning")
    answer = "".join(t for kind, t in direct if kind == "token")
    # llama-server did split: BUDGET deltas of thought (the budget counts the prompt's newline after
    # `<think>`, and the space of the forced ` </think>` is thought too), then the answer
    assert [kind for kind, _ in direct] == ["reasoning"] * BUDGET + ["token"] * (len(direct) - BUDGET), direct
    assert thought and answer and thought not in answer
    # (1) our stream: the engine's deltas, in its order; the job's text is the answer alone
    assert events[-1].event == "end", events[-1].data
    assert [(e.event, e.data["t"]) for e in events if e.event in ("reasoning", "token")] == direct
    assert status["text"] == answer
    # (2) chat, streamed and whole: the thought under both names, apart from the content
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thoughts = [d.model_extra for d in deltas if d.model_extra and "reasoning" in d.model_extra]
    assert [t["reasoning"] for t in thoughts] == [t for kind, t in direct if kind == "reasoning"]
    assert all(t["reasoning_content"] == t["reasoning"] for t in thoughts)
    assert "".join(d.content or "" for d in deltas) == answer
    message = whole.choices[0].message
    assert message.content == answer
    assert message.model_extra == {"reasoning": thought, "reasoning_content": thought}
    # (3) the Responses API: a reasoning item, then the message
    reasoning, said = response.output
    assert reasoning.type == "reasoning" and [part.text for part in reasoning.content or []] == [thought]
    assert said.type == "message" and response.output_text == answer


# A chat template whose tool calls begin with one backspace (`\x08`) and then the calls as JSON objects,
# `{"name": ..., "arguments": ...}`, joined by ", ". llama-server's template analysis
# (common/chat-diff-analyzer.cpp) renders it with and without a call, finds that marker and the JSON's
# field names, and builds a grammar for `tool_choice: required`: any text, the marker, then calls that
# follow each tool's schema. The random model writes `\x08` first on any prompt (its likeliest byte), so
# it calls at once; a one-value `enum` leaves the arguments nothing but whitespace to choose, and the
# grammar's end makes it stop.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['role'] == 'assistant' and m['tool_calls'] is defined and m['tool_calls'] %}"
    "{{ '\x08' }}"
    "{%- for tc in m['tool_calls'] %}{% if not loop.first %}{{ ', ' }}{% endif %}"
    "{{ '{\"name\": \"' + tc['function']['name'] + '\", \"arguments\": '"
    " + (tc['function']['arguments'] | tojson) + '}' }}"
    "{%- endfor %}"
    "{%- else %}{{ m['content'] }}{%- endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
WEATHER = {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                   "required": ["city"]},
}  # fmt: skip


def called_directly(engine: LlamaServer, body: dict[str, Any]) -> tuple[list[tuple[str, str]], str | None]:
    """What llama-server itself streams for `body`: its `delta.tool_calls` fragments as (name or "",
    arguments) in order, and its finish reason."""
    fragments: list[tuple[str, str]] = []
    finish = None
    url, body = f"{engine.url}/v1/chat/completions", {**body, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", url, json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in orjson.loads(line[len("data: ") :])["choices"]:
                for call in (choice.get("delta") or {}).get("tool_calls") or ():
                    function = call.get("function") or {}
                    fragments.append((function.get("name") or "", function.get("arguments") or ""))
                finish = choice.get("finish_reason") or finish
    return fragments, finish


def test_a_models_tool_call_comes_back_as_llama_server_parsed_it(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """`tools` and `tool_choice` reach llama-server's chat route; the call its parser finds in the
    model's output comes back through every surface as llama-server streamed it (its name, its
    arguments fragment by fragment, `finish_reason: tool_calls`), and the tool loop's next turn (the
    assistant's call and the tool's result) reaches its chat template as the SDK sent it."""
    engine = templated(tmp_path, TOOL_TEMPLATE)
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    tools: list[Any] = [{"type": "function", "function": WEATHER}]
    # `parallel_tool_calls: false` reaches llama-server, whose grammar then allows one call (by default
    # it takes as many as the template can render, and the model makes several)
    asked: dict[str, Any] = {"tools": tools, "tool_choice": "required", "parallel_tool_calls": False,
                             "temperature": 0.0, "seed": 7, "max_tokens": 400}  # fmt: skip
    try:
        direct, finish = called_directly(engine, {"messages": ask, **asked})
        client = sdk(start(make_server, engine))
        chunks = list(client.chat.completions.create(model="tiny", messages=ask, stream=True, **asked))
        whole = client.chat.completions.create(model="tiny", messages=ask, **asked)
        response = client.responses.create(
            model="tiny", input="What is the weather in Paris?", tools=[{"type": "function", **WEATHER}],
            tool_choice="required", parallel_tool_calls=False, temperature=0.0, max_output_tokens=400,
        )  # fmt: skip
        (call,) = whole.choices[0].message.tool_calls or []
        loop = [*ask, whole.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]  # fmt: skip
        later = {"temperature": 0.0, "seed": 7, "max_tokens": 8, "tools": tools, "tool_choice": "none"}
        said = httpx.post(f"{engine.url}/v1/chat/completions", json={"messages": loop, **later}, timeout=60)
        answer = client.chat.completions.create(model="tiny", messages=loop, **later)
    finally:
        engine.stop()
    arguments = "".join(piece for _, piece in direct)
    # llama-server did parse a call: one name, arguments in fragments that follow the schema
    assert finish == "tool_calls" and direct[0][0] == "get_weather" and len(direct) > 2, direct
    assert orjson.loads(arguments) == {"city": "Paris"}
    # (1) chat, streamed: the same fragments in the same order, under one id; the same finish
    ours = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [((tc.function.name or "") if tc.function else "", (tc.function.arguments or "") if tc.function
             else "") for tc in ours] == direct  # fmt: skip
    assert ours[0].id and {tc.index for tc in ours} == {0}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    # (2) chat, whole: the call joined, no text
    assert whole.choices[0].finish_reason == "tool_calls" and not whole.choices[0].message.content
    assert (call.function.name, call.function.arguments) == ("get_weather", arguments)
    # (3) the Responses API: a function_call item
    (item,) = response.output
    assert item.type == "function_call" and (item.name, item.arguments) == ("get_weather", arguments)
    # (4) the loop's next turn: llama-server rendered the same prompt from our request as from its own
    assert said.status_code == 200, said.text
    assert answer.usage is not None and answer.usage.prompt_tokens == said.json()["usage"]["prompt_tokens"]
    assert answer.choices[0].message.content == said.json()["choices"][0]["message"]["content"]


def test_functions_in_the_deprecated_form_are_llama_servers_tools(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """`functions` with `function_call` naming one (what older clients send): llama-server, which reads
    a tool choice only as a word, is asked for a `required` call of that function alone, and the call it
    makes comes back as `function_call`, whole and streamed, as llama-server parsed it; the loop's next
    turn (the call and a `function` turn with its result) reaches the chat template as the same tool
    turns sent directly."""
    engine = templated(tmp_path, TOOL_TEMPLATE)
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    other = {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}
    greedy: dict[str, Any] = {"temperature": 0.0, "seed": 7, "max_tokens": 400}
    try:
        direct, finish = called_directly(engine, {
            "messages": ask, "tools": [{"type": "function", "function": WEATHER}], "tool_choice": "required",
            "parallel_tool_calls": False, **greedy})  # fmt: skip
        client = sdk(start(make_server, engine))
        asked: dict[str, Any] = {
            "functions": [other, WEATHER],
            "function_call": {"name": "get_weather"},
            **greedy,
        }
        whole = client.chat.completions.create(model="tiny", messages=ask, **asked)
        chunks = list(client.chat.completions.create(model="tiny", messages=ask, stream=True, **asked))
        loop = [*ask, whole.choices[0].message.model_dump(exclude_none=True),
                {"role": "function", "name": "get_weather", "content": "sunny, 21 C"}]  # fmt: skip
        later = {"temperature": 0.0, "seed": 7, "max_tokens": 8}
        answer = client.chat.completions.create(
            model="tiny", messages=loop, functions=[other, WEATHER], function_call="none", **later
        )
        call = whole.choices[0].message.function_call
        assert call is not None, whole
        turns = [*ask, {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_fn1", "type": "function", "function": call.model_dump()}]},
                 {"role": "tool", "tool_call_id": "call_fn1", "content": "sunny, 21 C"}]  # fmt: skip
        tools = [{"type": "function", "function": f} for f in (other, WEATHER)]
        body = {"messages": turns, "tools": tools, "tool_choice": "none", **later}
        said = httpx.post(f"{engine.url}/v1/chat/completions", json=body, timeout=60)
    finally:
        engine.stop()
    arguments = "".join(piece for _, piece in direct)
    assert finish == "tool_calls" and direct[0][0] == "get_weather", direct
    # whole: llama-server's call, in the deprecated form
    assert whole.choices[0].finish_reason == "function_call" and not whole.choices[0].message.tool_calls
    assert (call.name, call.arguments) == ("get_weather", arguments)
    # streamed: the same fragments, the name with the first
    pieces = [
        c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call
    ]
    assert [(p.name or "", p.arguments or "") for p in pieces] == direct
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "function_call"
    ]
    # the next turn: the prompt llama-server rendered from the same tool turns sent directly
    assert said.status_code == 200, said.text
    assert answer.usage is not None and answer.usage.prompt_tokens == said.json()["usage"]["prompt_tokens"]
    assert answer.choices[0].message.content == said.json()["choices"][0]["message"]["content"]


def direct_logprobs(engine: LlamaServer, path: str, body: dict[str, Any]) -> list[Entry]:
    """llama-server's own streamed log probabilities for `body`: (token, logprob, alternatives)."""
    entries: list[Entry] = []
    body = {**body, "temperature": 0.0, "seed": 7, "stream": True}
    with httpx.Client(timeout=60) as http, http.stream("POST", engine.url + path, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[len("data: ") :])["choices"]:
                    for entry in (choice.get("logprobs") or {}).get("content") or ():
                        tops = [top["token"] for top in entry["top_logprobs"]]
                        entries.append((entry["token"], entry["logprob"], tops))
    return entries


Entry = tuple[str, float, list[str]]


def close(entries: list[Entry]) -> list[tuple[str, Any, list[str]]]:
    return [(token, pytest.approx(score, abs=0.01), tops) for token, score, tops in entries]


def test_log_probabilities_and_a_logit_bias_reach_llama_server(
    make_server: Callable[..., LoopbackServer], engine: LlamaServer
) -> None:
    """Log probabilities from llama-server, for prompts (through its `/v1/completions`) and messages:
    what it reported, token by token, with as many alternatives as asked; none asked is the sampled
    token's own, which llama-server gives only when asked for one. A `logit_bias` reaches it too: a
    token biased +100 is all a greedy answer holds. (llama-server's figures for one prompt differ in
    the fourth decimal from run to run, as its batches and cache differ: compared to 0.01.)"""
    hi: list[Any] = [{"role": "user", "content": "hi"}]
    prompt = {"prompt": "The river", "max_tokens": 4}
    direct = direct_logprobs(engine, "/v1/completions", {**prompt, "logprobs": 3})
    chat = direct_logprobs(
        engine, "/v1/chat/completions", {"messages": hi, "max_tokens": 4, "logprobs": True, "top_logprobs": 2}
    )
    assert len(direct) == len(chat) == 4 and all(len(tops) == 3 for _, _, tops in direct), direct
    client = sdk(start(make_server, engine))
    greedy: dict[str, Any] = {"model": "tiny", "temperature": 0.0, "seed": 7}
    lp = client.completions.create(**prompt, logprobs=3, **greedy).choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    ours = list(zip(lp.tokens, lp.token_logprobs, [list(t) for t in lp.top_logprobs], strict=True))
    assert ours == close(direct)
    lp = client.completions.create(**prompt, logprobs=0, **greedy).choices[0].logprobs
    assert lp is not None and lp.token_logprobs == pytest.approx([score for _, score, _ in direct], abs=0.01)
    assert lp.top_logprobs == [{}] * 4  # the sampled token's own only
    chunks = client.chat.completions.create(
        messages=hi, max_tokens=4, logprobs=True, top_logprobs=2, stream=True, **greedy
    )
    given = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    streamed = [e for logprobs in given for e in logprobs.content or ()]
    assert [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in streamed] == close(chat)
    a = str(3 + ord("A"))  # the byte tokens follow the three control tokens
    biased = client.completions.create(model="tiny", prompt="The river", max_tokens=6, logit_bias={a: 100})
    assert biased.choices[0].text == "A" * 6
    # a stop string ends the job as one, log probabilities or not (llama-server's native stop_type)
    native = {"prompt": "The river", "n_predict": 8, "temperature": 0.0, "seed": 7}
    text = httpx.post(f"{engine.url}/completion", json=native, timeout=60).json()["content"]
    stop = text[3:5]
    stopped = httpx.post(f"{engine.url}/completion", json={**native, "stop": [stop]}, timeout=60).json()
    raw = client.completions.with_raw_response.create(
        prompt="The river", max_tokens=8, stop=[stop], logprobs=1, **greedy
    )
    with httpx.Client(base_url=str(client.base_url).removesuffix("/v1/"), timeout=30) as http:
        events = read_events(http, f"/v1/tasks/{raw.headers['x-job-id']}/stream")
    assert stopped["stop_type"] == "word" and raw.parse().choices[0].text == stopped["content"]
    assert events[-1].event == "end" and events[-1].data["stop_reason"] == "stop_sequence"


def test_embeddings_come_back_as_llama_server_computed_them(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """`POST /v1/embeddings` on a pool of a llama-server started with `--embeddings` (mean pooling):
    every input's vector, in order, as llama-server computes it (to 32-bit floats, as the job's log
    keeps it), and its count of the tokens read; the SDK's default base64 and floats alike."""
    model = write_tiny_llama(tmp_path / "tiny.gguf", n_ctx=4096)
    engine = LlamaServer(tmp_path, model=model, extra=("--embeddings", "--pooling", "mean")).start()
    texts = ["The river", "a stone in the water", "日本"]
    try:
        direct = httpx.post(f"{engine.url}/v1/embeddings", json={"input": texts}, timeout=60)
        client = sdk(start(make_server, engine))
        ours = client.embeddings.create(model="tiny", input=texts)
        floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    finally:
        engine.stop()
    assert direct.status_code == 200, direct.text
    said = sorted(direct.json()["data"], key=lambda item: item["index"])
    assert len(said) == 3 and len(said[0]["embedding"]) == 64  # the tiny model's width
    for answer in (ours, floats):
        assert [item.index for item in answer.data] == [0, 1, 2]
        for item, theirs in zip(answer.data, said, strict=True):
            assert item.embedding == pytest.approx(theirs["embedding"], rel=1e-6, abs=1e-7)
        assert answer.usage.prompt_tokens == direct.json()["usage"]["prompt_tokens"]


def test_a_gap_is_filled_as_llama_servers_infill_fills_it(
    make_server: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """Completions' `suffix` on a model with fill-in-the-middle tokens: the prompt and the suffix reach
    `/infill` as the text before and after the gap, and the SDK gets llama-server's own middle (greedy),
    whole and streamed, with its counts, and with `logprobs` its own figures for each token (its
    `n_probs`); without the suffix the same prompt is continued otherwise."""
    model = write_tiny_llama(tmp_path / "fim.gguf", n_ctx=4096, fim=True)
    engine = LlamaServer(tmp_path, model=model).start()
    before, after = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    sampling = {"temperature": 0.0, "seed": 7}
    try:
        direct = httpx.post(
            f"{engine.url}/infill",
            json={"input_prefix": before, "input_suffix": after, "n_predict": 16, **sampling},
            timeout=60,
        ).json()
        plain = httpx.post(
            f"{engine.url}/completion", json={"prompt": before, "n_predict": 16, **sampling}, timeout=60
        ).json()
        client = sdk(start(make_server, engine))
        ours = client.completions.create(model="tiny", prompt=before, suffix=after, max_tokens=16, **sampling)
        streamed = client.completions.create(
            model="tiny", prompt=before, suffix=after, max_tokens=16, stream=True, **sampling
        )
        pieces = [c.choices[0].text for c in streamed if c.choices]
        fim = {"input_prefix": before, "input_suffix": after, "n_predict": 6, "n_probs": 2, **sampling}
        probabilities = httpx.post(f"{engine.url}/infill", json=fim, timeout=60).json()[
            "completion_probabilities"
        ]
        scored = (
            client.completions.create(
                model="tiny", prompt=before, suffix=after, max_tokens=6, logprobs=2, **sampling
            )
            .choices[0]
            .logprobs
        )
    finally:
        engine.stop()
    assert scored is not None and scored.tokens == [p["token"] for p in probabilities]
    assert scored.token_logprobs == pytest.approx([p["logprob"] for p in probabilities], abs=0.01)
    assert [list(top) for top in scored.top_logprobs or ()] == [
        [t["token"] for t in p["top_logprobs"]] for p in probabilities
    ]
    assert len(direct["content"]) > 0 and direct["content"] != plain["content"]
    assert ours.choices[0].text == direct["content"] == "".join(pieces)
    assert ours.usage is not None
    assert (ours.usage.prompt_tokens, ours.usage.completion_tokens) == (
        direct["tokens_evaluated"],
        direct["tokens_predicted"],
    )
