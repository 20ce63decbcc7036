"""The Responses API over a WebSocket: OpenAI's "WebSocket mode", which Codex, the Agents SDK and the
SDKs' `responses.connect()` speak to `/v1/responses` for long tool loops. One connection carries many
responses.

The client sends `response.create` frames: the body of `POST /v1/responses` with `type` beside it
(`stream` is implied, and ignored when sent; `background: true` is refused). Each response is a job
like any other, admitted through the same queue. A refusal is an `error` frame, and the socket stays
open. The response's events, the same as the HTTP stream's, come back one per text frame. A socket's
responses run in lanes. A `stream_id` names a lane (up to 32 besides the default lane, which has
none), a lane runs its responses in the order they were sent, and lanes run side by side, with at
most 16 responses in flight per socket (the rest wait their turn, up to 64: more is a 429 error
frame). A lane's events and errors carry its `stream_id`.

Each lane keeps its latest response in memory (one that ended as `completed` or `incomplete`), so
that the next response carries on from it (`previous_response_id`) without a lookup, even with
`store: false`, which HTTP cannot carry on. Another stored response is carried on as over HTTP, from
any replica. An unstored one that is not the lane's latest is `previous_response_not_found`. A turn
that fails forgets the response it carried on. `generate: false` prepares a response to carry on from
without running the model: `response.created`, then `response.completed` with no output, and the
lane keeps its input.

A client that leaves cancels its running responses, as a streaming client's leaving does (after
`stream.reconnect_grace_s`, in which a stored one can be read on over HTTP). A shutdown closes the
socket with 1012 (service restart), after which the SDKs reconnect. A frame larger than
`limits.max_body_bytes` closes it with 1009 (message too big): uvicorn's `ws_max_size`. A client that
takes no frame within `stream.send_timeout_s` is cut off with 1008."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestratord.api.deps import Caller, get_caller
from orchestratord.api.errors import invalid, socket_error
from orchestratord.api.openai.responses import (
    ResponseRequest,
    carried_on,
    history_of,
    prepared,
    response_events,
    response_id,
    start,
)
from orchestratord.api.schemas import Text
from orchestratord.core.tasks import Message, spec_from_dict
from orchestratord.errors import (
    DEFAULT_RETRY_AFTER_MS,
    AdmissionRejected,
    InvalidParams,
    NotFound,
    OrchestratorError,
)
from orchestratord.logs import bind, get_logger

log = get_logger(__name__)
router = APIRouter(tags=["openai"])

MOST_IN_FLIGHT = 16  # responses running at once on one socket (OpenAI's figure); the rest wait
MOST_LANES = 32  # named lanes (`stream_id`) a socket may open, the default lane aside
MOST_WAITING = 64  # responses sent that wait their lane's turn, on one socket: more is a 429 frame
_LANE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,256}\Z")
_TRANSPORT = ("type", "stream", "stream_id", "generate", "client_metadata")  # not the response's fields
CLOSE_RESTART = 1012  # the server restarts: the SDKs reconnect
CLOSE_TOO_SLOW = 1008  # the client took no frame within `stream.send_timeout_s`


class Frame(BaseModel):
    """What a `response.create` frame says beside the response's own fields."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    stream: bool | None = None  # implied on a socket; Codex and the Agents SDK send `true`
    stream_id: str | None = None
    generate: bool = True
    # Codex's: its installation, session and turn, into the response's log lines as `metadata` is
    client_metadata: dict[Text, Annotated[Text, Field(max_length=512)]] | None = Field(
        default=None, max_length=16
    )


@dataclass
class _Lane:
    stream_id: str | None
    frames: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    # the latest response that may be carried on: its id, and the conversation it leaves
    latest: tuple[str, tuple[Message, ...]] | None = None
    worker: asyncio.Task[None] | None = None


