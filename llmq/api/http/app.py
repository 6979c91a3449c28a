"""The ASGI application of ``llmq serve``: FastAPI routers over the service functions, errors
in OpenAI's shape, the schema at /openapi.json."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from llmq.api.http import batches, completions, errors, files, ops, ui, webhooks
from llmq.api.http.front_door import FrontDoor
from llmq.db.migrate import ensure_schema
from llmq.settings import get_settings


class OpenModeRefused(RuntimeError):
    pass


def check_binding(host: str) -> None:
    """Open mode (no keys) answers anyone who can connect: loopback only."""
    if not get_settings().api_open:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise OpenModeRefused(f"LLMQ_API_OPEN is set: refusing to listen on {host} (open mode "
                              "serves loopback only; create keys with `llmq keys create`)")


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(ensure_schema)  # an embedded SQLite database is made here
    yield


def create_app() -> FastAPI:
    # the schema at /openapi.json; no /docs or /redoc, whose pages load from a public CDN
    app = FastAPI(title="llmq", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="The OpenAI Files and Batches API over llmq's queues.")
    app.add_middleware(FrontDoor)
    errors.install(app)
    app.mount("/ui/static", ui.static, name="ui-static")
    for router in (files.router, batches.router, completions.router, webhooks.router,
                   ops.router, ui.router):
        app.include_router(router)
    return app
