"""Tokens of streamed requests, from the worker that runs them to the API process that holds
the client's connection, through Redis Streams: one stream per request (``XADD`` capped at
``MAX_ENTRIES`` and expiring ``TTL_SECONDS`` after its last entry), its entry ids the SSE
ids, and an end entry once the result is in the database, which stays the truth (the API
reads the final text, finish reason and usage there, and sends what the pieces lacked).

The engine's thread only appends to a bounded queue; one publisher thread per worker sends
the entries in pipelines. A Redis that is slow or away, or a full queue, drops pieces (the
client then gets the rest from the database at the end), never blocks the engine, and a
slow reader costs Redis at most ``MAX_ENTRIES`` entries per request."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from llmq.worker import broker

log = logging.getLogger(__name__)

MAX_ENTRIES = 4096
TTL_SECONDS = 600
QUEUE_ITEMS = 50_000
END = "end"


def stream_key(request_id: int | str) -> str:
    return f"llmq:tokens:{request_id}"


class Publisher:
    """A worker's publisher of token pieces (one thread; ``close`` drains it)."""

    def __init__(self, broker_url: str) -> None:
        self.url = broker_url
        self._queue: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue(QUEUE_ITEMS)
        self._thread = threading.Thread(target=self._run, name="llmq-token-stream",
                                        daemon=True)
        self._thread.start()
        self._warned = False

    def pieces(self, request_id: int, stop: tuple[str, ...] | list[str] = ()
               ) -> Callable[[str, int], None]:
        """The engine's ``on_token`` for one request. Text that could be the start of a stop
        string is held back until it cannot (the engine cuts a stop from the result, so it
        must never reach the client)."""
        key = stream_key(request_id)
        text, sent = "", 0

        def on_token(piece: str, _token: int) -> None:
            nonlocal text, sent
            text += piece
            ready = len(text) - held_back(text, stop)
            if ready > sent:  # with its offset: a second attempt's pieces repeat the first's
                self._put(key, {"t": text[sent:ready], "o": str(sent)})
                sent = ready
        return on_token

    def end(self, request_id: int) -> None:
        """The result is stored: readers may read it."""
        self._put(stream_key(request_id), {END: "1"})

    def _put(self, key: str, fields: dict[str, str]) -> None:
        try:
            self._queue.put_nowait((key, fields))
        except queue.Full:
            self._warn("the token queue is full")

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("streamed tokens dropped (%s): clients get the rest of the text "
                        "when the request ends", why)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 256:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._send(batch)
                    return
                batch.append(nxt)
            self._send(batch)

    def _send(self, batch: list[tuple[str, dict[str, str]]]) -> None:
        try:
            pipe = broker.client(self.url).pipeline(transaction=False)
            for key, fields in batch:
                pipe.xadd(key, fields, maxlen=MAX_ENTRIES, approximate=True)  # type: ignore[arg-type]
            for key in dict.fromkeys(k for k, _ in batch):
                pipe.expire(key, TTL_SECONDS)
            pipe.execute()
        except Exception as exc:  # Redis away: the database has the whole text
            self._warn(f"Redis: {exc}")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


def held_back(text: str, stops: tuple[str, ...] | list[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


def new_text(emitted: int, fields: dict[str, str]) -> str:
    """What a piece adds to the ``emitted`` characters a reader has sent (nothing when a
    retried attempt sends again what the first one did)."""
    piece, offset = fields.get("t", ""), int(fields.get("o", emitted))
    return piece[emitted - offset:] if offset <= emitted < offset + len(piece) else ""


def decode_entries(found: Any) -> list[tuple[str, dict[str, str]]]:
    """``XREAD``'s answer for one stream as (entry id, fields) pairs, decoded."""
    out = []
    for _, entries in found or []:
        for entry_id, fields in entries:
            out.append((entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                        {(k.decode() if isinstance(k, bytes) else k):
                         (v.decode() if isinstance(v, bytes) else v)
                         for k, v in fields.items()}))
    return out
