"""Structured output from the command line: ``--schema``, per-line formats, ``parsed`` in the
results, and formats that cannot be compiled rejected as line errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from .workers import llmq

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["label"],
          "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}}}


def test_run_with_a_schema_file_and_line_formats(tmp_path: Path,
                                                 embedded_env: dict[str, str]) -> None:
    schema_file = tmp_path / "label.json"
    schema_file.write_text(json.dumps(SCHEMA))
    lines = [
        {"custom_id": "schema", "prompt": "Win a prize now!"},
        {"custom_id": "choice", "prompt": "Colour?", "choice": ["red", "blue"]},
        {"custom_id": "bad-regex", "prompt": "x", "regex": "(unclosed"},
        {"custom_id": "openai", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "Year?"}],
                  "response_format": {"type": "json_schema", "json_schema": {
                      "name": "year", "strict": True, "schema": {
                          "type": "object", "required": ["year"], "additionalProperties": False,
                          "properties": {"year": {"type": "integer", "minimum": 1900,
                                                  "maximum": 2100}}}}}}},
        {"custom_id": "bad-schema", "prompt": "x", "response_format": {
            "type": "json_schema", "json_schema": {"name": "s", "schema": {"type": 5}}}},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out.jsonl"
    llmq(embedded_env, "run", str(path), "--schema", str(schema_file), "--output", str(out),
         "--max-tokens", "40")
    results = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    labelled = results["schema"]
    assert labelled["status"] == "succeeded" and labelled["finish_reason"] == "stop"
    jsonschema.validate(labelled["parsed"], SCHEMA)
    assert json.loads(labelled["text"]) == labelled["parsed"]
    assert results["choice"]["text"] in ("red", "blue") and results["choice"]["parsed"] is None
    assert 1900 <= results["openai"]["parsed"]["year"] <= 2100
    assert results["bad-regex"]["status"] == "failed"
    assert results["bad-regex"]["error"].startswith("line 3: response_format.regex: ")
    assert "cannot be compiled" in results["bad-regex"]["error"]
    assert results["bad-schema"]["error"].startswith("line 5: ")
    assert "response_format.json_schema" in results["bad-schema"]["error"]


def test_a_schema_file_that_cannot_be_compiled_stops_the_command(
        tmp_path: Path, embedded_env: dict[str, str]) -> None:
    schema_file = tmp_path / "broken.json"
    schema_file.write_text(json.dumps({"type": "objectt"}))
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    proc = llmq(embedded_env, "run", str(path), "--schema", str(schema_file), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--schema" in proc.stderr and "cannot be compiled" in proc.stderr
    assert not (tmp_path / "llmq.db").exists() or "batch" not in llmq(
        embedded_env, "status", "--json").stdout
