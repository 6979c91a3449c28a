"""Input files: each line judged alone, with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmq.api.inputs import InputFileError, read_input


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
