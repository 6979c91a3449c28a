"""/v1/batches: create (idempotent), retrieve, cancel, list."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from pydantic import BaseModel, Field

from llmq.api import openai_batches
from llmq.api.http.auth import caller

router = APIRouter(prefix="/v1/batches", tags=["batches"])


class ExpiresAfter(BaseModel):
    anchor: str = Field(max_length=30)
    seconds: int


class BatchCreate(BaseModel):
    input_file_id: str = Field(max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: str = Field("24h", max_length=10,
                                   description="24h as OpenAI; llmq also takes 90m, 3600s, 2d")
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None


@router.post("")
def create(body: BatchCreate, owner: str | None = Depends(caller),
           idempotency_key: str | None = Header(None, max_length=200)) -> dict[str, Any]:
    return openai_batches.create_batch(
        owner, input_file_id=body.input_file_id, endpoint=body.endpoint,
        completion_window=body.completion_window, metadata=body.metadata,
        idempotency_key=idempotency_key,
        output_expires_after=None if body.output_expires_after is None else
        body.output_expires_after.model_dump())


@router.get("")
def list_batches(after: str | None = Query(None, max_length=40),
                 limit: int = Query(20, ge=1, le=100),
                 owner: str | None = Depends(caller)) -> dict[str, Any]:
    return openai_batches.list_batches(owner, after, limit)


@router.get("/{batch_id}")
def retrieve(batch_id: str, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return openai_batches.get_batch(owner, batch_id)


@router.post("/{batch_id}/cancel")
def cancel(batch_id: str, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return openai_batches.cancel_batch(owner, batch_id)
