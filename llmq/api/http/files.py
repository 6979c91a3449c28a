"""/v1/files: upload (multipart, purpose batch), list, retrieve, content, delete."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from llmq.api import files
from llmq.api.http.auth import caller

router = APIRouter(prefix="/v1/files", tags=["files"])

def clean_name(name: str) -> str:
    """An upload's name as it is kept for display: without control and format characters
    (bidirectional overrides that would show a name reversed, zero-width ones) and path
    separators, at most 300 characters."""
    kept = "".join("_" if c in "/\\" else c for c in name
                   if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    return kept.strip()[:300] or "upload.jsonl"


@router.post("")  # its size is bounded by the front door (front_door.py)
def upload(file: UploadFile = File(...), purpose: str = Form(..., max_length=30),
           expires_anchor: str | None = Form(None, alias="expires_after[anchor]",
                                             max_length=30),
           expires_seconds: str | None = Form(None, alias="expires_after[seconds]",
                                              max_length=20),
           owner: str | None = Depends(caller)) -> dict[str, Any]:
    """``expires_after`` comes as the OpenAI SDK sends it, ``expires_after[anchor]`` and
    ``expires_after[seconds]`` form fields."""
    name = clean_name(file.filename or "")
    expires_after = None
    if expires_anchor is not None or expires_seconds is not None:
        expires_after = files.expiry(expires_anchor, expires_seconds, "expires_after")
    return files.store_upload(file.file, name, purpose, owner, expires_after)


@router.get("")
def list_files(purpose: str | None = Query(None, max_length=30),
               after: str | None = Query(None, max_length=64),
               limit: int = Query(10_000, ge=1, le=10_000),
               order: Literal["asc", "desc"] = "desc",
               owner: str | None = Depends(caller)) -> dict[str, Any]:
    return files.list_files(owner, purpose=purpose, after=after, limit=limit, order=order)


@router.get("/{file_id}")
def retrieve(file_id: str, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return files.get_file(file_id, owner)


@router.get("/{file_id}/content", response_class=FileResponse)
def content(file_id: str, owner: str | None = Depends(caller)) -> FileResponse:
    return FileResponse(files.file_path(file_id, owner), media_type="application/octet-stream")


@router.delete("/{file_id}")
def delete(file_id: str, owner: str | None = Depends(caller)) -> dict[str, Any]:
    return files.delete_file(file_id, owner)
