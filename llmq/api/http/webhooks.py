"""/v1/webhook_endpoints (create, retrieve, update, list, delete, rotate_secret, test, and
llmq's deliveries) and /v1/webhook_event_types, in the shapes of OpenAI's SDK."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from llmq.api import webhooks
from llmq.api.http.auth import caller

router = APIRouter(prefix="/v1", tags=["webhooks"])
ID = Field(max_length=40)


class EndpointCreate(BaseModel):
    url: str = Field(max_length=2000)
    event_types: list[str] = Field(max_length=20)
    name: str | None = Field(None, max_length=200)


class EndpointUpdate(BaseModel):
    url: str | None = Field(None, max_length=2000)
    event_types: list[str] | None = Field(None, max_length=20)
    name: str | None = Field(None, max_length=200)


class RotateSecret(BaseModel):
    keep_old_secret_active_for_24_hours: bool = False


class TestEvent(BaseModel):
    event_type: str = Field("batch.completed", max_length=40)


@router.get("/webhook_event_types")
def event_types(owner: str | None = Depends(caller)) -> dict[str, Any]:
    return {"object": "list", "data": list(webhooks.EVENT_TYPES)}


@router.post("/webhook_endpoints")
def create(body: EndpointCreate, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return webhooks.create_endpoint(owner, url=body.url, event_types=body.event_types,
                                    name=body.name)


@router.get("/webhook_endpoints")
def list_endpoints(after: str | None = Query(None, max_length=40),
                   limit: int = Query(20, ge=1, le=100),
                   owner: str | None = Depends(caller)) -> dict[str, Any]:
    return webhooks.list_endpoints(owner, after, limit)


@router.get("/webhook_endpoints/{endpoint_id}")
def retrieve(endpoint_id: str, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return webhooks.get_endpoint(owner, endpoint_id)


@router.post("/webhook_endpoints/{endpoint_id}")
def update(endpoint_id: str, body: EndpointUpdate,
           owner: str | None = Depends(caller)) -> dict[str, Any]:
    return webhooks.update_endpoint(owner, endpoint_id, url=body.url,
                                    event_types=body.event_types, name=body.name)


@router.delete("/webhook_endpoints/{endpoint_id}")
def delete(endpoint_id: str, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return webhooks.delete_endpoint(owner, endpoint_id)


@router.post("/webhook_endpoints/{endpoint_id}/rotate_secret")
def rotate_secret(endpoint_id: str, body: RotateSecret | None = None,
                  owner: str | None = Depends(caller)) -> dict[str, Any]:
    keep = body.keep_old_secret_active_for_24_hours if body else False
    return webhooks.rotate_secret(owner, endpoint_id, keep_old=keep)


@router.post("/webhook_endpoints/{endpoint_id}/test")
def test(endpoint_id: str, body: TestEvent | None = None,
         owner: str | None = Depends(caller)) -> dict[str, Any]:
    return webhooks.test_endpoint(owner, endpoint_id,
                                  body.event_type if body else "batch.completed")


@router.get("/webhook_endpoints/{endpoint_id}/deliveries")
def deliveries(endpoint_id: str, limit: int = Query(20, ge=1, le=100),
               owner: str | None = Depends(caller)) -> dict[str, Any]:
    """llmq's own: the endpoint's newest deliveries, each with every attempt."""
    return {"object": "list", "data": webhooks.deliveries(owner, endpoint_id, limit)}
