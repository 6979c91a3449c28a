"""Input files: each line judged alone, with its line number."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from llmq.api.inputs import InputFileError, InputLimits, read_input


def write(tmp_path: Path, lines: list[object], name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_three_line_shapes_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, [
        {"custom_id": "a", "prompt": "hello", "max_tokens": 5, "stop": "\n"},
        {"custom_id": "b", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5},
        "",
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "x", "messages": [{"role": "user", "content": "yo"}],
                  "max_completion_tokens": 9, "seed": 3}},
        {"custom_id": "d", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "once", "top_p": 0.9}},
        {"prompt": "no id"},
    ])
    parsed = read_input(path)
    assert parsed.rejected == []
    got = {a.custom_id: (a.line, a.kind, a.input, a.params) for a in parsed.accepted}
    assert got["a"] == (1, "completion", {"prompt": "hello"}, {"max_tokens": 5, "stop": ["\n"]})
    assert got["b"][1:] == ("chat", {"messages": [{"role": "user", "content": "hi"}]},
                            {"temperature": 0.5})
    assert got["c"][0] == 4 and got["c"][3] == {"max_tokens": 9, "seed": 3}
    assert got["d"][1:] == ("completion", {"prompt": "once"}, {"top_p": 0.9})
    assert got["line-6"][0] == 6  # generated id; the blank line 3 was skipped


def test_bad_lines_are_reported_with_number_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, [
        {"custom_id": "ok", "prompt": "fine"},
        "{not json",
        {"custom_id": "neg", "prompt": "x", "max_tokens": -1},
        {"custom_id": "ok", "prompt": "duplicate id"},
        {"custom_id": "role", "messages": [{"role": "wizard", "content": "x"}]},
        {"custom_id": "url", "method": "POST", "url": "/v1/embeddings", "body": {}},
        [1, 2],
        {"custom_id": "empty"},
    ])
    parsed = read_input(path)
    assert [a.custom_id for a in parsed.accepted] == ["ok"]
    errors = {r.line: r.error for r in parsed.rejected}
    assert errors[2].startswith("line 2: invalid JSON")
    assert "line 3: max_tokens" in errors[3]
    assert errors[4] == "line 4: duplicate custom_id 'ok'"
    assert "messages.0.role" in errors[5]
    assert "url" in errors[6]
    assert errors[7] == "line 7: expected a JSON object"
    assert 'needs "prompt", "messages"' in errors[8]
    assert parsed.rejected[2].custom_id == "ok"


def test_csv_with_column(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('id,question\nq1,"What is up, doc?"\nq2,Why?\n')
    parsed = read_input(path, column="question")
    assert [(a.custom_id, a.input["prompt"], a.line) for a in parsed.accepted] == [
        ("q1", "What is up, doc?", 2), ("q2", "Why?", 3)]
    with pytest.raises(InputFileError, match="no column 'prompt'"):
        read_input(path, column="prompt")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        read_input(tmp_path / "nope.jsonl")


def test_limits_and_malformed_bytes_are_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"custom_id": "ok", "prompt": "fine"}).encode(),
        b'{"custom_id": "latin", "prompt": "caf\xe9"}',
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps({"custom_id": "long", "prompt": "x" * 300}).encode(),
        json.dumps({"custom_id": "y" * 500, "prompt": 7}).encode(),
        json.dumps({"custom_id": "nul\u0000", "prompt": "x"}).encode(),
        json.dumps({"custom_id": "huge", "prompt": "z" * 2000}).encode(),
        json.dumps({"custom_id": "chat", "messages": [
            {"role": "user", "content": "a" * 150}, {"role": "user", "content": "b" * 151}]}
        ).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    limits = InputLimits(max_line_bytes=1000, max_prompt_chars=300)
    parsed = read_input(path, limits=limits)
    assert [a.custom_id for a in parsed.accepted] == ["ok", "long"]
    errors = {r.line: r.error for r in parsed.rejected}
    assert errors[2] == "line 2: not UTF-8 text (byte 38 of the line)"
    assert "line 3: the line is 200,000 bytes, over the limit of 1,000" in errors[3]
    assert "prompt: Input should be a valid string" in errors[5]
    assert parsed.rejected[2].custom_id == "y" * 200  # storable as the failed row's key
    assert errors[6] == "line 6: custom_id: contains a NUL character"
    assert "LLMQ_MAX_LINE_BYTES" in errors[7]
    assert "301 characters, over the limit of 300 (LLMQ_MAX_PROMPT_CHARS)" in errors[8]
    nested = tmp_path / "nested.jsonl"
    nested.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert read_input(nested).rejected[0].error == "line 1: invalid JSON: nested too deeply"
    with pytest.raises(InputFileError, match="over the limit of 10 .LLMQ_MAX_FILE_BYTES"):
        read_input(path, limits=InputLimits(max_file_bytes=10))
    bad_csv = tmp_path / "in.csv"
    bad_csv.write_bytes(b"prompt\ncaf\xe9\nfine\n")
    parsed = read_input(bad_csv)
    assert [r.error for r in parsed.rejected] == ["line 2: not UTF-8 text (byte 4 of the line)"]
    assert [a.input["prompt"] for a in parsed.accepted] == ["fine"]


def test_a_line_over_the_cap_is_refused_without_being_held(tmp_path: Path) -> None:
    """A 24 MB line under a 64 KB cap: refused as it streams, never read whole (what
    Python holds at once stays a few MB), and the lines after it still run."""
    path = tmp_path / "in.jsonl"
    with path.open("wb") as f:
        f.write(b'{"prompt": "before"}\n{"prompt": "')
        for _ in range(24):
            f.write(b"x" * (1 << 20))
        f.write(b'"}\n{"prompt": "after"}\n')
    tracemalloc.start()
    try:
        parsed = read_input(path, limits=InputLimits(max_line_bytes=64 << 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    assert [a.input["prompt"] for a in parsed.accepted] == ["before", "after"]
    assert parsed.rejected[0].error == ("line 2: the line is 25,165,838 bytes, over the limit "
                                        "of 65,536 (LLMQ_MAX_LINE_BYTES)")


def test_hostile_values_are_line_errors_and_the_rest_runs(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [b"\xef\xbb\xbf" + json.dumps({"custom_id": "bom", "prompt": "a"}).encode(),
             b'{"custom_id": "digits", "prompt": "b", "max_tokens": ' + b"9" * 5000 + b"}",
             b'{"custom_id": "surrogate", "messages": [{"role": "user", "content": "\\ud800"}]}',
             b'{"custom_id": "pair", "prompt": "\\ud83d\\ude00"}',
             json.dumps({"custom_id": "bool", "prompt": "c", "max_tokens": True}).encode(),
             json.dumps({"custom_id": "big", "prompt": "d", "max_tokens": 10**12}).encode(),
             json.dumps({"custom_id": "context", "prompt": "e", "max_tokens": 2048}).encode(),
             b'{"custom_id": "nan", "prompt": "f", "temperature": NaN}',
             json.dumps({"custom_id": "float", "prompt": "g", "temperature": 1}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    parsed = read_input(path, limits=InputLimits(context_tokens=2048))
    assert [a.custom_id for a in parsed.accepted] == ["bom", "pair", "float"]
    assert parsed.accepted[1].input["prompt"] == "\U0001f600"
    errors = {r.custom_id: r.error for r in parsed.rejected}
    assert errors[None] == "line 2: invalid JSON: a number of more than 4,300 digits"
    assert errors["surrogate"] == ("line 3: messages.0.content: a lone UTF-16 surrogate is not "
                                   "Unicode text")
    assert errors["bool"] == "line 5: max_tokens: Input should be a valid integer"
    assert "max_tokens: Input should be less than or equal to 1048576" in errors["big"]
    assert errors["context"] == ("line 7: max_tokens: 2,048 leaves no room for the prompt in "
                                 "the context of 2,048 tokens (LLMQ_SLOT_LENGTH)")
    assert errors["nan"] == "line 8: temperature: Input should be a finite number"


def test_a_csv_cell_over_the_cap_is_a_line_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"\xef\xbb\xbfcustom_id,prompt\na,first\nb," + b"y" * (5 << 20)
                     + b'\nc,"two\nlines"\n')
    parsed = read_input(path, limits=InputLimits(max_line_bytes=1 << 20))
    assert [(a.custom_id, a.input["prompt"]) for a in parsed.accepted] == [
        ("a", "first"), ("c", "two\nlines")]
    assert parsed.rejected[0].error == ("line 3: the line is 5,242,882 bytes, over the limit "
                                        "of 1,048,576 (LLMQ_MAX_LINE_BYTES)")


def test_a_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputFileError, match="not a regular file"):
        read_input(fifo)
