"""The command line as scripts meet it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Tiny
from tests.private_servers import free_port

from .workers import llmq


def test_cli_starts_without_torch() -> None:
    code = "import sys, llmq.api.cli, llmq.api.service; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_expected_errors_are_one_line(tmp_path: Path) -> None:
    env = {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    for args, needle in [(("status", "batch_nope"), "no batch 'batch_nope'"),
                         (("submit", str(tmp_path / "missing.jsonl")), "no such file"),
                         (("results", "batch_nope"), "no batch")]:
        proc = llmq(env, *args, check=False)
        assert proc.returncode == 1, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ")
        assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_database_url_or_a_database_down_is_one_line(tmp_path: Path) -> None:
    """At `serve`'s start as in any command: no traceback, and no password."""
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    down = f"postgresql://llmq:s3cret@127.0.0.1:{free_port()}/llmq"
    for url, needle in [("postgresql://llmq:s3cret@127.0.0.1:abc/llmq", "is not a database URL"),
                        ("nothing-here", "is not a database URL"),
                        ("mysqlx://a/b", "is not a database URL"),
                        (down, "database unavailable")]:
        for args in (("serve", "--port", str(free_port())), ("status",)):
            proc = llmq({"LLMQ_DATABASE_URL": url}, *args, check=False)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1, (url, proc.stderr)
            assert lines[0].startswith("Error: ")
            assert needle in lines[0] and "Traceback" not in proc.stderr
            assert "s3cret" not in proc.stderr
    proc = llmq({"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}, "submit", str(fifo),
                check=False)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr


def test_broker_down_keeps_the_batch_for_retry(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"custom_id": "a", "prompt": "hi"}) + "\n")
    env = {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "LLMQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = llmq(env, "submit", str(path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is stored but only 0 of 1 requests were enqueued" in proc.stderr
    listed = json.loads(llmq(env, "status", "--json").stdout)
    assert listed[0]["counts"]["queued"] == 1  # accepted work was kept


def test_embedded_run_writes_every_line(tmp_path: Path, embedded_env: dict[str, str]) -> None:
    path = tmp_path / "in.jsonl"
    rows = [{"custom_id": f"c{i}", "messages": [{"role": "user", "content": f"Hi {i}"}]}
            for i in range(12)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(5, '{"custom_id": "bad", "prompt": ""}')
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    proc = llmq(embedded_env, "run", str(path), "--output", str(out), "--max-tokens", "6",
                "--ignore-eos", "--slots", "4")
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [*[f"c{i}" for i in range(5)], "bad",
                                                 *[f"c{i}" for i in range(5, 12)]]
    ok = [r for r in results if r["custom_id"] != "bad"]
    assert all(r["status"] == "succeeded" and r["usage"]["completion_tokens"] == 6 for r in ok)
    assert all(r["timing"]["engine_batch_size"] > 1 for r in ok)  # they shared steps
    bad = results[5]
    assert bad["status"] == "failed" and bad["error"].startswith("line 6: prompt:")
    assert "12 succeeded" in proc.stderr
    status = json.loads(llmq(embedded_env, "status", "--json").stdout)[0]
    assert status["state"] == "completed" and status["counts"]["succeeded"] == 12
    # OpenAI's batch usage; the chat template's system prompt, shared by every line, is
    # computed once and served from the prefix cache to the rest
    usage = status["usage"]
    assert usage["output_tokens"] == 12 * 6
    assert usage["input_tokens"] == sum(r["usage"]["prompt_tokens"] for r in ok)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert 0 < usage["input_tokens_details"]["cached_tokens"] < usage["input_tokens"]


def test_generate_prints_a_completion(embedded_env: dict[str, str], tiny: Tiny) -> None:
    args = ("generate", "Hello there", "--max-tokens", "5", "--seed", "1", "--temperature",
            "0.8", "--raw")
    text = llmq(embedded_env, *args).stdout.removesuffix("\n")
    assert text and llmq(embedded_env, *args).stdout.removesuffix("\n") == text  # seeded
    assert 1 <= len(tiny.tokenizer.encode(text)) <= 5 + 1  # 5 tokens, re-tokenized
