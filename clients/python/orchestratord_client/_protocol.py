"""What each call sends, shared by both clients: defaults, headers, paths and the task body.

The only reader of the environment (ORCHD_URL, ORCHD_API_KEY), and only when a client is built.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx

from orchestratord_client._version import __version__
from orchestratord_client.resources import Job

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
# The read timeout outlasts the server's keep-alive interval (15 s), so an idle stream of a queued
# job is not taken for a dead one.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
TASKS_PATH = "/v1/tasks"
JobRef: TypeAlias = Job | str  # a Job, or a job id


def base_url_from(base_url: str | None) -> str:
    return base_url or os.environ.get("ORCHD_URL") or DEFAULT_BASE_URL


def headers_for(api_key: str | None) -> dict[str, str]:
    """Every request's headers; `Authorization` when a key is given (or set in ORCHD_API_KEY)."""
    key = api_key if api_key is not None else os.environ.get("ORCHD_API_KEY")
    headers = {"User-Agent": f"orchestratord-client/{__version__}"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def task_body(
    model: str,
    prompt: str | None,
    messages: Sequence[Mapping[str, str]] | None,
    max_tokens: int,
    fields: Mapping[str, Any],
) -> dict[str, Any]:
    """The `TaskRequest` JSON. Exactly one of prompt, messages and `prompt_ids` (a prompt as token ids,
    among `fields`): a mistake found here costs no round trip; every other rule is the server's to check
    (it answers 400 naming the field)."""
    if [prompt, messages, fields.get("prompt_ids")].count(None) != 2:
        raise ValueError("pass exactly one of prompt, messages and prompt_ids")
    if "model_ref" in fields:
        raise TypeError("pass the model as `model`, not `model_ref`")
    body: dict[str, Any] = {"model_ref": model, "max_tokens": max_tokens, **fields}
    if prompt is not None:
        body["prompt"] = prompt
    elif messages is not None:
        body["messages"] = [dict(m) for m in messages]
    return body


def submit_headers(idempotency_key: str | None) -> dict[str, str]:
    """A fresh key per submit, unless the caller brings one: every retry of one submit sends the
    same key, so a retried POST whose first answer was lost never creates a second job."""
    return {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def job_id_of(job: JobRef) -> str:
    return job.job_id if isinstance(job, Job) else job


def jobs_query(
    state: Sequence[str],
    tenant: str | None,
    pool_id: str | None,
    model_ref: str | None,
    limit: int,
    cursor: str | None,
) -> httpx.QueryParams:
    """The query of `GET /v1/tasks`: `state` repeated, the other filters when given."""
    query: list[tuple[str, str | int]] = [("state", s) for s in state]
    optional = {"tenant": tenant, "pool_id": pool_id, "model_ref": model_ref, "cursor": cursor}
    query += [(k, v) for k, v in optional.items() if v is not None]
    return httpx.QueryParams([*query, ("limit", limit)])


def task_path(job: JobRef, suffix: str = "") -> str:
    return f"{TASKS_PATH}/{quote(job_id_of(job), safe='')}{suffix}"


def stream_path(job: JobRef) -> str:
    return job.sse_url if isinstance(job, Job) else task_path(job, "/stream")


def session_path(session_id: str) -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}"
