"""The README works as written (issue 19 item 5): each test takes a fenced code block out of README.md
and runs it the way a new user following it would, with real processes on loopback, so that when the
README changes the test follows it and when one of its commands breaks the test fails.

What the tests change, and why (nothing else is rewritten):
- Ports. The README's servers listen on 8080 (the quick start) and 8081 (the authentication example);
  here each gets a free port (these ports may be taken on a test machine, and the suite may run twice at
  once), written into the commands in place of the README's number. The quick start's server is started
  with `--port`, which `ci/run.sh` passes through to `orchestratord serve`.
- `bash ci/run.sh` installs the service first (`ci/setup.sh service`, pip and the network); the test
  setup already installed it, so the quick start's server is the `exec` line of ci/run.sh itself.
- The working directory. The blocks run in a temporary directory holding a `.venv` symlink to the
  checkout's venv, so `.venv/bin/...` resolves as in a checkout and the files the README writes
  (auth.yaml) land there. The servers' model catalog goes to a temporary `XDG_STATE_HOME` rather than
  `./var`; `ORCHD_*` variables of the calling environment are not passed on.
- Status codes. The README shows response bodies; where a test needs the status too, `curl` is a shell
  function that appends it (`--write-out`) and otherwise runs the README's arguments unchanged.
- Placeholders. The `3f6c…` and `JOB_ID` of the README become the id of a job the README's own commands
  made.
- Docker is not on the test machine: docker-compose.yml is read, not run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from orchestratord.cli import build_parser
from orchestratord.settings import Settings, load_settings
from tests.fakes.servers import REPO, free_port, wait_healthy

README = REPO / "README.md"
# `curl` as the README runs it, with the status appended after the body on a line of its own.
CURL_WITH_STATUS = "curl() { command curl --write-out '\\n<HTTP %{http_code}>\\n' \"$@\"; }\n"
STATUS = re.compile(r"\n<HTTP (\d{3})>\n")


# ---- the README, read ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    section: str  # the heading above it
    before: str  # the prose between the previous block (or the heading) and this one


@dataclass(frozen=True)
class Command:
    line: str  # continuation lines joined
    comments: list[str]  # the comment lines right after it, without the `#`

    @property
    def note(self) -> str:
        """What the README says of it: its trailing comment and the comment lines after it."""
        trailing = re.search(r"\s#\s*(.*)$", self.line)
        return " ".join([trailing.group(1) if trailing else "", *self.comments]).strip()


def readme_blocks(text: str) -> list[Block]:
    found: list[Block] = []
    section, before = "", list[str]()
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("#"):
            section, before = line.lstrip("#").strip(), []
        elif line.startswith("```"):
            code = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                code.append(inner)
            found.append(Block(line[3:].strip(), "\n".join(code) + "\n", section, " ".join(before)))
            before = []
        else:
            before.append(line.strip())
    return found


def block(section: str, contains: str = "", lang: str = "sh") -> Block:
    """The first block of that language under the heading `section` whose code holds `contains`."""
    for b in readme_blocks(README.read_text(encoding="utf-8")):
        if b.section == section and b.lang == lang and contains in b.code:
            return b
    raise AssertionError(f"README.md has no ```{lang} block holding {contains!r} under {section!r}")


def commands(code: str) -> list[Command]:
    """A shell block's commands, one per line (`\\` continuations joined), each with the comment lines
    that follow it (where the README shows the output)."""
    found: list[Command] = []
    pending = ""
    for raw in code.splitlines():
        stripped = raw.strip()
        if pending:
            pending += " " + stripped
        elif not stripped:
            continue
        elif stripped.startswith("#"):
            if found:
                found[-1].comments.append(stripped[1:].strip())
            continue
        else:
            pending = raw
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        found.append(Command(pending, []))
        pending = ""
    return found


def ports(text: str) -> set[int]:
    return {int(p) for p in re.findall(r"(?:localhost|127\.0\.0\.1):(\d+)", text)}


def on_port(text: str, readme_port: int, port: int) -> str:
    return re.sub(rf"\b{readme_port}\b", str(port), text)


def quick_start_port() -> int:
    (port,) = ports(block("Quick start", "curl").code)
    return port


# ---- processes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def responses(self) -> list[tuple[str, int]]:
        """(body, status) of each `curl` the script ran with CURL_WITH_STATUS."""
        parts = STATUS.split(self.stdout)
        return [(parts[i].strip(), int(parts[i + 1])) for i in range(0, len(parts) - 1, 2)]


def group_ends(pgid: int, timeout: float, child: subprocess.Popen[Any] | None = None) -> bool:
    """Whether the process group `pgid` is gone within `timeout`; `child`, our own process in it, is
    reaped meanwhile (a zombie still counts as a member)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None:
            child.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def stop_group(child: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM to the process group `child` leads (a script and whatever it left in the background, or
    a server), SIGKILL if it outlives `timeout`."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not group_ends(child.pid, timeout, child):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def run(
    script: str,
    cwd: Path,
    env: dict[str, str],
    *,
    status: bool = False,
    timeout: float = 30.0,
    stops_what_it_starts: bool = False,
) -> Ran:
    """`script` under `bash` with `set -euo pipefail`, in its own process group, which is ended when
    the script is (so a server it started in the background never outlives the test). Output goes to
    files, not pipes: a background process holding a pipe open would keep us waiting. With
    `stops_what_it_starts`, whatever the script started in the background must end by itself."""
    left_running = timed_out = False
    prelude = "set -euo pipefail\n" + (CURL_WITH_STATUS if status else "")
    with (cwd / ".out").open("w+") as out, (cwd / ".err").open("w+") as err:
        proc = subprocess.Popen(
            ["bash", "-c", prelude + script], cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
            left_running = stops_what_it_starts and not group_ends(proc.pid, 15.0)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            stop_group(proc)
        out.seek(0)
        err.seek(0)
        ran = Ran(proc.returncode, out.read(), err.read())
    assert not timed_out, f"{script}\ntimed out after {timeout} s\n{ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"
    assert ran.returncode == 0, f"{script}\nexit {ran.returncode}\n{ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"
    assert not left_running, f"{script}\nleft a process running"
    return ran


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the README's shell lines run: `.venv` is the checkout's, files they write stay here."""
    path = tmp_path_factory.mktemp("readme")
    (path / ".venv").symlink_to(REPO / ".venv")
    return path


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    env["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    return env


@pytest.fixture(scope="module")
def quick_start(workdir: Path, user_env: dict[str, str]) -> Iterator[int]:
    """The quick start's server, as the script its first block runs (`bash ci/run.sh`) starts it after
    its setup step; yields its port."""
    (command,) = commands(block("Quick start").code)
    shell, script = shlex.split(command.line, comments=True)
    assert shell == "bash", command.line
    execs = [line for line in (REPO / script).read_text().splitlines() if line.startswith("exec ")]
    assert len(execs) == 1, f"{script} should end by exec'ing the server"
    argv = shlex.split(execs[0].removeprefix("exec "))
    assert argv[-1] == "$@", f"{script} passes its arguments on (so `bash {script} --port N` works)"
    port = free_port()
    log = (workdir / "quick-start.log").open("wb")
    proc = subprocess.Popen(
        [str(workdir / argv[0]), *argv[1:-1], "--port", str(port)],
        cwd=workdir,
        env=user_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        yield port
    finally:
        stop_group(proc)
        log.close()


# ---- the quick start ----------------------------------------------------------------------------------


def sse_events(text: str) -> list[dict[str, str]]:
    """Events of an SSE text (or of the README's picture of one: `…` lines are left out)."""
    events = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        fields = {}
        for line in chunk.splitlines():
            name, sep, value = line.partition(":")
            if sep and name in ("id", "event", "data"):
                fields[name] = value.strip()
        if "event" in fields:
            events.append(fields)
    return events


def test_quick_start_curl_lines(quick_start: int, workdir: Path, user_env: dict[str, str]) -> None:
    readme_port = quick_start_port()
    assert readme_port == Settings.model_fields["port"].default  # where `bash ci/run.sh` listens
    post, stream, status, cancel = commands(block("Quick start", "curl").code)

    assert "-X POST" in post.line and "/v1/tasks" in post.line
    ((body, code),) = run(
        on_port(post.line, readme_port, quick_start), workdir, user_env, status=True
    ).responses()
    assert code == 202, body
    job = json.loads(body)
    shown = json.loads("".join(post.comments))  # the README's response, `3f6c…` for the job id
    placeholder = shown["job_id"]
    assert set(shown) <= set(job), f"the README shows {sorted(shown)}, the server sent {sorted(job)}"
    for key, value in shown.items():
        if isinstance(value, str) and placeholder in value:
            assert job[key] == value.replace(placeholder, job["job_id"])

    def follow(command: Command) -> Ran:
        line = on_port(command.line, readme_port, quick_start).replace(placeholder, job["job_id"])
        assert job["job_id"] in line, f"{command.line!r} names no job"
        return run(line, workdir, user_env, status=True)

    ((text, code),) = follow(stream).responses()
    assert code == 200
    got, pictured = sse_events(text), sse_events("\n".join(stream.comments))
    assert got[0]["event"] == pictured[0]["event"] == "started"
    assert got[-1]["event"] == pictured[-1]["event"] == "end"
    assert all("id" in e for e in got)
    for shown_event in pictured:
        same = [json.loads(e["data"]) for e in got if e["event"] == shown_event["event"]]
        assert same, f"the stream has no {shown_event['event']} event"
        keys = set(json.loads(shown_event["data"]))
        assert all(keys <= set(data) for data in same), (shown_event, same)
    assert json.loads(got[0]["data"])["job_id"] == job["job_id"]
    max_tokens = json.loads(re.search(r"-d '(\{.*?\})'", post.line).group(1))["max_tokens"]  # type: ignore[union-attr]
    assert len([e for e in got if e["event"] == "token"]) == max_tokens

    ((body, code),) = follow(status).responses()
    assert code == 200
    state = json.loads(body)
    for word in ("state", "tokens_out"):  # as the comment names them
        assert word in status.note and word in state, state
    assert state["tokens_out"] == max_tokens
    assert "text" in status.note and state["text"], state

    (expected,) = re.findall(r"\b([1-5]\d\d)\b", cancel.note)
    for _ in range(2):  # idempotent, as the comment says
        ((body, code),) = follow(cancel).responses()
        assert code == int(expected), body


def test_python_client_example(quick_start: int, workdir: Path, user_env: dict[str, str]) -> None:
    example = block("Quick start", lang="python")
    interpreter = re.search(r"run this with\s+`([^`]+)`", example.before)
    assert interpreter, "the README names the interpreter that runs the example"
    (workdir / "example.py").write_text(on_port(example.code, quick_start_port(), quick_start))
    out = run(f"{interpreter.group(1)} example.py", workdir, user_env).stdout
    *text, summary = out.rstrip("\n").split("\n")
    max_tokens = int(re.search(r"max_tokens=(\d+)", example.code).group(1))  # type: ignore[union-attr]
    assert re.fullmatch(rf"{max_tokens} tokens, max_tokens", summary), out
    assert "".join(text).strip(), out


def test_openai_sdk_example(quick_start: int, workdir: Path, user_env: dict[str, str]) -> None:
    example = block("With the OpenAI SDKs")
    script = []
    for line in example.code.splitlines():
        install = re.match(r"(\S*)pip install (\S+)", line)
        # The test setup installs the SDK (the dev extra); installing again would need the network and
        # touch the venv other tests use, so the line runs only when the package is missing.
        if install and run_ok(f"{install.group(1)}python -c 'import {install.group(2)}'", workdir, user_env):
            continue
        script.append(line)
    out = run(on_port("\n".join(script), quick_start_port(), quick_start), workdir, user_env).stdout
    assert out.endswith("\n") and out.strip(), out


def run_ok(script: str, cwd: Path, env: dict[str, str]) -> bool:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True).returncode == 0


def test_cli_lines(quick_start: int, workdir: Path, user_env: dict[str, str]) -> None:
    example = block("Quick start", "orchestratord run")
    assert "`ORCHD_URL`" in example.before
    env = {**user_env, "ORCHD_URL": f"http://127.0.0.1:{quick_start}"}
    job_id = None
    seen = set()
    for command in commands(example.code):
        words = shlex.split(command.line, comments=True)
        if "JOB_ID" in command.line:
            assert job_id, "a line before this one should have made a job"
            command = Command(command.line.replace("JOB_ID", job_id), [])
        out = run(command.line, workdir, env).stdout
        verb = words[words.index(".venv/bin/orchestratord") + 1]
        seen.add(verb)
        if verb == "run" and "--json" in words:
            events = [json.loads(line) for line in out.splitlines()]
            assert events[0]["event"] == "started" and events[-1]["event"] == "end", out
            job_id = events[0]["job_id"]
        elif verb == "run":
            assert out.strip(), "the text of the job"
        elif verb == "pools":
            assert "mock" in out, out  # the embedded default's one pool
        elif verb == "jobs":
            assert "tenant" in out and "state" in out, out  # the table (the README's jobs have ended)
        elif verb == "status":
            assert json.loads(out.splitlines()[0])["job_id"] == job_id
    assert seen == {"run", "pools", "jobs", "status"}, seen  # `status …; cancel …` is one line


# ---- authentication -----------------------------------------------------------------------------------


def test_authentication_example(workdir: Path, user_env: dict[str, str]) -> None:
    example = block("Authentication")
    (readme_port,) = {int(p) for p in re.findall(r"\bport: (\d+)", example.code)} | ports(example.code)
    assert readme_port != quick_start_port(), "a second server needs a port of its own"
    assert str(readme_port) in example.before  # and the README says which
    port = free_port()
    ran = run(
        on_port(example.code, readme_port, port), workdir, user_env, status=True, stops_what_it_starts=True
    )
    assert (workdir / "auth.yaml").exists()

    shown = [c for c in commands(example.code) if c.line.startswith("curl") and ">/dev/null" not in c.line]
    responses = ran.responses()
    assert len(responses) == len(shown), (ran.stdout, ran.stderr[-2000:])
    for command, (body, code) in zip(shown, responses, strict=True):
        if "Authorization: Bearer $KEY" in command.line:
            assert code == (202 if "-X POST" in command.line else 200), (command.line, body)
            assert ("job_id" in json.loads(body)) == ("-X POST" in command.line), body
        else:  # the README shows what a request without the key gets
            (expected,) = re.findall(r"\b([1-5]\d\d)\b", command.note)
            assert code == int(expected), body
            error = json.loads(body)
            assert error["code"] == re.search(r'"code":"(\w+)"', command.note).group(1)  # type: ignore[union-attr]
            assert error["message"]
    assert any(code == 401 for _, code in responses), "the example shows a request without the key"


# ---- the benchmark ------------------------------------------------------------------------------------


def bench_lines() -> tuple[list[str], list[str]]:
    example = block("Performance", "-m bench")
    setup, bench = (shlex.split(c.line, comments=True) for c in commands(example.code))
    return setup, bench


def test_the_benchmark_names_a_setup_that_installs_the_bench_extra(tmp_path: Path) -> None:
    """The README's setup line runs against a copy of ci/setup.sh with pip stubbed out (it records
    what it would install) and the apt-installed tools already on PATH."""
    setup, _ = bench_lines()
    assert setup[:2] == ["bash", "ci/setup.sh"], setup
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "bench" in extras
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "setup.sh").write_text((REPO / "ci" / "setup.sh").read_text())
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    log = tmp_path / "calls"
    for tool in (fakes / "python3", fakes / "promtool", fakes / "chromium", fakes / "redis-server",
                 tmp_path / ".venv" / "bin" / "python"):  # fmt: skip
        tool.write_text(f'#!/bin/sh\necho "$0 $*" >> {log}\n')
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "PYTHON": str(fakes / "python3")}
    done = subprocess.run(setup, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    installs = [line for line in log.read_text().splitlines() if " -m pip install " in line]
    assert any(re.search(r"\.\[[^\]]*\bbench\b[^\]]*\]", line) for line in installs), installs


def test_the_benchmark_command(tmp_path: Path) -> None:
    """The README's command, as bench's own parser reads it; then run for real on one scenario at the
    smoke scale (every scenario takes about 100 s even then: tests/bench/test_bench_smoke.py runs them),
    from the checkout (`-m bench` is the checkout's package)."""
    from bench.__main__ import SCENARIOS
    from bench.__main__ import build_parser as bench_parser

    _, bench = bench_lines()
    assert bench[:3] == [".venv/bin/python", "-m", "bench"], bench
    args = bench_parser().parse_args(bench[3:])
    assert args.command == "run" and args.scenario in ("all", *SCENARIOS)
    smoke = ["--scenario", "jobs", "--scale", "smoke", "--results", str(tmp_path), "--no-report"]
    done = subprocess.run([*bench, *smoke], cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = tmp_path.glob("*-jobs.json")
    assert json.loads(result.read_text())["scenario"] == "jobs"


# ---- compose ------------------------------------------------------------------------------------------


def compose() -> tuple[str, dict[str, Any]]:
    text = (REPO / "docker-compose.yml").read_text()
    return text, yaml.safe_load(text)


def test_the_readme_names_every_variable_compose_reads() -> None:
    example = block("Scaling out", "docker compose up")
    section = README.read_text().split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    exported = set(re.findall(r"\bexport\s+(\w+)=", example.code))
    text, _ = compose()
    variables = re.findall(r"\$\{(\w+)(:?[-?])?", text)
    assert variables
    for name, op in variables:
        assert re.search(rf"\b{name}\b", section), f"README's compose section never names {name}"
        if op in ("", "?", ":?"):  # required: compose refuses to start without it
            assert name in exported, f"{name} is required by docker-compose.yml; the README should export it"


def test_compose_files_exist_and_its_config_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, doc = compose()
    base = doc["x-orchestratord"]
    assert (REPO / base["build"] / "Dockerfile").exists()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), line
    mounts = {}
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the checkout"
                mounts[target] = REPO / source
    # A replica's config, with the environment compose gives it (ORCHD_API_KEY set as the README does).
    config = mounts[base["command"][base["command"].index("--config") + 1]]
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the image's is /var/lib, a volume
    for key, value in base["environment"].items():
        monkeypatch.setenv(key, re.sub(r"\$\{ORCHD_API_KEY:\?[^}]*\}", "k" * 32, str(value)))
    settings = load_settings(config)
    assert settings.host == "0.0.0.0" and settings.auth.keys
    models = {m for pool in settings.pools for m in pool.models}
    example = block("Scaling out", "docker compose up")
    for body in re.findall(r"-d '(\{.*?\})'", example.code):
        assert json.loads(body)["model_ref"] in models, body


# ---- configuration ------------------------------------------------------------------------------------


def test_configuration_keys_and_flags_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the catalog directory load_settings creates
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for row in re.findall(r"^\| (`.*?) \|", section, flags=re.M):
        prefix = ""
        for key in re.findall(r"`([\w.]+)`", row):
            if "." in key:
                prefix = key.rsplit(".", 1)[0] + "."
            elif prefix:
                key = prefix + key
            model: type[BaseModel] = Settings
            for part in key.split("."):
                assert part in model.model_fields, f"README's {key} is not a setting"
                annotation = model.model_fields[part].annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    model = annotation
    usage = re.search(r"`orchestratord serve ([^`]*)`", section)
    assert usage
    serve = build_parser().parse_args(["serve", *re.sub(r"[\[\]]", "", usage.group(1)).split()])
    assert (serve.host, serve.port, serve.config) == ("127.0.0.1", 8080, "FILE")
    name, value = re.search(r"`(ORCHD_\w+)=(\w+)`", section).groups()  # type: ignore[union-attr]
    monkeypatch.setenv(name, value)
    path = name.removeprefix("ORCHD_").lower().split("__")
    got: Any = load_settings(None)
    for part in path:
        got = getattr(got, part)
    assert str(got) == value
