"""What ``llmq serve`` lets in, decided from the headers before a byte of the body is read.

FastAPI reads (and spools to disk) a request's whole body before its dependencies run, so a
key checked by a dependency is checked after an unauthenticated caller has sent gigabytes.
This ASGI middleware runs first: a /v1 call without a live key gets 401 and a declared
length over the route's limit 413, both before the body is read. A body without a length
(chunked) is counted as it arrives and cut where it passes the limit; one that stalls
between chunks, or is not whole by a deadline, gets 408; the bytes of uploads in flight are
bounded per key (429) and for the server (503), so that what they spool to disk stays
bounded. (FastAPI's own ``max_body_size`` answers in plain text, and its app-wide limit runs
outside every middleware, so before the key is checked.)
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmq.api.http.errors import as_api_error, error_body, respond
from llmq.api.keys import authenticate
from llmq.settings import Settings, get_settings

UPLOADS = "/v1/files"
MULTIPART_SLACK = 64 << 10  # a multipart form's own bytes around the file
NO_KEY = ("You didn't provide an API key: pass `Authorization: Bearer KEY` (keys come from "
          "`llmq keys create`)")
KEY_STATE = "llmq_key_id"  # where the authenticated key's id waits for auth.caller
PAGE_FORM_BYTES = 16 << 10  # a sign-in or a button of the status page


def body_limit(scope: Scope, settings: Settings) -> tuple[int, str]:
    """The most bytes a body of this route may have, and the setting that says so: an
    upload's cap and its form, or for any JSON body the cap of one input line (a request is
    what one line of a batch file is)."""
    if is_upload(scope):
        return settings.api_max_file_bytes + MULTIPART_SLACK, "LLMQ_API_MAX_FILE_BYTES"
    if is_page(scope):
        return PAGE_FORM_BYTES, "the status page's forms"
    return settings.max_line_bytes, "LLMQ_MAX_LINE_BYTES"


def is_page(scope: Scope) -> bool:
    """The status page (/ui): it signs people in with its own cookie (api/http/ui.py)."""
    return scope["path"] == "/ui" or scope["path"].startswith("/ui/")


def is_upload(scope: Scope) -> bool:
    return scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOADS


def declared_length(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.decode("latin-1")
    return None


def bearer_token(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer TOKEN``; None for no header, another scheme or
    an empty token (as FastAPI's HTTPBearer reads it)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


class UploadsInFlight:
    """Bytes of upload bodies received and not yet finished, per key and in all (one event
    loop per process: no lock)."""

    def __init__(self) -> None:
        self.total = 0
        self.per_key: defaultdict[str | None, int] = defaultdict(int)

    def add(self, key: str | None, n: int, settings: Settings) -> None:
        if self.per_key[key] + n > settings.api_max_uploading_bytes_per_key:
            raise HTTPException(429, "this key's uploads in progress are over "
                                f"{settings.api_max_uploading_bytes_per_key:,} bytes "
                                "(LLMQ_API_MAX_UPLOADING_BYTES_PER_KEY); try again when they "
                                "finish", headers={"Retry-After": str(settings.api_retry_after)})
        if self.total + n > settings.api_max_uploading_bytes:
            raise HTTPException(503, "the server's uploads in progress are over "
                                f"{settings.api_max_uploading_bytes:,} bytes "
                                "(LLMQ_API_MAX_UPLOADING_BYTES); try again",
                                headers={"Retry-After": str(settings.api_retry_after)})
        self.per_key[key] += n
        self.total += n

    def release(self, key: str | None, n: int) -> None:
        self.total -= n
        self.per_key[key] -= n
        if not self.per_key[key]:
            del self.per_key[key]


class FrontDoor:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.uploads = UploadsInFlight()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        path = scope["path"]
        page = is_page(scope)
        if not (page or path.startswith("/v1/")
                or (path == "/metrics" and settings.api_metrics_need_key)):
            await self.app(scope, receive, send)
            return
        key: str | None = None
        if not (settings.api_open or page):
            token = bearer_token(scope)
            try:
                key = await run_in_threadpool(authenticate, token) if token else None
            except Exception as exc:  # the database down: 503, as the routes answer it
                await respond(as_api_error(exc))(scope, receive, send)
                return
            if key is None:
                await refuse(scope, receive, send, 401, NO_KEY if token is None else
                             "Incorrect API key provided", code=None if token is None else
                             "invalid_api_key")
                return
            scope.setdefault("state", {})[KEY_STATE] = key
        limit, setting = body_limit(scope, settings)
        over = f"over the limit of {limit:,} bytes for {scope['path']} ({setting})"
        length = declared_length(scope)
        if length is not None and not length.isdigit():
            await refuse(scope, receive, send, 400, f"Content-Length {length[:40]!r} is not "
                         "a number of bytes")
            return
        if length is not None and int(length) > limit:
            await refuse(scope, receive, send, 413, f"the body is {int(length):,} bytes, {over}")
            return
        body = WatchedBody(receive, limit, over, settings,
                           (self.uploads, key) if is_upload(scope) else None)
        try:
            await self.app(scope, body.receive, send)
        finally:
            body.release()


class WatchedBody:
    """A request's ``receive`` that counts the body's bytes and cuts it at the limit, times
    out a stalled body and reserves an upload's bytes as they arrive; once the body is whole
    it passes through (a streamed response waits on it for the client's disconnect, with no
    timeout). Its errors are HTTPExceptions, which FastAPI's body parsing lets through to
    the app's handlers (errors.py)."""

    def __init__(self, receive: Receive, limit: int, over: str, settings: Settings,
                 upload: tuple[UploadsInFlight, str | None] | None) -> None:
        self._receive, self.limit, self.over = receive, limit, over
        self.settings, self.upload = settings, upload
        self.deadline = time.monotonic() + settings.api_body_deadline
        self.received = 0
        self.reserved = 0
        self.whole = False

    async def receive(self) -> Message:
        if self.whole:
            return await self._receive()
        settings = self.settings
        left = self.deadline - time.monotonic()
        wait = min(settings.api_body_timeout, left)
        try:
            message = await asyncio.wait_for(self._receive(), max(wait, 0.0))
        except TimeoutError:
            if wait < settings.api_body_timeout:
                raise HTTPException(408, "the body is not whole after "
                                    f"{settings.api_body_deadline:g} s "
                                    "(LLMQ_API_BODY_DEADLINE)") from None
            raise HTTPException(408, f"the body stalled: no bytes for "
                                f"{settings.api_body_timeout:g} s (LLMQ_API_BODY_TIMEOUT)"
                                ) from None
        if message["type"] != "http.request":
            self.whole = True
            return message
        chunk = len(message.get("body", b""))
        self.received += chunk
        if self.received > self.limit:
            raise HTTPException(413, f"the body is {self.over}")
        if self.upload is not None and chunk:
            uploads, key = self.upload
            uploads.add(key, chunk, settings)
            self.reserved += chunk
        self.whole = not message.get("more_body", False)
        if not self.whole and time.monotonic() > self.deadline:
            raise HTTPException(408, f"the body is not whole after "
                                f"{settings.api_body_deadline:g} s (LLMQ_API_BODY_DEADLINE)")
        return message

    def release(self) -> None:
        if self.upload is not None and self.reserved:
            self.upload[0].release(self.upload[1], self.reserved)
            self.reserved = 0


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                 code: str | None = None) -> None:
    """Answers without reading the body (the server closes the connection rather than read
    what the client still sends)."""
    response = JSONResponse(error_body(message, code=code), status_code=status,
                            headers={"Connection": "close"})
    await response(scope, receive, send)
