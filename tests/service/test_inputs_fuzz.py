"""A fuzz pass over what `llmq submit` reads: files of generated lines (records with the real
field names and hostile values, huge numbers, lone surrogates, control characters, deep
nesting, raw bytes, a byte order mark) stored into a real database. The invariant: every
line becomes a request or a line error that names it, and no file leaves a batch with
fewer rows than it has lines, or a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from llmq.api import service
from llmq.api.inputs import BOM, InputFileError
from llmq.db.migrate import ensure_schema
from llmq.db.models import Batch, Request
from llmq.db.session import session_scope
from tests.service.workers import llmq

FIELDS = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
          "custom_id", "response_format", "regex", "choice", "body", "url", "method", "role",
          "content"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.integers(min_value=10**30, max_value=10**40))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner,
                                        max_size=3), max_leaves=8)
SURROGATES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                     max_size=3)
CONTROLS = st.text(st.characters(max_codepoint=0x1F), max_size=8)


def _record(fields: dict[str, object]) -> bytes:
    return json.dumps(fields).encode()  # NaN and Infinity as Python writes them


LINES = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=5).map(_record),
    st.builds(lambda t: _record({"prompt": "p", "messages": [{"role": "user", "content": t}]}),
              SURROGATES | CONTROLS),
    st.builds(lambda t: _record({"custom_id": t, "prompt": t or "x"}), SURROGATES | CONTROLS),
    st.integers(4000, 6000).map(lambda n: b'{"prompt": "x", "max_tokens": ' + b"9" * n + b"}"),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=60),
    st.just(_record({"custom_id": "good", "prompt": "a fine line"})),
)


def physical_lines(data: bytes) -> int:
    """The lines llmq judges: every line with something other than whitespace in it."""
    return sum(1 for line in data.removeprefix(BOM).split(b"\n") if line.strip())


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(lines=st.lists(LINES, min_size=1, max_size=10), bom=st.booleans())
def test_every_line_becomes_a_request_or_a_line_error(tmp_path: Path, sqlite_env: None,
                                                      lines: list[bytes], bom: bool) -> None:
    data = (BOM if bom else b"") + b"\n".join(lines) + b"\n"
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    expected = physical_lines(data)
    ensure_schema()
    with session_scope() as session:
        batches_before = session.scalar(select(func.count()).select_from(Batch))
    if expected == 0:
        with pytest.raises(InputFileError, match="no requests"):
            service.store_batch(path)
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(Batch)) == batches_before
        return
    report = service.store_batch(path)
    assert report.accepted + len(report.rejected) == expected
    assert all(r["error"].startswith(f"line {r['line']}: ") for r in report.rejected)
    with session_scope() as session:
        stored = session.scalar(select(func.count()).select_from(Request)
                                .where(Request.batch_id == report.batch_id))
    assert stored == expected


def test_submit_of_hostile_lines_stores_the_rest(tmp_path: Path,
                                                 llmq_env: dict[str, str]) -> None:
    """The command line on the findings' lines: one line error each, no traceback, and the
    good lines stored and queued."""
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(BOM + b"\n".join([
        _record({"custom_id": "ok-1", "prompt": "fine"}),
        b'{"custom_id": "digits", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        b'{"custom_id": "lone", "messages": [{"role": "user", "content": "\\ud800"}]}',
        _record({"custom_id": "bool", "prompt": "x", "max_tokens": True}),
        _record({"custom_id": "ref", "prompt": "x", "response_format": {
            "type": "json_schema", "json_schema": {"name": "r", "schema": {"$ref": "#"}}}}),
        _record({"custom_id": "ok-2", "prompt": "also fine"}),
    ]) + b"\n")
    llmq(llmq_env, "db", "upgrade")
    proc = llmq(llmq_env, "submit", str(path), "--json", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert report["accepted"] == 2
    assert [r["line"] for r in report["rejected"]] == [2, 3, 4, 5]
    assert "no text satisfies it" in report["rejected"][3]["error"]
