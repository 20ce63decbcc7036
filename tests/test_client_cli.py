"""`orchestratord run / status / cancel / pools / jobs` against a real server, as scripts use them (pipes,
exit codes, --json) and as people do (a real pseudo-terminal, driven by pexpect)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from tests.fakes.engines.ollama import OllamaEngine
from tests.fakes.engines.server import serve
from tests.fakes.servers import REPO, LoopbackServer
from tests.fakes.sse import read_events

POOL = {"id": "p", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 1,
        "options": {"ttft_ms": 0, "tokens_per_s": 200}}  # fmt: skip
COMMAND = [sys.executable, "-m", "orchestratord"]


@pytest.fixture
def server(make_server: Callable[..., LoopbackServer]) -> LoopbackServer:
    return make_server(pools=[POOL])


def cli(*args: str, stdin: str | None = None, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ORCHD_URL"}
    if url is not None:
        env["ORCHD_URL"] = url
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=60
    )


def expected_text(server: LoopbackServer, prompt: str, max_tokens: int) -> str:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        body = {"model_ref": "mock", "prompt": prompt, "max_tokens": max_tokens, "seed": 7}
        job = client.post("/v1/tasks", json=body).json()
        return "".join(e.data["t"] for e in read_events(client, job["sse_url"]) if e.event == "token")


def test_run_in_a_pipe_writes_the_text_alone_and_exits_0(server: LoopbackServer) -> None:
    done = cli("run", "mock", "Tell me", "--max-tokens", "12", "--seed", "7", "--url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_text(server, "Tell me", 12)  # no status line, no summary: a pipe
    assert done.stderr == ""


def test_the_prompt_from_stdin_and_the_server_from_orchd_url(server: LoopbackServer) -> None:
    done = cli("run", "mock", "--max-tokens", "6", "--seed", "7", stdin="Tell me", url=server.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_text(server, "Tell me", 6)


def test_json_lines_for_scripts(server: LoopbackServer) -> None:
    done = cli("run", "mock", "hi", "--max-tokens", "4", "--json", "--url", server.base_url)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "started" and events[-1]["event"] == "end"
    assert [e["index"] for e in events if e["event"] == "token"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("run", "no-such-model", "hi"), 64, "INVALID_PARAMS"),  # refused as invalid
        (("run", "mock", "[[mock fail_after=1]] hi", "--max-tokens", "4"), 75, "WORKER_RESET"),  # for now
        (("status", "00000000-0000-4000-8000-000000000000"), 69, "NOT_FOUND"),
    ],
)
def test_exit_codes_scripts_can_use(
    server: LoopbackServer, args: tuple[str, ...], code: int, says: str
) -> None:
    done = cli(*args, "--url", server.base_url)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert says in done.stderr


def test_no_server_is_a_temporary_failure() -> None:
    done = cli("run", "mock", "hi", "--url", "http://127.0.0.1:9")
    assert done.returncode == 75, done.stderr


def test_pools_and_status_and_cancel(server: LoopbackServer) -> None:
    pools = cli("pools", "--json", "--url", server.base_url)
    assert pools.returncode == 0 and json.loads(pools.stdout)[0]["id"] == "p"
    table = cli("pools", "--url", server.base_url)
    assert table.returncode == 0 and "mock" in table.stdout and "r0" in table.stdout
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        job = client.post(
            "/v1/tasks", json={"model_ref": "mock", "prompt": "[[mock hang]]", "max_tokens": 4}
        ).json()
    assert cli("cancel", job["job_id"], "--url", server.base_url).returncode == 0
    status = cli("status", job["job_id"], "--url", server.base_url)
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "canceled"


def test_jobs_lists_what_runs_and_waits(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        body = {"model_ref": "mock", "max_tokens": 4, "cancel_on_disconnect": False}
        running = client.post("/v1/tasks", json={**body, "prompt": "[[mock hang]]"}).json()["job_id"]
        waiting = client.post("/v1/tasks", json={**body, "prompt": "next"}).json()["job_id"]
        page = json.loads(cli("jobs", "--json", "--url", server.base_url).stdout)
        assert {t["job_id"]: t["state"] for t in page["tasks"]} == {running: "running", waiting: "queued"}
        table = cli("jobs", "--url", server.base_url)
        assert table.returncode == 0, table.stderr
        rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if "│" in line}
        assert "p/r0" in rows[running] and "0 ahead" in rows[waiting]
        client.post(f"/v1/tasks/{running}/cancel")
        only = json.loads(cli("jobs", "--json", "--state", "canceled", "--url", server.base_url).stdout)
        assert [t["job_id"] for t in only["tasks"]] == [running]
        assert cli("jobs", "--limit", "0", "--url", server.base_url).returncode == 64
        client.post(f"/v1/tasks/{waiting}/cancel")


def spawn(*args: str) -> Any:
    env = {**{k: v for k, v in os.environ.items() if k != "ORCHD_URL"}, "TERM": "xterm", "COLUMNS": "100"}
    return pexpect.spawn(
        COMMAND[0],
        [*COMMAND[1:], *args],
        cwd=str(REPO),
        env=env,
        encoding="utf-8",
        timeout=30,
        # as a terminal's shell starts it: a test run started in the background by a shell without job
        # control inherits SIGINT ignored (POSIX), and so would the command (the cause of a full run's
        # "did not exit on Ctrl-C", SigIgn 0x...1007)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_on_a_terminal_a_live_status_line_while_the_job_waits(server: LoopbackServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        holder = client.post(
            "/v1/tasks", json={"model_ref": "mock", "prompt": "[[mock hang]]", "max_tokens": 4}
        )
        read_events(client, holder.json()["sse_url"], stop_after=1)  # it holds the only slot
        child = spawn("run", "mock", "Tell me", "--max-tokens", "12", "--seed", "7", "--url", server.base_url)
        child.expect("queued")
        child.expect("0 ahead")
        client.post(f"/v1/tasks/{holder.json()['job_id']}/cancel")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before).replace("\r", "")
    assert expected_text(server, "Tell me", 12) in shown  # the text, then the summary line
    assert re.search(r"12 tokens, [0-9.]+ tokens/s, max_tokens", shown), shown


def test_ctrl_c_cancels_the_job(server: LoopbackServer) -> None:
    child = spawn("run", "mock", "[[mock hang]] wait", "--url", server.base_url)
    child.expect("queued|\\S")  # the job is admitted and its stream open
    with httpx.Client(base_url=server.base_url, timeout=30) as client:

        def running() -> list[dict[str, Any]]:
            return [p for p in client.get("/v1/pools").json()["pools"] if p["replicas"][0]["slots_free"] == 0]

        deadline = 50
        while not running() and deadline:
            deadline -= 1
            child.expect([pexpect.TIMEOUT], timeout=0.1)
        child.sendintr()
        try:
            child.expect(pexpect.EOF)
        except pexpect.TIMEOUT:  # say where the command hangs, not only that it does
            raise AssertionError(f"the command did not exit on Ctrl-C:\n{_where(child.pid)}") from None
        child.close()
        assert child.exitstatus == 130 or child.signalstatus is not None
        assert running() == []  # the job was canceled: its slot is free


def _where(pid: int) -> str:
    """The process's signal masks and its threads' Python stacks (py-spy, when it is installed)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    masks = "\n".join(line for line in status.splitlines() if line.startswith(("SigBlk", "SigIgn", "SigCgt")))
    spy = REPO / ".venv" / "bin" / "py-spy"
    if not spy.exists():
        return masks
    dump = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    return f"{masks}\n{dump.stdout}{dump.stderr}"


