"""The shared, pipelined Redis connection (orchestratord/state/redis_line.py) against a real
redis-server: many callers at once on one connection, each with its own reply; transactions; scripts
Redis forgot; a caller that gives up; a Redis that restarts or stops answering."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from redis.exceptions import AuthenticationError, MovedError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from orchestratord.state.redis_client import stop
from orchestratord.state.redis_line import ErrorReply, Line, exception_of, pack
from tests.redis.conftest import RedisServer

pytestmark = pytest.mark.redis


def test_a_command_is_packed_as_resp_bulk_strings() -> None:
    assert pack(("SET", "k", 1, 0.5, b"\x00")) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n0.5\r\n$1\r\n\x00\r\n"
    )
    with pytest.raises(TypeError):
        pack(("SET", "k", True))


async def test_many_callers_at_once_share_one_connection_and_each_gets_its_own_reply(
    own_redis: RedisServer,
) -> None:
    line = Line(own_redis.url)
    try:
        key = "line:many"
        await line.execute("DEL", key)
        replies = await asyncio.gather(*(line.execute("ECHO", f"caller {n}") for n in range(2_000)))
        assert replies == [f"caller {n}" for n in range(2_000)]
        counts = await asyncio.gather(*(line.execute("INCR", key) for _ in range(500)))
        assert sorted(counts) == list(range(1, 501))
        assert line.connections == 1
        assert len(own_redis.client().client_list()) == 2  # the line's one, and this test's own
    finally:
        await line.aclose()


async def test_error_replies_are_redis_py_exceptions_and_the_line_goes_on(redis_server: RedisServer) -> None:
    line = Line(redis_server.url)
    try:
        await line.execute("SET", "line:text", "x")
        with pytest.raises(ResponseError, match="not an integer"):
            await line.execute("INCR", "line:text")
        with pytest.raises(NoScriptError):
            await line.execute("EVALSHA", "0" * 40, 0)
        assert await line.execute("GET", "line:text") == "x"
        assert await line.execute("HGETALL", "line:none") == []
        assert await line.execute("GET", "line:none") is None
    finally:
        await line.aclose()


async def test_a_transaction_runs_whole_and_its_errors_surface(redis_server: RedisServer) -> None:
    line = Line(redis_server.url)
    try:
        await line.execute("DEL", "line:tx", "line:tx:text")
        # Other callers' commands go out in the same turn; the transaction's replies are its own.
        echoes = [line.execute("ECHO", str(n)) for n in range(50)]
        replies, *rest = await asyncio.gather(
            line.transaction([("INCR", "line:tx"), ("INCRBY", "line:tx", 2), ("GET", "line:tx")]), *echoes
        )
        assert replies == [1, 3, "3"]
        assert rest == [str(n) for n in range(50)]
        await line.execute("SET", "line:tx:text", "x")
        with pytest.raises(ResponseError, match="not an integer"):
            await line.transaction([("INCR", "line:tx"), ("INCR", "line:tx:text")])
        assert await line.execute("GET", "line:tx") == "4"  # the good command of it ran
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await line.transaction([("INCR", "line:tx"), ("GET",)])  # refused when queued: nothing runs
        assert await line.execute("GET", "line:tx") == "4"
    finally:
        await line.aclose()


async def test_a_script_redis_forgot_is_sent_again_whole(redis_server: RedisServer) -> None:
    line = Line(redis_server.url)
    source = "return {KEYS[1], ARGV[1], 7}"
    sha = hashlib.sha1(source.encode()).hexdigest()
    try:
        await line.execute("SCRIPT", "FLUSH")
        assert await line.evalsha(sha, source, ["line:k"], ["a"]) == ["line:k", "a", 7]
        assert await line.execute("SCRIPT", "EXISTS", sha) == [1]  # EVAL cached it
        assert await line.evalsha(sha, source, ["line:k"], ["b"]) == ["line:k", "b", 7]
    finally:
        await line.aclose()


async def test_a_caller_that_gives_up_leaves_the_others_their_replies(redis_server: RedisServer) -> None:
    line = Line(redis_server.url)
    try:
        first = asyncio.ensure_future(line.execute("ECHO", "dropped"))
        second = asyncio.ensure_future(line.execute("ECHO", "kept"))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == "kept"
        assert await line.execute("ECHO", "next") == "next"
        assert first.cancelled()
        assert line.connections == 1  # a cancel is not a dead connection
    finally:
        await line.aclose()


async def test_a_restarted_redis_fails_what_was_in_flight_once_and_the_next_call_reconnects(
    own_redis: RedisServer,
) -> None:
    line = Line(own_redis.url, timeout_s=2.0)
    try:
        assert await line.execute("INCR", "line:n") == 1
        own_redis.stop()
        with pytest.raises((RedisConnectionError, OSError)):
            await line.execute("INCR", "line:n")
        own_redis.start()  # empty: nothing is persisted
        assert await line.execute("INCR", "line:n") == 1
        assert line.connections == 2
    finally:
        await line.aclose()


async def test_a_redis_that_stops_answering_is_dropped_after_a_whole_timeout(own_redis: RedisServer) -> None:
    """The line keeps each call's deadline itself (no caller sets a timer): when the oldest command in
    flight has waited a whole timeout, the connection goes and every call in flight fails with it;
    the next call connects again."""
    line = Line(own_redis.url, timeout_s=0.5)
    try:
        assert await line.execute("PING") == "PONG"
        own_redis.pause()
        first = asyncio.ensure_future(line.execute("PING"))
        await asyncio.sleep(0.2)
        later = asyncio.ensure_future(line.execute("ECHO", "behind it"))
        # the outer bound only keeps a broken line from hanging the test
        done, _ = await asyncio.wait({first, later}, timeout=5)
        assert done == {first, later}
        for call in (first, later):
            with pytest.raises(RedisConnectionError, match=r"did not answer within 0\.5 s"):
                call.result()
        own_redis.resume()
        assert await line.execute("PING") == "PONG"
        assert line.connections == 2  # the silent connection was closed, a new one opened
    finally:
        own_redis.resume()
        await line.aclose()


async def test_a_password_and_a_database_in_the_url_are_used(own_redis: RedisServer) -> None:
    admin = own_redis.client()
    admin.config_set("requirepass", "s3cret")
    line = Line(f"redis://:s3cret@127.0.0.1:{own_redis.port}/3")
    wrong = Line(f"redis://:nope@127.0.0.1:{own_redis.port}/0")
    try:
        await line.execute("SET", "line:db", "three")
        assert await line.execute("GET", "line:db") == "three"
        with pytest.raises(AuthenticationError):
            await wrong.execute("PING")
    finally:
        await line.aclose()
        await wrong.aclose()


def test_a_moved_reply_is_redis_pys_moved_error() -> None:
    moved = exception_of(ErrorReply("MOVED 3999 127.0.0.1:7001"))
    assert isinstance(moved, MovedError)
    assert (moved.host, moved.port) == ("127.0.0.1", 7001)


async def test_a_task_root_is_stopped_even_when_it_swallows_a_cancel() -> None:
    """redis-py retries a read whose timeout fired together with a cancel, and the cancel is lost:
    `stop` asks again until the task has ended (closing a store on a cluster hung without it)."""
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()  # as a library that turns it into an error and retries

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop(task), 5)
    assert task.cancelled() and swallowed == 1
