"""Reading a source: a folder of .txt/.md files (recursive), a JSONL of {"id", "text"}, or a
CSV with id and text columns. Each document gets a stable key and a content hash."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md")


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class SourceDocument:
    key: str
    text: str

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def read_source(location: str | Path) -> list[SourceDocument]:
    path = Path(location)
    if path.is_dir():
        docs = list(_folder(path))
    elif path.suffix.lower() == ".jsonl":
        docs = list(_jsonl(path))
    elif path.suffix.lower() == ".csv":
        docs = list(_csv(path))
    elif not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    else:
        raise SourceError(f"{path}: expected a folder, a .jsonl or a .csv file")
    keys = [d.key for d in docs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SourceError(f"{path}: document id {dup!r} appears twice")
    return docs


def _folder(root: Path) -> Iterator[SourceDocument]:
    """Text files under ``root``; links that lead out of it are skipped."""
    inside = root.resolve()
    for file in sorted(root.rglob("*")):
        if inside not in file.resolve().parents:  # through a link, somewhere else
            continue
        if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES:
            text = file.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                yield SourceDocument(file.relative_to(root).as_posix(), text)


def _jsonl(path: Path) -> Iterator[SourceDocument]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key, text = str(obj["id"]), str(obj["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SourceError(f"{path}: line {number}: expected {{\"id\", \"text\"}} "
                                  f"({exc})") from None
            if text.strip():
                yield SourceDocument(key, text.strip())


def _csv(path: Path) -> Iterator[SourceDocument]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "text"} <= set(reader.fieldnames):
            raise SourceError(f"{path}: needs columns id and text")
        for row in reader:
            if (row.get("text") or "").strip():
                yield SourceDocument(str(row["id"]), row["text"].strip())
