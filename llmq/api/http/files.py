"""/v1/files: upload (multipart, purpose batch), list, retrieve, content, delete."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse

from llmq.api import files
from llmq.api.http.auth import caller
from llmq.api.http.errors import ApiError
from llmq.settings import get_settings

router = APIRouter(prefix="/v1/files", tags=["files"])

MULTIPART_SLACK = 64 << 10  # the form's own bytes around the file
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f/\\]")


def size_cap(request: Request) -> None:
    """Refuses an upload whose declared length is over the cap before reading its body (one
    without a length is counted as it is copied)."""
    length = request.headers.get("content-length", "")
    cap = get_settings().api_max_file_bytes
    if length.isdigit() and int(length) > cap + MULTIPART_SLACK:
        raise ApiError(413, f"the upload is {int(length):,} bytes, over the limit of {cap:,} "
                       "(LLMQ_API_MAX_FILE_BYTES)", param="file")


@router.post("", dependencies=[Depends(size_cap)])
def upload(file: UploadFile = File(...), purpose: str = Form(..., max_length=30),
           owner: str | None = Depends(caller)) -> dict[str, Any]:
    name = UNPRINTABLE.sub("_", file.filename or "upload.jsonl")[:300] or "upload.jsonl"
    return files.store_upload(file.file, name, purpose, owner)


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
