"""Errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``) with the
status codes its SDKs map to exceptions, for every way a call can fail."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from llmq.api.files import FileTooLarge, InvalidRequest
from llmq.api.inputs import InputFileError
from llmq.api.openai_batches import Backpressure
from llmq.api.service import EnqueueError, NotFound
from llmq.db.migrate import SchemaOutOfDate

log = logging.getLogger("llmq.api")


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers


EXPECTED = (ApiError, NotFound, InvalidRequest, InputFileError, FileTooLarge, Backpressure,
            EnqueueError, OperationalError, SchemaOutOfDate)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def respond(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.type, error.param, error.code),
                        status_code=error.status, headers=error.headers)


def as_api_error(exc: Exception) -> ApiError:
    """The API error of an exception the service raised."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc).strip("'\""))
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), param=exc.param)
    if isinstance(exc, InputFileError):
        return ApiError(400, str(exc))
    if isinstance(exc, FileTooLarge):
        return ApiError(413, str(exc), param="file")
    if isinstance(exc, Backpressure):
        return ApiError(429, str(exc), type="rate_limit_exceeded", code="rate_limit_exceeded",
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, EnqueueError | OperationalError | SchemaOutOfDate):
        kind = "the broker" if isinstance(exc, EnqueueError) else "the database"
        return ApiError(503, f"{kind} is unavailable; try again", type="server_error",
                        headers={"Retry-After": "5"})
    log.exception("unexpected error", exc_info=exc)
    return ApiError(500, "internal error (logged by the server)", type="server_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    return f"{param + ': ' if param else ''}{first.get('msg', 'invalid request')}", param


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return respond(ApiError(400, message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return respond(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    async def expected(_: Request, exc: Exception) -> JSONResponse:
        return respond(as_api_error(exc))

    # each expected error by its class: a handler of Exception itself runs in Starlette's
    # outermost middleware, which logs a traceback after answering
    for cls in EXPECTED:
        app.add_exception_handler(cls, expected)
    app.add_exception_handler(Exception, expected)
