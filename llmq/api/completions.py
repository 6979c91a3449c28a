"""/v1/chat/completions and /v1/completions as service functions: one request, stored as a
batch of one at high priority and sent to the same queues as everything else, so a quick
check shares engine steps with the bulk work instead of needing an engine of its own."""

from __future__ import annotations

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


def start(owner: str | None, url: str, body: dict[str, Any]) -> tuple[int, str]:
    """Stores and sends one request; returns its id and its public id (output.public_id)."""
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
    with session_scope() as session:
        batch = rows.add_http_batch(session, id=queries.new_batch_id(), name=url, model=model,
                                    device="any", priority="high", meta={}, owner=owner,
                                    endpoint=url, validated_at=utcnow())
        batch_id = batch.id
        ids = queries.add_requests(session, batch_id, model, [new])
    enqueue(batch_id, ids, model, "any", "high")
    return ids[0], public_id(batch_id, new.custom_id)


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