class _Socket:
    """One client's connection: its lanes, and what they send."""

    def __init__(self, socket: WebSocket, caller: Caller) -> None:
        self.socket = socket
        self.caller = caller
        self.lanes: dict[str | None, _Lane] = {}
        self.in_flight = asyncio.Semaphore(MOST_IN_FLIGHT)
        self.waiting = 0  # frames in the lanes' queues
        self.sending = asyncio.Lock()
        self.closed = asyncio.Event()
        self.closing: asyncio.Task[None] | None = None  # a shutdown's close, kept until it is done
        self.send_timeout_s = caller.services.settings.stream.send_timeout_s

    async def serve(self) -> None:
        streams, gauge = self.caller.services.streams, self.caller.services.metrics.sockets_open
        streams.add(self)
        gauge.inc()
        try:
            while not self.closed.is_set():
                message = await self.socket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self._take(message.get("text") or message.get("bytes") or b"")
        except (WebSocketDisconnect, _Gone):  # gone, or cut off while told of a refused frame
            pass
        finally:
            self.closed.set()
            streams.discard(self)
            gauge.dec()
            workers = [lane.worker for lane in self.lanes.values() if lane.worker is not None]
            for worker in workers:
                worker.cancel()  # each reader leaves its job: presence cancels it after the grace
            await asyncio.gather(*workers, return_exceptions=True)

    def cut_off(self, why: str) -> None:
        """A shutdown: close the socket as a restart (`OpenStreams`); the client reconnects."""
        self._cut(CLOSE_RESTART, f"orchestratord {why}")

    def _cut(self, code: int, reason: str) -> None:
        """Close the socket, in a task of its own: the close handshake waits on the client."""
        if not self.closed.is_set():
            self.closed.set()
            self.closing = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.socket.close(code, reason)

    async def _take(self, raw: str | bytes) -> None:
        """A frame from the client: a response for its lane, or an error frame saying what is wrong."""
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self._error(InvalidParams(f"the frame is not JSON ({exc}); send a response.create event"))
            return
        if not isinstance(frame, dict):
            await self._error(InvalidParams("the frame is not a JSON object; send a response.create event"))
            return
        name = frame.get("stream_id")
        try:
            lane = self._lane(name)
            if frame.get("type") != "response.create":
                raise InvalidParams(
                    f"type: {frame.get('type')!r} is not an event this socket takes; send response.create",
                    param="type",
                )
            if self.waiting >= MOST_WAITING:
                raise AdmissionRejected(
                    f"this socket has {MOST_WAITING} responses waiting their turn; wait for one to end, "
                    "or open another socket",
                    policy_label="rate-limit",
                    retry_after_ms=DEFAULT_RETRY_AFTER_MS,
                )
        except OrchestratorError as exc:
            await self._error(exc, name if isinstance(name, str) and _LANE_NAME.match(name) else None)
            return
        self.waiting += 1
        lane.frames.put_nowait(frame)
        if lane.worker is None:
            lane.worker = asyncio.get_running_loop().create_task(self._run(lane))

    def _lane(self, name: Any) -> _Lane:
        if name is not None and not (isinstance(name, str) and _LANE_NAME.match(name)):
            raise InvalidParams(
                "stream_id must be 1 to 256 letters, digits, underscores, hyphens and periods",
                param="stream_id",
            )
        lane = self.lanes.get(name)
        if lane is None:
            if len([n for n in self.lanes if n is not None]) >= MOST_LANES and name is not None:
                raise InvalidParams(
                    f"this socket has {MOST_LANES} lanes (stream_id) already; reuse one, or open another "
                    "socket",
                    param="stream_id",
                )
            lane = self.lanes[name] = _Lane(name)
        return lane

    async def _run(self, lane: _Lane) -> None:
        """A lane's responses, one after another, until the client is gone. Each runs in a copy of the
        socket's context: what one binds to its log lines (its job, its client's ids) is its own."""
        socket_context = contextvars.copy_context()
        with contextlib.suppress(_Gone):
            while True:
                frame = await lane.frames.get()
                self.waiting -= 1
                async with self.in_flight:
                    try:
                        turn = self._respond(lane, frame)
                        await asyncio.create_task(turn, context=socket_context.copy())
                    except (_Gone, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # our fault: said as a 500 would say it, and the lane goes on
                        log.error("socket_turn_failed", exc_info=exc)
                        error = OrchestratorError(
                            "internal error; the incident is logged with this correlation id"
                        )
                        await self._error(error, lane.stream_id)

    async def _respond(self, lane: _Lane, raw: dict[str, Any]) -> None:
        previous = raw.get("previous_response_id")
        try:
            frame = Frame.model_validate(raw)
            body = ResponseRequest.model_validate({k: v for k, v in raw.items() if k not in _TRANSPORT})
            if body.background:
                raise InvalidParams(
                    "background: a socket's responses are streamed on it, never in the background; "
                    "use POST /v1/responses for a background response",
                    param="background",
                )
            if frame.client_metadata:
                bind(client_metadata=frame.client_metadata)
            history = await self._history(lane, body.previous_response_id)
            if not frame.generate:
                await self._prepare(lane, body, history)
                return
            record, _ = await start(self.caller, body, history, None)
            final: dict[str, Any] | None = None
            async for batch in response_events(self.caller.services, record, False, -1):
                for event in batch:
                    final = event.get("response", final)
                    await self._send(event, lane.stream_id)
        except ValidationError as exc:
            await self._failed(lane, previous, invalid(exc))
        except OrchestratorError as exc:
            await self._failed(lane, previous, exc)
        else:
            if final is not None and final["status"] in ("completed", "incomplete"):
                spec = spec_from_dict(orjson.loads(record.spec))
                lane.latest = (final["id"], carried_on(spec, final["output"]))
            elif previous is not None:
                self._forget(lane, previous)

    async def _history(self, lane: _Lane, previous: str | None) -> tuple[Message, ...]:
        """The conversation `previous_response_id` carries on: the lane's latest response's, else a
        stored response's (from any replica)."""
        if previous is None:
            return ()
        if lane.latest is not None and lane.latest[0] == previous:
            return lane.latest[1]
        try:
            return await history_of(self.caller, previous)
        except NotFound as exc:
            raise NotFound(
                f"previous_response_id: {previous!r} is not this lane's latest response, nor a stored "
                "one kept here; send the whole conversation as input instead",
                param="previous_response_id",
            ) from exc

    async def _prepare(self, lane: _Lane, body: ResponseRequest, history: tuple[Message, ...]) -> None:
        """`generate: false`: a response with no output that the next one may carry on from, its input
        kept by the lane (the request is checked as the job it would be, and nothing runs)."""
        spec = prepared(self.caller, body, history)
        resp_id = response_id(str(uuid.uuid4()))
        response = {
            "id": resp_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
            "model": body.model, "output": [], "usage": None, "error": None, "incomplete_details": None,
            "background": False, "metadata": {},
        }  # fmt: skip
        await self._send(
            {"type": "response.created", "sequence_number": 0, "response": response}, lane.stream_id
        )
        usage = {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}  # fmt: skip
        done = {**response, "status": "completed", "usage": usage}
        await self._send(
            {"type": "response.completed", "sequence_number": 1, "response": done}, lane.stream_id
        )
        lane.latest = (resp_id, carried_on(spec, []))

    async def _failed(self, lane: _Lane, previous: Any, exc: OrchestratorError) -> None:
        if isinstance(previous, str):
            self._forget(lane, previous)
        await self._error(exc, lane.stream_id)

    @staticmethod
    def _forget(lane: _Lane, previous: str) -> None:
        """A turn that failed evicts the response it carried on (OpenAI's rule)."""
        if lane.latest is not None and lane.latest[0] == previous:
            lane.latest = None

    async def _error(self, exc: OrchestratorError, stream_id: str | None = None) -> None:
        await self._send(socket_error(exc, stream_id), None)

    async def _send(self, event: dict[str, Any], stream_id: str | None) -> None:
        """One event, one text frame. A client that takes none within `stream.send_timeout_s` is cut
        off (its responses are canceled after the grace, as a stalled stream's are)."""
        if stream_id is not None:
            event = {**event, "stream_id": stream_id}
        data = orjson.dumps(event).decode()
        try:
            async with self.sending, asyncio.timeout(self.send_timeout_s):
                await self.socket.send_text(data)
        except TimeoutError:
            log.info("socket_cut_off", why="the client took no frame", send_timeout_s=self.send_timeout_s)
            self._cut(CLOSE_TOO_SLOW, "the client took no frame in time")
            raise _Gone from None
        except (WebSocketDisconnect, RuntimeError):  # closed, by the client or by a shutdown
            raise _Gone from None


class _Gone(Exception):
    """The client can be sent nothing more."""


@router.websocket("/v1/responses")
async def responses_socket(socket: WebSocket, caller: Annotated[Caller, Depends(get_caller)]) -> None:
    """Responses over one WebSocket (OpenAI's WebSocket mode). The key is checked at the handshake:
    a wrong one is refused there with 401, in OpenAI's error shape."""
    await socket.accept()
    log.info("socket_opened")
    await _Socket(socket, caller).serve()
    log.info("socket_closed")
