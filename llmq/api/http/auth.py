"""Who is calling: the key in ``Authorization: Bearer KEY`` (its id owns what it makes), or
the one anonymous owner of open mode."""

from __future__ import annotations

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmq.api.http.errors import ApiError
from llmq.api.keys import authenticate
from llmq.settings import get_settings

bearer = HTTPBearer(auto_error=False, description="a key from `llmq keys create`")


async def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
                 ) -> str | None:
    """The calling key's id (None in open mode)."""
    if get_settings().api_open:
        return None
    if credentials is None:
        raise ApiError(401, "You didn't provide an API key: pass `Authorization: Bearer KEY` "
                       "(keys come from `llmq keys create`)")
    key_id = await run_in_threadpool(authenticate, credentials.credentials)
    if key_id is None:
        raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
    return key_id
