"""`Client`: the blocking client. `AsyncClient` (in `_async_client.py`) has the same methods."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from orchestratord_client._protocol import (
    DEFAULT_TIMEOUT,
    TASKS_PATH,
    JobRef,
    base_url_from,
    headers_for,
    job_id_of,
    jobs_query,
    session_path,
    stream_path,
    submit_headers,
    task_body,
    task_path,
)
from orchestratord_client._resume import Resumption
from orchestratord_client._retry import RetryPolicy
from orchestratord_client.errors import ConnectionFailed, OrchestratordError, from_response, from_transport
from orchestratord_client.events import Event, Token
from orchestratord_client.resources import Job, JobStatus, Session


class Client:
    """A blocking client of one orchestratord server, on one `httpx.Client` (a connection pool);
    close it, or use it as a context manager.

    `base_url` defaults to ORCHD_URL, else http://127.0.0.1:8080; `api_key` to ORCHD_API_KEY.
    A call the server answers with a retriable error (429, 503, a 409 for an Idempotency-Key still
    being admitted) or that fails in transit is sent again up to `max_retries` times, after the
    server's `retry-after-ms` / `Retry-After` hint (a hint over `max_retry_wait_s` is raised at
    once). A non-retriable error is raised at once. A stream that breaks is resumed with
    `Last-Event-ID`, up to `max_resumes` times in a row without a new event. `transport` and
    `sleep` are the seams for tests (an `httpx.MockTransport`, a recorder of the waits).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        max_retries: int = 3,
        max_resumes: int = 5,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retry_wait_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url_from(base_url),
            headers=headers_for(api_key),
            timeout=timeout,
            transport=transport,
        )
        self._policy = RetryPolicy(max_retries=max_retries, max_wait_s=max_retry_wait_s)
        self._max_resumes = max_resumes
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------------------
    def submit(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        max_tokens: int,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Job:
        """Admit a job (`fields`: any other TaskRequest field, e.g. `seed`, `priority`,
        `session_id`). Retries send the same Idempotency-Key, so they never make a second job.
        Raises RateLimited/QueueFull, Unavailable, InvalidRequest, ... (see `errors`)."""
        body = task_body(model, prompt, messages, max_tokens, fields)
        response = self._call("POST", TASKS_PATH, json=body, headers=submit_headers(idempotency_key))
        return Job.from_json(response.json())

    def events(
        self, job: JobRef, *, last_event_id: str | None = None, raise_on_error: bool = False
    ) -> Iterator[Event]:
        """The job's events, from the start or after `last_event_id`, ending after the terminal
        `End` or `Error` (raised as JobFailed instead when `raise_on_error`). A broken connection
        is resumed where it broke; StreamInterrupted (with `last_event_id`) when it cannot be."""
        stream = Resumption(
            job_id_of(job),
            last_event_id=last_event_id,
            max_resumes=self._max_resumes,
            raise_on_error=raise_on_error,
            policy=self._policy,
        )
        url = stream_path(job)
        while not stream.finished:
            cause: httpx.TransportError | None = None
            response = self._open(stream, url)
            try:
                for line in response.iter_lines():
                    event = stream.feed(line)
                    if event is not None:
                        yield event
                    if stream.finished:
                        return
            except httpx.TransportError as exc:
                cause = exc
            finally:
                response.close()
            if not stream.finished:
                self._sleep(stream.interrupted(cause))

    def run(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        max_tokens: int,
        idempotency_key: str | None = None,
        raise_on_error: bool = False,
        **fields: Any,
    ) -> Iterator[Event]:
        """`submit` then `events`: the job is submitted when iteration begins."""
        job = self.submit(
            model, prompt, messages=messages, max_tokens=max_tokens, idempotency_key=idempotency_key, **fields
        )
        yield from self.events(job, raise_on_error=raise_on_error)

    def text(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        max_tokens: int,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> str:
        """The job's whole text. JobFailed when its stream ends in an `error` event."""
        events = self.run(
            model,
            prompt,
            messages=messages,
            max_tokens=max_tokens,
            idempotency_key=idempotency_key,
            raise_on_error=True,
            **fields,
        )
        return "".join(event.text for event in events if isinstance(event, Token))

    def status(self, job: JobRef) -> JobStatus:
        return JobStatus.from_json(self._call("GET", task_path(job)).json())

    def cancel(self, job: JobRef) -> None:
        """Cancel the job; a job that already ended is left as it was. Its stream ends with `End`
        (`stop_reason == "canceled"`)."""
        self._call("POST", task_path(job, "/cancel"))

    # -- sessions and the deployment -------------------------------------------------------------
    def session(self, session_id: str) -> Session:
        return Session.from_json(self._call("GET", session_path(session_id)).json())

    def delete_session(self, session_id: str) -> None:
        """End the session (its running jobs go on). NotFound when there is no such session."""
        self._call("DELETE", session_path(session_id))

    def pools(self) -> list[dict[str, Any]]:
        pools: list[dict[str, Any]] = self._call("GET", "/v1/pools").json()["pools"]
        return pools

    def jobs(
        self,
        *,
        state: Sequence[str] = (),
        tenant: str | None = None,
        pool_id: str | None = None,
        model_ref: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of every tenant's jobs, newest first (an admin key when keys are on): `{"tasks":
        [...], "next_cursor": ...}`; pass `next_cursor` back as `cursor` for the next page."""
        params = jobs_query(state, tenant, pool_id, model_ref, limit, cursor)
        page: dict[str, Any] = (
            self._send(self._http.build_request("GET", "/v1/tasks", params=params), stream=False)
        ).json()
        return page

    def capabilities(self) -> dict[str, Any]:
        capabilities: dict[str, Any] = self._call("GET", "/v1/capabilities").json()
        return capabilities

    # -- transport -------------------------------------------------------------------------------
    def _open(self, stream: Resumption, url: str) -> httpx.Response:
        """A connection to the job's stream, from where `stream` stands (retried as any call)."""
        request = self._http.build_request("GET", url, headers=stream.headers())
        try:
            response = self._send(request, stream=True)
        except ConnectionFailed as exc:
            raise stream.unreachable(exc) from exc
        stream.connected(response.status_code)
        return response

    def _call(
        self, method: str, url: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self._send(self._http.build_request(method, url, json=json, headers=headers), stream=False)

    def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """Send `request` until it succeeds or the policy gives up (then raise its typed error)."""
        retries = 0
        while True:
            try:
                return self._attempt(request, stream=stream)
            except OrchestratordError as error:
                delay = self._policy.delay(retries, error)
                if delay is None:
                    raise
            self._sleep(delay)
            retries += 1

    def _attempt(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
            if not response.is_success:
                try:
                    response.read()  # the envelope, also of a streamed request
                finally:
                    response.close()
        except httpx.TransportError as exc:
            raise from_transport(exc) from exc
        if response.is_success:
            return response
        raise from_response(response)
