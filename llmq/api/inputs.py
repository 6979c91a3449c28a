"""Reading input files into request rows. Every line is judged on its own: a bad one gets its
line number and the reason, and the good ones go ahead (unless the caller is strict)."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmq.contract import RequestKind, SamplingOverrides, explain

if TYPE_CHECKING:
    from llmq.settings import Settings


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str


CUSTOM_ID_MAX = 200  # the column's width


class PromptLine(SamplingOverrides):
    custom_id: str | None = Field(None, min_length=1, max_length=CUSTOM_ID_MAX)
    prompt: str = Field(min_length=1)


class ChatLine(SamplingOverrides):
    custom_id: str | None = Field(None, min_length=1, max_length=CUSTOM_ID_MAX)
    messages: list[Message] = Field(min_length=1)


# what each OpenAI endpoint takes; a batch created for one endpoint rejects other lines
ENDPOINT_KINDS = {"/v1/chat/completions": RequestKind.CHAT,
                  "/v1/completions": RequestKind.COMPLETION}


class OpenAIBatchLine(BaseModel):
    model_config = ConfigDict(extra="ignore")

    custom_id: str = Field(min_length=1, max_length=CUSTOM_ID_MAX)
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/completions"]
    body: dict[str, Any]


@dataclass
class Accepted:
    line: int
    custom_id: str
    kind: RequestKind
    input: dict[str, Any]
    params: dict[str, Any]


@dataclass
class Rejected:
    line: int
    custom_id: str | None  # as the line gave it, if it gave one
    error: str
    key: str = ""  # the custom id its failed row is stored under, unique in the file


@dataclass
class ParsedFile:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _sampling(line: SamplingOverrides) -> dict[str, Any]:
    """The sampling fields the line set (nothing of the line's own shape)."""
    return line.model_dump(mode="json", include=set(SamplingOverrides.model_fields),
                           exclude_none=True, by_alias=True)


def parse_record(obj: Any, line: int, default_model: str | None = None) -> Accepted:
    """One input record; raises ValueError with a readable reason."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    if where := lone_surrogate(obj):  # JSON's "\\ud800" escapes parse into such strings
        raise ValueError(f"{where}: a lone UTF-16 surrogate is not Unicode text")
    try:
        if "body" in obj or "method" in obj or "url" in obj:
            return _parse_openai(OpenAIBatchLine.model_validate(obj), line)
        if "messages" in obj:
            chat = ChatLine.model_validate(obj)
            messages = [m.model_dump() for m in chat.messages]
            return Accepted(line, chat.custom_id or "", RequestKind.CHAT, {"messages": messages},
                            _sampling(chat))
        if "prompt" in obj:
            plain = PromptLine.model_validate(obj)
            return Accepted(line, plain.custom_id or "", RequestKind.COMPLETION,
                            {"prompt": plain.prompt}, _sampling(plain))
    except ValidationError as exc:
        raise ValueError(explain(exc)) from None
    raise ValueError('needs "prompt", "messages", or an OpenAI batch "body"')


def _parse_openai(item: OpenAIBatchLine, line: int) -> Accepted:
    body = dict(item.body)
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body["max_tokens"] = body["max_completion_tokens"]
    try:
        if item.url == "/v1/chat/completions":
            chat = ChatLine.model_validate({**body, "custom_id": item.custom_id})
            messages = [m.model_dump() for m in chat.messages]
            return Accepted(line, item.custom_id, RequestKind.CHAT, {"messages": messages},
                            _sampling(chat))
        plain = PromptLine.model_validate({**body, "custom_id": item.custom_id})
        return Accepted(line, item.custom_id, RequestKind.COMPLETION, {"prompt": plain.prompt},
                        _sampling(plain))
    except ValidationError as exc:
        raise ValueError(explain(exc, prefix="body.")) from None


@dataclass(frozen=True)
class InputLimits:
    """What one input file may hold; the settings of the same names set them (the context,
    of LLMQ_SLOT_LENGTH)."""

    max_file_bytes: int = 4 << 30
    max_line_bytes: int = 16 << 20
    max_prompt_chars: int = 200_000
    context_tokens: int | None = None

    def check_prompt(self, accepted: Accepted) -> None:
        """The request's size: its text, and max_tokens within the workers' context."""
        text = accepted.input.get("prompt") or "".join(
            m["content"] for m in accepted.input.get("messages", ()))
        if len(text) > self.max_prompt_chars:
            raise ValueError(f"prompt: {len(text):,} characters, over the limit of "
                             f"{self.max_prompt_chars:,} (LLMQ_MAX_PROMPT_CHARS)")
        max_tokens = accepted.params.get("max_tokens")
        if self.context_tokens and max_tokens and max_tokens >= self.context_tokens:
            raise ValueError(f"max_tokens: {max_tokens:,} leaves no room for the prompt in "
                             f"the context of {self.context_tokens:,} tokens (LLMQ_SLOT_LENGTH)")

    @classmethod
    def of(cls, settings: Settings) -> InputLimits:
        return cls(settings.max_file_bytes, settings.max_line_bytes, settings.max_prompt_chars,
                   settings.slot_length)


def _custom_id_of(obj: Any) -> str | None:
    """A rejected line's custom_id as far as it can be stored (it keys the failed row)."""
    if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
        cid = obj["custom_id"].replace("\x00", "")[:CUSTOM_ID_MAX]
        return cid if cid and not lone_surrogate(cid) else None
    return None


BOM = b"\xef\xbb\xbf"


def capped_lines(f: IO[bytes], cap: int) -> Iterator[tuple[bytes, int | None]]:
    """The lines of a binary stream as they come, never holding more than ``cap + 2`` bytes
    of one: ``(line, None)``, or for a line whose bytes (its line ending not counted) pass
    ``cap``, ``(b"", its length)``, the line read and dropped. A UTF-8 byte order mark
    before the first line is dropped."""
    first = True
    while line := f.readline(cap + 2):  # room for the cap and a CRLF
        if first and line.startswith(BOM):
            line = line[len(BOM):]
        first = False
        length = len(line.rstrip(b"\r\n"))
        if line.endswith(b"\n") or len(line) < cap + 2:  # the whole line
            yield (line, None) if length <= cap else (b"", length)
            continue
        while not line.endswith(b"\n") and (line := f.readline(1 << 20)):
            length += len(line.rstrip(b"\r\n"))
        yield b"", length


def lone_surrogate(obj: Any, where: str = "") -> str | None:
    """Where in a parsed JSON value a string holds a lone UTF-16 surrogate ("\\ud800"), which
    no Unicode text can: the field's path, or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return where or "line"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(
        obj, list) else ()
    for key, value in items:
        found = lone_surrogate(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def parse_json_line(raw: bytes) -> tuple[Any, str | None]:
    """One line of JSON: its value, or None and why it is not one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1} of the line)"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError:  # an integer of more digits than Python converts
        return None, (f"invalid JSON: a number of more than {sys.get_int_max_str_digits():,} "
                      "digits")
    return obj, None


