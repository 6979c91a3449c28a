"""/v1/chat/completions and /v1/completions, plain or streamed as server-sent events. The
request goes to the workers as the interactive priority class (llmq.worker.express); a
streamed one's worker publishes its tokens as they come (llmq.worker.token_stream), and its
stored result ends the stream."""

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


async def _outcome(request_id: int, request: Request) -> dict[str, Any]:
    """Polls for the request's end and returns its outcome; abandons the request if the
    caller leaves or the wait passes LLMQ_API_REQUEST_TIMEOUT."""
    deadline = time.monotonic() + get_settings().api_request_timeout
    pause = 0.02
    while True:
        line = await run_in_threadpool(completions.outcome, request_id)
        if line is not None:
            return line
        if await request.is_disconnected() or time.monotonic() > deadline:
            await run_in_threadpool(completions.abandon, request_id)
            raise ApiError(504, "no result within LLMQ_API_REQUEST_TIMEOUT; the request was "
                           "cancelled", type="server_error")
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.5)


def _body_of(line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and body a finished request answers with."""
    response = line.get("response")
    if response is not None:
        return response["status_code"], response["body"]
    error = line["error"]
    return 503, error_body(error["message"], "server_error", code=error["code"])


def _last_chunks(body: dict[str, Any], rest: str, include_usage: bool) -> list[dict[str, Any]]:
    """The end of a stream: the text the pieces lacked (``rest``), the finish reason, and
    the usage when asked for."""
    chat = body["object"] == "chat.completion"
    kind = "chat.completion.chunk" if chat else "text_completion"
    reason = body["choices"][0]["finish_reason"]
    head = {"id": body["id"], "object": kind, "created": body["created"], "model": body["model"]}
    if chat:
        parts = [{"index": 0, "delta": {"content": rest}, "finish_reason": None}] if rest else []
        parts.append({"index": 0, "delta": {}, "finish_reason": reason})
    else:
        parts = [{"index": 0, "text": rest, "finish_reason": None, "logprobs": None}
                 ] if rest else []
        parts.append({"index": 0, "text": "", "finish_reason": reason, "logprobs": None})
    chunks = [{**head, "choices": [part]} for part in parts]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": body["usage"]})
    return chunks


def _sse(data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(request_id: int, public: str, model: str, request: Request, chat: bool,
                  include_usage: bool) -> AsyncIterator[str]:
    """Pieces as the worker publishes them (each event's id its Redis entry id), then the
    rest from the stored result: the database decides the text, the stream only hurries
    it. Watches the database too, once a second, so a lost end entry cannot hang it."""
    created = int(time.time())
    head = ({"id": f"chatcmpl-{public}", "object": "chat.completion.chunk"} if chat else
            {"id": f"cmpl-{public}", "object": "text_completion"})
    head = {**head, "created": created, "model": model}
    if chat:  # the role at once: the client knows the request is in
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                 "content": ""},
                                         "finish_reason": None}]})
    reader = completions.TokenReader(request_id)
    deadline = time.monotonic() + get_settings().api_request_timeout
    looked = last_beat = time.monotonic()
    try:
        while True:
            for entry_id, text in await reader.read():
                part = ({"index": 0, "delta": {"content": text}, "finish_reason": None}
                        if chat else {"index": 0, "text": text, "finish_reason": None,
                                      "logprobs": None})
                yield _sse({**head, "choices": [part]}, entry_id)
                last_beat = time.monotonic()
            now = time.monotonic()
            if reader.ended or now - looked > 1.0:
                looked = now
                line = await run_in_threadpool(completions.outcome, request_id)
                if line is not None:
                    status, body = _body_of(line)
                    if status != 200:
                        yield _sse(body)
                        break
                    text = (body["choices"][0]["message"]["content"] if chat
                            else body["choices"][0]["text"]) or ""
                    # a loop cut after its pieces were sent leaves the text shorter: the
                    # client has what it has
                    rest = text[reader.emitted:] if len(text) > reader.emitted else ""
                    for chunk in _last_chunks(body, rest, include_usage):
                        yield _sse(chunk)
                    break
            if await request.is_disconnected() or now > deadline:
                await run_in_threadpool(completions.abandon, request_id)
                raise ApiError(504, "no result within LLMQ_API_REQUEST_TIMEOUT; the request "
                               "was cancelled", type="server_error")
            if now - last_beat > KEEPALIVE_SECONDS:
                last_beat = now
                yield ": keepalive\n\n"
    except Exception as exc:  # the status line is sent already: the error goes in-band
        error = as_api_error(exc)
        yield _sse(error_body(error.message, error.type, error.param, error.code))
    yield "data: [DONE]\n\n"


async def _complete(owner: str | None, url: str, body: dict[str, Any],
                    request: Request) -> Any:
    request_id, public, model = await run_in_threadpool(completions.start, owner, url, body)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_stream(request_id, public, model, request,
                                         "messages" in body, usage),
                                 media_type="text/event-stream")
    status, answer = _body_of(await _outcome(request_id, request))
    return JSONResponse(answer, status_code=status)


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
