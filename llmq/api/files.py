"""The Files API as service functions. Bytes go to a folder (LLMQ_FILES_DIR), streamed in
pieces under a size cap; the database keeps one row per file with its owner."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from llmq.api.service import NotFound
from llmq.db import files as file_rows
from llmq.db.models import StoredFile, utcnow
from llmq.db.session import session_scope
from llmq.settings import get_settings

PURPOSES = ("batch",)  # what may be uploaded; batch results are "batch_output"
PIECE = 1 << 20
# OpenAI's bounds on expires_after and output_expires_after, and its default for batch input
EXPIRY_MIN = timedelta(hours=1)
EXPIRY_MAX = timedelta(days=30)
BATCH_INPUT_EXPIRY = timedelta(days=30)


class InvalidRequest(ValueError):
    """A request the API refuses (400), naming the parameter at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class FileTooLarge(ValueError):
    pass


def unix(value: datetime | None) -> int | None:
    return int(value.replace(tzinfo=UTC).timestamp()) if value else None


def file_object(row: StoredFile) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes, "created_at": unix(row.created_at),
            "filename": row.filename, "purpose": row.purpose, "status": "processed",
            "status_details": None, "expires_at": unix(row.expires_at)}


def expiry(anchor: object, seconds: object, param: str) -> timedelta:
    """An ``expires_after``-style ``{anchor, seconds}``: ``created_at`` and one hour to 30
    days, as OpenAI takes them; the 400 names ``param``'s part at fault."""
    if anchor != "created_at":
        raise InvalidRequest(f"{param}.anchor: must be 'created_at', not {anchor!r}",
                             f"{param}.anchor")
    try:
        value = int(str(seconds))
    except ValueError:
        value = None
    if value is None or not (EXPIRY_MIN.total_seconds() <= value
                             <= EXPIRY_MAX.total_seconds()):
        raise InvalidRequest(f"{param}.seconds: {seconds!r} is not a number of seconds from "
                             f"{EXPIRY_MIN.total_seconds():.0f} (1 hour) to "
                             f"{EXPIRY_MAX.total_seconds():.0f} (30 days)", f"{param}.seconds")
    return timedelta(seconds=value)


def storage() -> Path:
    folder = Path(get_settings().files_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _copy_capped(source: IO[bytes], target: Path, cap: int) -> tuple[int, int]:
    """Copies ``source`` into ``target`` piece by piece; returns (bytes, lines)."""
    size = lines = 0
    last = b"\n"
    with target.open("wb") as out:
        while piece := source.read(PIECE):
            size += len(piece)
            if size > cap:
                raise FileTooLarge(f"the file is over the limit of {cap:,} bytes "
                                   "(LLMQ_API_MAX_FILE_BYTES)")
            lines += piece.count(b"\n")
            last = piece[-1:]
            out.write(piece)
    return size, lines + (last != b"\n")


def store_upload(source: IO[bytes], filename: str, purpose: str, owner: str | None,
                 expires_after: timedelta | None = None) -> dict[str, Any]:
    """Stores an upload; the file exists (row and bytes) only once all of it is written. It
    expires ``expires_after`` from now (batch input: 30 days unless said, as at OpenAI)."""
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose {purpose!r}: llmq takes files for 'batch' only",
                             "purpose")
    created = utcnow()
    expires_at = created + (expires_after or BATCH_INPUT_EXPIRY)
    file_id = "file-" + secrets.token_hex(12)
    folder = storage()
    part = folder / f".{file_id}.part"
    try:
        size, lines = _copy_capped(source, part, get_settings().api_max_file_bytes)
        part.rename(folder / file_id)
    finally:
        part.unlink(missing_ok=True)
    with session_scope() as session:
        row = file_rows.add_file(session, id=file_id, owner=owner, filename=filename[:300],
                                 purpose=purpose, bytes=size, lines=lines, path=file_id,
                                 created_at=created, expires_at=expires_at)
        return file_object(row)


def write_generated(file_id: str, owner: str | None, filename: str,
                    records: Iterable[dict[str, Any]],
                    expires_after: timedelta | None = None) -> bool:
    """Writes a file of JSON lines made by llmq (a batch's output), expiring
    ``expires_after`` from now (None: kept); False if it would be empty (and then nothing is
    written). Safe to run twice at once: same id, same bytes."""
    folder = storage()
    part = folder / f".{file_id}.{os.getpid()}.{secrets.token_hex(4)}.part"
    lines = 0
    with part.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            lines += 1
    if not lines:
        part.unlink()
        return False
    size = part.stat().st_size
    part.replace(folder / file_id)
    with session_scope() as session:
        created = utcnow()
        file_rows.add_file_once(session, id=file_id, owner=owner, filename=filename,
                                purpose="batch_output", bytes=size, lines=lines, path=file_id,
                                created_at=created,
                                expires_at=created + expires_after if expires_after else None)
    return True


def page(objects: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """An OpenAI list object from ``limit + 1`` fetched objects."""
    data = objects[:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(objects) > limit}


def list_files(owner: str | None, *, purpose: str | None = None, after: str | None = None,
               limit: int = 10_000, order: str = "desc") -> dict[str, Any]:
    with session_scope() as session:
        rows = file_rows.list_files(session, owner, purpose=purpose, after=after,
                                    limit=limit + 1, newest_first=order != "asc")
        return page([file_object(r) for r in rows], limit)


def _owned(session: Any, file_id: str, owner: str | None) -> StoredFile:
    row = file_rows.get_file(session, file_id, owner)
    if row is None:
        raise NotFound(f"No such File object: {file_id}")
    return row


def get_file(file_id: str, owner: str | None) -> dict[str, Any]:
    with session_scope() as session:
        return file_object(_owned(session, file_id, owner))


def _contents(file_id: str, row: StoredFile) -> Path:
    path = storage() / row.path
    if not path.is_file():
        raise NotFound(f"the contents of {file_id} are gone from LLMQ_FILES_DIR")
    return path


def file_path(file_id: str, owner: str | None) -> Path:
    with session_scope() as session:
        return _contents(file_id, _owned(session, file_id, owner))


def batch_input(file_id: str, owner: str | None) -> tuple[Path, int]:
    """The contents of an input file for a batch, and its line count."""
    with session_scope() as session:
        row = _owned(session, file_id, owner)
        if row.purpose != "batch":
            raise InvalidRequest(f"{file_id} has purpose {row.purpose!r}, not 'batch'",
                                 "input_file_id")
        return _contents(file_id, row), row.lines


def delete_file(file_id: str, owner: str | None) -> dict[str, Any]:
    with session_scope() as session:
        row = _owned(session, file_id, owner)
        path = storage() / row.path
        file_rows.delete_file(session, file_id, owner)
    path.unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}
