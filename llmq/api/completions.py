"""/v1/chat/completions and /v1/completions as service functions: one request, stored as a
batch of one at high priority and sent to the same queues as everything else, so a quick
check shares engine steps with the bulk work instead of needing an engine of its own."""

from __future__ import annotations

import asyncio
from typing import Any

from llmq.api.files import InvalidRequest
from llmq.api.inputs import InputLimits, parse_record
from llmq.api.openai_batches import check_capacity, model_named
from llmq.api.output import openai_line, public_id
from llmq.api.service import enqueue, request_defaults, to_new_request
from llmq.db import openai_batches as rows
from llmq.db import queries
from llmq.db.models import RequestState, utcnow
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker.token_stream import END, decode_entries, new_text, stream_key


def start(owner: str | None, url: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """Stores and sends one request; returns its id, its public id (output.public_id) and
    the model that runs it."""
    if body.get("n") not in (None, 1):
        raise InvalidRequest("n: llmq writes one choice per request", "n")
    s = get_settings()
    try:
        item = parse_record({"custom_id": "request", "method": "POST", "url": url,
                             "body": body}, 1)
        InputLimits.of(s).check_prompt(item)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    check_capacity(owner, 1)
    model = model_named(body.get("model"))
    new = to_new_request(item, request_defaults())
    if body.get("stream"):  # its worker publishes its tokens as they come (token_stream)
        new.params["stream"] = True
    with session_scope() as session:
        batch = rows.add_http_batch(session, id=queries.new_batch_id(), name=url, model=model,
                                    device="any", priority="interactive", meta={},
                                    owner=owner,
                                    endpoint=url, validated_at=utcnow())
        batch_id = batch.id
        ids = queries.add_requests(session, batch_id, model, [new])
    enqueue(batch_id, ids, model, "any", "interactive")
    return ids[0], public_id(batch_id, new.custom_id), model


class TokenReader:
    """Reads one streamed request's pieces from Redis (``XREAD``, blocking up to a moment,
    never longer), from the entry after ``last_id``; a Redis that is away reads as nothing
    new (the caller also watches the database, which has the whole text at the end)."""

    def __init__(self, request_id: int, last_id: str = "0-0") -> None:
        self.key, self.last_id = stream_key(request_id), last_id
        self.emitted = 0  # characters sent to the client
        self.ended = False

    async def read(self, block_ms: int = 500) -> list[tuple[str, str]]:
        """(entry id, new text) of the pieces that came; sets ``ended`` at the end entry."""
        try:
            found = await _async_redis().xread({self.key: self.last_id}, block=block_ms,
                                               count=256)
        except Exception:
            await asyncio.sleep(block_ms / 1000)
            return []
        out = []
        for entry_id, fields in decode_entries(found):
            self.last_id = entry_id
            if END in fields:
                self.ended = True
                break
            text = new_text(self.emitted, fields)
            if text:
                self.emitted += len(text)
                out.append((entry_id, text))
        return out


_clients: dict[int, Any] = {}


def _async_redis() -> Any:
    """One asyncio Redis client per event loop (a client's connections belong to the loop
    that opened them)."""
    import redis.asyncio

    loop = id(asyncio.get_running_loop())
    if loop not in _clients:
        _clients[loop] = redis.asyncio.Redis.from_url(get_settings().broker_url,
                                                      socket_timeout=10,
                                                      socket_connect_timeout=5)
    return _clients[loop]


def outcome(request_id: int) -> dict[str, Any] | None:
    """The request's OpenAI batch line once it has ended (``response.body`` is the
    completion), else None."""
    with session_scope() as session:
        req, res = rows.request_with_result(session, request_id)
        if req.state in (RequestState.QUEUED, RequestState.RUNNING):
            return None
        return openai_line(req, res)


def abandon(request_id: int) -> None:
    """The caller has gone: the request leaves its engine at the next step."""
    with session_scope() as session:
        req, _ = rows.request_with_result(session, request_id)
        queries.cancel_batch(session, req.batch_id)