def test_a_reader_that_stops_early_is_not_an_error(server: LoopbackServer) -> None:
    done = subprocess.run(
        f"{' '.join(COMMAND)} run mock hi --json --max-tokens 50 --url {server.base_url} | head -1",
        shell=True, capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert json.loads(done.stdout)["event"] == "started"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_serve_does_not_need_the_client_package() -> None:
    """An image with the server alone (the Dockerfile's) must start: the client commands import the
    client package only when they run."""
    probe = "import sys, orchestratord.cli; assert 'orchestratord_client' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_thinking_models_reasoning_stays_out_of_the_answer(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """Ollama's `thinking` (the fake's, on /api/generate): in a pipe, stdout holds the answer alone; on
    a terminal the reasoning shows too (dimmed, on stderr), before the answer."""
    fake = OllamaEngine(thinking=("Hmm, ", "a greeting."), tokens=("Hello", "!"), eos_after=2)
    with serve(fake) as url:
        pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"], "replicas": [{"id": "r0", "url": url}]}
        server = make_server(pools=[pool])
        piped = cli("run", "llama3.2", "hi", "--max-tokens", "8", "--url", server.base_url)
        child = spawn("run", "llama3.2", "hi", "--max-tokens", "8", "--url", server.base_url)
        child.expect(pexpect.EOF)
        child.close()
    assert piped.returncode == 0, piped.stderr
    assert (piped.stdout, piped.stderr) == ("Hello!", "")
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before).replace("\r", "")
    assert child.exitstatus == 0 and "Hmm, a greeting.\nHello!" in shown, shown


def test_chat_and_a_reasoning_effort_turn_a_thinking_models_thinking_off(
    make_server: Callable[..., LoopbackServer],
) -> None:
    """`--chat` sends the prompt as a user message (Ollama's /api/chat); `--reasoning-effort none`
    turns the thinking off there (Ollama's `think: false`); an effort without --chat is a usage error."""
    fake = OllamaEngine(thinking=("Hmm, ", "a greeting."), tokens=("Hello", "!"), eos_after=2)
    with serve(fake) as url:
        pool = {"id": "o", "engine": "ollama", "models": ["llama3.2"], "replicas": [{"id": "r0", "url": url}]}
        server = make_server(pools=[pool])
        run = ("run", "llama3.2", "hi", "--max-tokens", "8", "--url", server.base_url)
        done = cli(*run, "--chat", "--reasoning-effort", "none")
        sent = fake.record.last("/api/chat").body
        refused = cli(*run, "--reasoning-effort", "none")
    assert done.returncode == 0 and done.stdout == "Hello!", done.stderr
    assert sent["messages"] == [{"role": "user", "content": "hi"}] and sent["think"] is False
    assert refused.returncode == 64 and "--chat" in refused.stderr
