"""Streamed tokens through a real Redis: stop strings never reach a reader, a second attempt's
pieces are not read twice, an end entry ends the read, and a slow reader costs a bounded
stream."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmq.api.completions import TokenReader
from llmq.settings import get_settings
from llmq.worker import broker
from llmq.worker.token_stream import MAX_ENTRIES, Publisher, stream_key
from tests.private_servers import RedisServer


@pytest.fixture
def publisher(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Publisher:
    redis_server.flush()
    monkeypatch.setenv("LLMQ_BROKER_URL", redis_server.url)
    get_settings.cache_clear()
    return Publisher(redis_server.url)


def read_all(reader: TokenReader) -> str:
    async def go() -> str:
        text = ""
        for _ in range(20):
            text += "".join(t for _, t in await reader.read(block_ms=100))
            if reader.ended:
                break
        return text
    return asyncio.run(go())


def settle(publisher: Publisher) -> None:
    deadline = time.time() + 10
    while publisher._queue.qsize() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)


def test_text_that_may_begin_a_stop_string_is_held_back(publisher: Publisher) -> None:
    on_token = publisher.pieces(1, ["\n\nUser:"])
    for piece in ["Hello", " there", "\n", "\n", "Us"]:  # the engine would cut at the stop
        on_token(piece, 0)
    publisher.end(1)
    settle(publisher)
    assert read_all(TokenReader(1)) == "Hello there"  # "\n\nUs" could still be the stop
    publisher.close()


def test_a_retried_attempt_is_not_read_twice_and_the_end_ends(publisher: Publisher) -> None:
    for attempt in (["Once", " upon"], ["Once", " upon", " a", " time"]):
        on_token = publisher.pieces(2)
        for piece in attempt:
            on_token(piece, 0)
    publisher.end(2)
    settle(publisher)
    reader = TokenReader(2)
    assert read_all(reader) == "Once upon a time" and reader.ended
    publisher.close()


def test_a_stream_nobody_reads_stays_bounded_and_expires(publisher: Publisher,
                                                         redis_server: RedisServer) -> None:
    on_token = publisher.pieces(3)
    for i in range(3 * MAX_ENTRIES):
        on_token(f"{i} ", 0)
    settle(publisher)
    client = broker.client(redis_server.url)
    assert client.xlen(stream_key(3)) < 2 * MAX_ENTRIES
    assert 0 < client.ttl(stream_key(3)) <= 600
    publisher.close()
