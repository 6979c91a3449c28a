"""How results leave llmq: our JSON lines, or OpenAI batch output lines."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from typing import Any

from llmq.contract import FinishReason, RequestKind, ResultLine, Usage
from llmq.db.models import Request, RequestState, Result


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of sorted ``values``, in ms to 0.1."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "p99": round(q[98], 1)}


JSON_FORMATS = ("json_object", "json_schema")


def parsed(req: Request, res: Result | None) -> Any:
    """The JSON value of a completed request whose response format is JSON, else None: the
    grammar guarantees the text parses once the structure has closed (finish_reason stop)."""
    fmt = (req.params or {}).get("response_format") or {}
    if res is None or fmt.get("type") not in JSON_FORMATS or res.finish_reason != "stop":
        return None
    try:
        return json.loads(res.text)
    except ValueError:
        return None


def result_line(req: Request, res: Result | None) -> ResultLine:
    timing: dict[str, Any] = {}
    usage = Usage(prompt_tokens=None, completion_tokens=None)
    if res is not None:
        usage = Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens)
        timing = {
            "queue_ms": res.queue_ms, "prefill_ms": res.prefill_ms,
            "decode_ms": res.decode_ms, "total_ms": res.total_ms,
            "engine_batch_size": res.engine_batch_size, "device": res.device,
            "worker": f"{res.worker_host}:{res.worker_pid}", "model": res.model,
        }
    return ResultLine(
        custom_id=req.custom_id,
        status=req.state,
        text=res.text if res is not None else None,
        finish_reason=res.finish_reason if res is not None else None,
        parsed=parsed(req, res),
        usage=usage,
        error=req.last_error,
        timing=timing,
    )


def openai_finish_reason(reason: str) -> str:
    """OpenAI's clients know only its own reasons: a loop stopped early is a "stop" there
    (llmq's own result shape keeps "repetition")."""
    return FinishReason.STOP if reason == FinishReason.REPETITION else reason


def public_id(batch_id: str, custom_id: str) -> str:
    """The id that OpenAI's lines give a request: a digest of its batch's random id and its
    custom id (unique in the batch), stable across downloads and, unlike the database's
    sequential id, silent about how many requests came before it."""
    return hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


def openai_error_line(req: Request) -> dict[str, Any]:
    """A request that has no result, as OpenAI's error files write one: a line that was
    never a valid request answers 400, a failure 500 (both with an error body); a cancelled
    or expired request has no response, only an error code."""
    rid = public_id(req.batch_id, req.custom_id)
    if req.state == RequestState.FAILED:
        invalid = req.kind == RequestKind.INVALID
        error = {"message": req.last_error or "failed", "param": None, "code": None,
                 "type": "invalid_request_error" if invalid else "server_error"}
        response = {"status_code": 400 if invalid else 500, "request_id": f"req_{rid}",
                    "body": {"error": error}}
        return {"id": f"batch_req_{rid}", "custom_id": req.custom_id,
                "response": response, "error": None}
    code = "batch_expired" if (req.last_error or "").startswith("batch_expired") else (
        f"batch_{req.state}")
    return {"id": f"batch_req_{rid}", "custom_id": req.custom_id, "response": None,
            "error": {"code": code, "message": req.last_error or f"the request was {req.state}"}}


def openai_line(req: Request, res: Result | None) -> dict[str, Any]:
    """One line of an OpenAI batch output file (or, without a result, of its error file)."""
    if res is None:
        return openai_error_line(req)
    usage = {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
             "total_tokens": res.prompt_tokens + res.completion_tokens,
             "prompt_tokens_details": {"cached_tokens": res.cached_tokens}}
    created = int(res.created_at.timestamp()) if res.created_at else int(time.time())
    rid = public_id(req.batch_id, req.custom_id)
    if req.kind == "chat":
        body: dict[str, Any] = {
            "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": created,
            "model": res.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text},
                         "finish_reason": openai_finish_reason(res.finish_reason)}],
            "usage": usage,
        }
    else:
        body = {
            "id": f"cmpl-{rid}", "object": "text_completion", "created": created,
            "model": res.model,
            "choices": [{"index": 0, "text": res.text,
                         "finish_reason": openai_finish_reason(res.finish_reason)}],
            "usage": usage,
        }
    return {"id": f"batch_req_{rid}", "custom_id": req.custom_id,
            "response": {"status_code": 200, "request_id": f"req_{rid}", "body": body},
            "error": None}