def _jsonl_records(path: Path, limits: InputLimits) -> Iterator[tuple[int, Any, str | None]]:
    with path.open("rb") as f:
        for number, (raw, over) in enumerate(capped_lines(f, limits.max_line_bytes), start=1):
            if over is not None:
                yield number, None, (f"the line is {over:,} bytes, over the limit of "
                                     f"{limits.max_line_bytes:,} (LLMQ_MAX_LINE_BYTES)")
            elif raw.strip():
                obj, error = parse_json_line(raw)
                yield number, obj, error


def _csv_records(path: Path, column: str,
                 limits: InputLimits) -> Iterator[tuple[int, Any, str | None]]:
    """Records of a CSV file, its lines read as ``capped_lines`` reads them: a line over the
    cap, or not UTF-8, reaches the reader as a row of one empty field, and the record that
    holds it is refused with the line's reason."""
    bad: dict[int, str] = {}

    def lines(f: IO[bytes]) -> Iterator[str]:
        for number, (raw, length) in enumerate(capped_lines(f, limits.max_line_bytes), 1):
            if length is not None:
                bad[number] = (f"the line is {length:,} bytes, over the limit of "
                               f"{limits.max_line_bytes:,} (LLMQ_MAX_LINE_BYTES)")
                yield '""\n'
                continue
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad[number] = f"not UTF-8 text (byte {exc.start + 1} of the line)"
                yield '""\n'

    csv.field_size_limit(limits.max_line_bytes)
    with path.open("rb") as f:
        reader = csv.DictReader(lines(f))
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise InputFileError(f"{path}: no column {column!r} "
                                 f"(columns: {', '.join(reader.fieldnames or [])})")
        id_col = next((c for c in ("custom_id", "id") if c in reader.fieldnames), None)
        start = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, None, f"invalid CSV: {exc}"
                start = reader.line_num
                continue
            number, first = reader.line_num, start + 1
            start = number
            reasons = [bad[n] for n in range(first, number + 1) if n in bad]
            if reasons:
                yield number, None, reasons[0]
                continue
            record: dict[str, Any] = {"prompt": row.get(column) or ""}
            if id_col and row.get(id_col):
                record["custom_id"] = row[id_col]
            yield number, record, None


