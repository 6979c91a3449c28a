"""Who is calling: the key in ``Authorization: Bearer KEY`` (its id owns what it makes), or
the one anonymous owner of open mode. The front door (front_door.py) has checked it before
the body was read; this dependency hands its id to the routes (and documents the scheme in
the OpenAPI schema)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmq.api.http.errors import ApiError
from llmq.api.http.front_door import KEY_STATE, NO_KEY
from llmq.api.keys import authenticate
from llmq.settings import get_settings

bearer = HTTPBearer(auto_error=False, description="a key from `llmq keys create`")


async def caller(request: Request,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                 ) -> str | None:
    """The calling key's id (None in open mode)."""
    if get_settings().api_open:
        return None
    checked = getattr(request.state, KEY_STATE, None)
    if checked is not None:
        return str(checked)
    if credentials is None:
        raise ApiError(401, NO_KEY)
    key_id = await run_in_threadpool(authenticate, credentials.credentials)
    if key_id is None:
        raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
    return key_id
