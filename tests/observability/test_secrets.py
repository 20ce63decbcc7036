"""No secrets in logs: a real server, real requests carrying a known API key and a known prompt; every
log line is searched for them. Prompts appear only when the operator opts in (`log_prompts: true`),
and even then token-like strings inside them are redacted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestratord.logs import REDACTED, redactor
from tests.fakes.servers import serve_in_process
from tests.fakes.sse import read_events

KEY = "orchd-live-Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5"  # the caller's API key
WRONG_KEY = "orchd-live-Wr0ngWr0ngWr0ngWr0ng12"
PROMPT = "the purple elephant recites sonnets at midnight"
EMBEDDED = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # a token pasted into a prompt


def serve_and_log(tmp: Path, *, log_prompts: bool) -> str:
    config: dict[str, Any] = {
        "log_level": "debug",  # the most a server ever logs
        "log_prompts": log_prompts,
        "auth": {"keys": [{"key": KEY, "tenant": "acme"}]},  # a real credential, checked on every request
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / "server.log"
    with serve_in_process("--config", str(path), log_path=log_path) as (base, _):
        secret = {"Authorization": f"Bearer {KEY}", "X-Api-Key": KEY}
        with httpx.Client(base_url=base, timeout=30, headers=secret) as c:
            exercise(c)
    return log_path.read_text(encoding="utf-8")


def exercise(c: httpx.Client) -> None:
    prompt = f"{PROMPT} {EMBEDDED}"
    done = c.post("/v1/tasks", json={"model_ref": "mock", "prompt": prompt, "max_tokens": 4})
    assert done.status_code == 202, done.text
    assert read_events(c, done.json()["sse_url"])[-1].event == "end"
    assert c.get(done.json()["status_url"]).status_code == 200
    failing = {"model_ref": "mock", "prompt": f"[[mock fail_after=1]] {prompt}", "max_tokens": 4}
    failed = c.post("/v1/tasks", json=failing)
    assert read_events(c, failed.json()["sse_url"])[-1].event == "error"
    refused = c.post("/v1/tasks", json={"model_ref": "nope", "prompt": prompt, "max_tokens": 4})
    assert refused.status_code == 400
    garbled = c.post(
        "/v1/tasks", content=f'{{"prompt": "{prompt} {KEY}"', headers={"Content-Type": "application/json"}
    )
    assert garbled.status_code == 400
    wrong = c.post(
        "/v1/tasks",
        json={"model_ref": "mock", "prompt": prompt, "max_tokens": 4},
        headers={"Authorization": f"Bearer {WRONG_KEY}", "X-Api-Key": WRONG_KEY},
    )
    assert wrong.status_code == 401


def lines(log_text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_text.splitlines() if line.strip()]


def events(log_text: str) -> list[str]:
    return [line["event"] for line in lines(log_text)]


def test_no_key_and_no_prompt_in_any_log_line(tmp_path: Path) -> None:
    text = serve_and_log(tmp_path, log_prompts=False)
    seen = events(text)  # every line is JSON
    assert {"task_admitted", "task_completed", "task_failed", "task_rejected"} <= set(seen)
    assert any(line.get("tenant") == "acme" for line in lines(text))  # the key was used: its tenant
    for secret in (KEY, WRONG_KEY, PROMPT, EMBEDDED, "purple elephant"):
        assert secret not in text, f"{secret!r} is in the log"
    assert "event: token" not in text  # not even at debug level: nothing is logged per token


def test_prompts_are_logged_only_on_opt_in_and_still_redacted(tmp_path: Path) -> None:
    text = serve_and_log(tmp_path, log_prompts=True)
    assert PROMPT in text  # the opt-in works, so the test above would see a leaked prompt
    for secret in (KEY, WRONG_KEY, EMBEDDED):
        assert secret not in text, f"{secret!r} is in the log"


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abcdefghijklmnop",
        "basic dXNlcjpwYXNzd29yZA==",
        "sk-proj-0123456789abcdefXYZ",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "AKIAIOSFODNN7EXAMPLE",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5Pg0AjQ2Wz",  # a random mixed-case key without a prefix
    ],
)
def test_token_like_strings_are_redacted_anywhere(value: str) -> None:
    event = redactor(log_prompts=False)(None, "info", {"event": "x", "detail": f"saw {value} here"})
    assert value not in json.dumps(event) and REDACTED in event["detail"]


def test_secret_keys_are_redacted_and_ids_are_kept() -> None:
    job_id = "3f6c1a2b-9d4e-4f00-8a1b-0123456789ab"
    event = redactor(log_prompts=False)(
        None,
        "info",
        {
            "event": "x",
            "headers": {"Authorization": "whatever", "x-api-key": "k", "cookie": "c", "accept": "json"},
            "job_id": job_id,
            "correlation_id": "req-0123456789abcdef",
            "session_id": "Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5Pg0AjQ2Wz",  # a random id stays an id
            "prompt": "hello",
        },
    )
    assert event["headers"] == {"Authorization": REDACTED, "x-api-key": REDACTED, "cookie": REDACTED,
                                "accept": "json"}  # fmt: skip
    assert event["job_id"] == job_id and event["correlation_id"] == "req-0123456789abcdef"
    assert event["session_id"] == "Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5Pg0AjQ2Wz"
    assert "prompt" not in event


def test_a_correlation_id_that_looks_like_a_key_is_redacted() -> None:
    """Clients choose correlation ids; one that is a secret must not reach every line of its job."""
    redact = redactor(log_prompts=False)
    secret = "Zq7Xw2Lr9Tb4Nc8Vy1Hs6Kd3Mf5Pg0AjQ2Wz"
    assert redact(None, "info", {"event": "x", "correlation_id": secret})["correlation_id"] == REDACTED
    assert (
        redact(None, "info", {"event": "x", "correlation_id": "sk-abcdefgh12345678"})["correlation_id"]
        == REDACTED
    )
    made = "3f6c1a2b-9d4e-4f00-8a1b-0123456789ab"  # the server's own: a UUID
    assert redact(None, "info", {"event": "x", "correlation_id": made})["correlation_id"] == made