class InputFileError(ValueError):
    """The file as a whole cannot be read (missing, wrong format, --strict failures)."""


def iter_input(path: str | Path, column: str | None = None,
               limits: InputLimits | None = None,
               endpoint: str | None = None) -> Iterator[Accepted | Rejected]:
    """Judges a JSONL or CSV file line by line, in order, holding only the custom ids seen
    so far: a file of any length streams through. Every record gets a custom id unique in
    the file (a rejected line keeps its own where it can, for the failed row's key). With
    ``endpoint``, a line of another kind than the endpoint's is rejected."""
    path = Path(path)
    limits = limits or InputLimits()
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise InputFileError(f"{path}: {what}")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise InputFileError(f"{path}: {size:,} bytes, over the limit of "
                             f"{limits.max_file_bytes:,} (LLMQ_MAX_FILE_BYTES)")
    is_csv = path.suffix.lower() == ".csv" or column is not None
    records = (_csv_records(path, column or "prompt", limits) if is_csv
               else _jsonl_records(path, limits))
    seen: set[str] = set()
    for number, obj, error in records:
        yield _judge(seen, limits, number, obj, error, ENDPOINT_KINDS.get(endpoint or ""))


def chunked(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """``itertools.batched`` (Python 3.12) for 3.11: lists of ``size`` items."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def read_input(path: str | Path, column: str | None = None,
               limits: InputLimits | None = None) -> ParsedFile:
    """The whole file judged, for callers that want it at once (tests, small files)."""
    parsed = ParsedFile()
    for item in iter_input(path, column, limits):
        (parsed.accepted if isinstance(item, Accepted) else parsed.rejected).append(item)
    return parsed


def _judge(seen: set[str], limits: InputLimits, number: int, obj: Any,
           error: str | None, kind: RequestKind | None = None) -> Accepted | Rejected:
    """Accepts or rejects one record; ``seen`` holds every custom id given out so far."""
    if error is None:
        try:
            item = parse_record(obj, number)
            limits.check_prompt(item)
            if kind is not None and item.kind != kind:
                wanted = next(e for e, k in ENDPOINT_KINDS.items() if k == kind)
                raise ValueError(f"url: the batch's endpoint is {wanted}")
            if "\x00" in item.custom_id:
                raise ValueError("custom_id: contains a NUL character")
        except ValueError as exc:
            error = str(exc)
        else:
            if not item.custom_id:
                item.custom_id = f"line-{number}"
            if item.custom_id not in seen:
                seen.add(item.custom_id)
                return item
            error = f"duplicate custom_id {item.custom_id!r}"
    raw = _custom_id_of(obj)
    key = raw if raw and raw not in seen else f"line-{number}"
    while key in seen:
        key += "#"
    seen.add(key)
    return Rejected(number, raw, f"line {number}: {error}", key)
