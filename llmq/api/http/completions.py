"""/v1/chat/completions and /v1/completions, plain or streamed as server-sent events. The
request goes through the queues at high priority and this call waits for its result, so the
stream carries the whole text in one piece once it is ready (workers write results per
request, not per token)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from llmq.api import completions
from llmq.api.http.auth import caller
from llmq.api.http.errors import ApiError, as_api_error, error_body
from llmq.settings import get_settings

router = APIRouter(prefix="/v1", tags=["completions"])

KEEPALIVE_SECONDS = 15.0


class ChatCompletionRequest(BaseModel):
    """OpenAI's fields; the sampling ones are checked by llmq's request contract."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


async def _outcome(request_id: int, request: Request, stream: bool = False
                   ) -> AsyncIterator[dict[str, Any] | None]:
    """Polls for the request's end, yielding None every KEEPALIVE_SECONDS (a stream's
    comment line) and then the outcome; abandons the request if the caller leaves or the
    wait passes LLMQ_API_REQUEST_TIMEOUT."""
    deadline = time.monotonic() + get_settings().api_request_timeout
    pause, last_beat = 0.02, time.monotonic()
    while True:
        line = await run_in_threadpool(completions.outcome, request_id)
        if line is not None:
            yield line
            return
        if await request.is_disconnected() or time.monotonic() > deadline:
            await run_in_threadpool(completions.abandon, request_id)
            raise ApiError(504, "no result within LLMQ_API_REQUEST_TIMEOUT; the request was "
                           "cancelled", type="server_error")
        if stream and time.monotonic() - last_beat > KEEPALIVE_SECONDS:
            last_beat = time.monotonic()
            yield None
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.5)


def _body_of(line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and body a finished request answers with."""
    response = line.get("response")
    if response is not None:
        return response["status_code"], response["body"]
    error = line["error"]
    return 503, error_body(error["message"], "server_error", code=error["code"])


def _chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The completion as stream chunks: its text in one delta, then its finish reason."""
    chat = body["object"] == "chat.completion"
    kind = "chat.completion.chunk" if chat else "text_completion"
    choice = body["choices"][0]
    head = {"id": body["id"], "object": kind, "created": body["created"], "model": body["model"]}
    if chat:
        text = choice["message"]["content"]
        parts = [{"index": 0, "delta": {"content": text}, "finish_reason": None},
                 {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]
    else:
        parts = [{"index": 0, "text": choice["text"], "finish_reason": None, "logprobs": None},
                 {"index": 0, "text": "", "finish_reason": choice["finish_reason"],
                  "logprobs": None}]
    chunks = [{**head, "choices": [part]} for part in parts]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": body["usage"]})
    return chunks


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(request_id: int, public: str, request: Request, chat: bool,
                  include_usage: bool) -> AsyncIterator[str]:
    if chat:  # the role at once: the client knows the request is in
        yield _sse({"id": f"chatcmpl-{public}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": "",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]})
    try:
        async for line in _outcome(request_id, request, stream=True):
            if line is None:
                yield ": keepalive\n\n"
                continue
            status, body = _body_of(line)
            if status != 200:
                yield _sse(body)
            else:
                for chunk in _chunks(body, include_usage):
                    yield _sse(chunk)
    except Exception as exc:  # the status line is sent already: the error goes in-band
        error = as_api_error(exc)
        yield _sse(error_body(error.message, error.type, error.param, error.code))
    yield "data: [DONE]\n\n"


async def _complete(owner: str | None, url: str, body: dict[str, Any],
                    request: Request) -> Any:
    request_id, public = await run_in_threadpool(completions.start, owner, url, body)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_stream(request_id, public, request, "messages" in body,
                                         usage), media_type="text/event-stream")
    async for line in _outcome(request_id, request):
        if line is not None:
            status, answer = _body_of(line)
            return JSONResponse(answer, status_code=status)
    raise AssertionError("unreachable: an outcome ends the wait")


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           owner: str | None = Depends(caller)) -> Any:
    return await _complete(owner, "/v1/chat/completions",
                           body.model_dump(exclude_unset=True), request)


@router.post("/completions")
async def text_completions(body: CompletionRequest, request: Request,
                           owner: str | None = Depends(caller)) -> Any:
    return await _complete(owner, "/v1/completions", body.model_dump(exclude_unset=True),
                           request)
