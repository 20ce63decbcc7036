"""One reader's place in a job's stream, across the connections it takes to read it.

The server keeps each job's events in a log and answers `Last-Event-ID: <id>` with exactly the
events after that id. So a reader that remembers the id of the last event it *dispatched* (never of
a partial frame) can reconnect after any break and see every event once. This is the sans-I/O half
of `events()`: the clients own the sockets and the sleeping, this decides.
"""

from __future__ import annotations

from orchestratord_client._retry import RetryPolicy
from orchestratord_client._sse import SSEDecoder
from orchestratord_client.errors import ConnectionFailed, JobFailed, StreamInterrupted
from orchestratord_client.events import TERMINAL, Error, Event, decode


class Resumption:
    """Tracks `last_event_id` and whether the terminal event has come (`finished`).

    A break is allowed `max_resumes` times in a row; an event received resets the count, so a long
    stream over a flaky link goes on as long as each connection makes progress."""

    def __init__(
        self,
        job_id: str,
        *,
        last_event_id: str | None,
        max_resumes: int,
        raise_on_error: bool,
        policy: RetryPolicy,
    ) -> None:
        self.job_id = job_id
        self.last_event_id = last_event_id
        self.finished = False
        self._max_resumes = max_resumes
        self._raise_on_error = raise_on_error
        self._policy = policy
        self._breaks = 0
        self._decoder = SSEDecoder(last_event_id)

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def connected(self, status: int) -> None:
        """A new connection answered. 204: the reader has already seen the terminal event."""
        self._decoder = SSEDecoder(self.last_event_id)  # a cut connection's partial frame is dropped
        if status == 204:
            self.finished = True

    def feed(self, line: str) -> Event | None:
        """One line read; the event it completes, if any. JobFailed for an `error` event when the
        reader asked for errors to be raised."""
        frame = self._decoder.feed(line)
        if frame is None:
            return None
        event = decode(frame)
        self._breaks = 0
        self.last_event_id = frame.id
        if isinstance(event, TERMINAL):
            self.finished = True
            if self._raise_on_error and isinstance(event, Error):
                raise JobFailed(self.job_id, event)
        return event

    def interrupted(self, cause: BaseException | None) -> float:
        """The stream broke (`cause`), or ended without its terminal event (None). Seconds to wait
        before reconnecting: none the first time, then backing off. StreamInterrupted past the limit."""
        self._breaks += 1
        if self._breaks > self._max_resumes:
            why = f"{type(cause).__name__}: {cause}" if cause is not None else "the stream ended early"
            raise StreamInterrupted(
                self.job_id,
                self.last_event_id,
                f"job {self.job_id}'s stream broke {self._breaks} times in a row ({why}); "
                f"resume with last_event_id={self.last_event_id!r}",
            ) from cause
        return 0.0 if self._breaks == 1 else self._policy.backoff(self._breaks - 2)

    def unreachable(self, error: ConnectionFailed) -> StreamInterrupted:
        """The error for a reconnect the server never answered, with the id to resume from later
        (raise it `from error`)."""
        return StreamInterrupted(
            self.job_id,
            self.last_event_id,
            f"job {self.job_id}'s stream cannot be reached ({error.message}); "
            f"resume with last_event_id={self.last_event_id!r}",
        )
