"""The summarization pipeline with a real worker, Redis and database, and on the embedded
default; the tiny model writes nonsense, which is all the plumbing needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text

from llmq.db.migrate import upgrade
from llmq.db.session import get_engine
from llmq.worker.pipeline.plan import group_by_budget, split_tokens
from tests.conftest import Tiny

from .workers import Worker, count_rows, llmq, llmq_json

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "documents"
LONG = "library-history.md"
# a small context makes the long sample document several times longer than it
SMALL_CONTEXT = {"LLMQ_SLOT_LENGTH": "256", "LLMQ_PIPELINE_SUMMARY_TOKENS": "24",
                 "LLMQ_PIPELINE_OVERLAP_TOKENS": "16"}


def test_split_and_group_arithmetic() -> None:
    assert split_tokens(list(range(10)), 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert split_tokens(list(range(3)), 4, 1) == [(0, 3)]
    assert group_by_budget([5, 5, 5, 5, 5], 10) == [[0, 1], [2, 3, 4]]
    # every group but a lone last one has at least two items, so each level shrinks
    groups = group_by_budget([20, 20, 20], 10)
    assert all(len(g) >= 2 for g in groups) and sum(map(len, groups)) == 3


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    shutil.copytree(EXAMPLES, folder)
    return folder


def _check_first_run(info: dict, env: dict) -> None:
    assert info["state"] == "completed"
    assert info["counts"] == {"pending": 0, "running": 0, "succeeded": 5, "failed": 0}
    status = llmq_json(env, "pipeline", "status", info["id"], "--json")
    states = {d["document"]: d for d in status["document_states"]}
    assert set(states) == {"harbour-report.md", "team-meeting.txt", "notes/bread.md",
                           "notes/garden.txt", LONG}
    assert states[LONG]["level"] >= 1  # map, then at least one reduce
    assert count_rows("SELECT count(*) FROM chunks c JOIN requests r ON r.id = c.request_id "
                      "WHERE c.level = 0 AND c.role = 'map'") >= 4
    exported = [json.loads(x) for x in llmq(env, "pipeline", "export", info["id"])
                .stdout.splitlines()]
    assert len(exported) == 5 and all(e["summary"] for e in exported)
    long_summary = next(e for e in exported if e["document"] == LONG)
    assert long_summary["requests"] > 4
    md = llmq(env, "pipeline", "export", info["id"], "--format", "md").stdout
    assert f"## {LONG}" in md
    _check_quality(exported, status)


def _check_quality(exported: list[dict], status: dict) -> None:
    """The tiny model's nonsense mentions none of a document's salient terms: each summary
    is retried once, sampled as the retry settings say, then delivered flagged."""
    for e in exported:
        assert e["flagged"] is (not e["quality"]["passes"])
        assert set(e["quality"]) >= {"distinct_trigrams", "repeated_sentences", "compression",
                                     "salient_terms", "salient_hits"}
    failed_first = count_rows("SELECT count(*) FROM summaries WHERE flagged")
    assert failed_first >= 1
    assert count_rows("SELECT count(*) FROM chunks WHERE role = 'retry'") >= failed_first
    with get_engine().connect() as conn:
        params = [json.loads(p) if isinstance(p, str) else p for (p,) in conn.execute(text(
            "SELECT r.params FROM requests r JOIN chunks c ON c.request_id = r.id "
            "WHERE c.role = 'retry'"))]
    assert all(p["temperature"] == 0.7 and p["seed"] == 1234 for p in params)
    assert status["quality"]["summaries"] == 5
    assert status["quality"]["flagged"] == failed_first
    assert all(d["quality"]["flagged"] == (d["quality"]["passes"] is False)
               for d in status["document_states"])


def _check_incremental(env: dict, docs: Path, first_run: str, summarize: list[str]) -> None:
    requests_before = count_rows("SELECT count(*) FROM requests")
    again = llmq_json(env, *summarize)
    assert again["state"] == "completed" and again["documents"] == 0
    assert count_rows("SELECT count(*) FROM requests") == requests_before  # nothing enqueued
    (docs / "notes" / "bread.md").write_text("Rye bread needs a longer proof than wheat.")
    third = llmq_json(env, *summarize)
    assert third["documents"] == 1 and third["counts"]["succeeded"] == 1
    exported = [json.loads(x) for x in llmq(env, "pipeline", "export", third["id"])
                .stdout.splitlines()]
    assert [e["document"] for e in exported] == ["notes/bread.md"]
    runs = llmq_json(env, "pipeline", "runs", "--json")
    assert [r["id"] for r in runs][-1] == first_run and len(runs) == 3


def test_pipeline_through_a_worker(llmq_env: dict[str, str], tiny: Tiny, docs: Path,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**llmq_env, **SMALL_CONTEXT, "LLMQ_MODEL": str(tiny.gguf),
           "LLMQ_PIPELINE_POLL_SECONDS": "0.2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    upgrade()
    summarize = ["pipeline", "summarize", str(docs), "--name", "notes", "--wait", "--json"]
    worker = Worker(env, tmp_path / "worker.log", "--slots", "8", "--concurrency", "4")
    try:
        worker.wait_ready()
        info = llmq_json(env, *summarize)
        _check_first_run(info, env)
        _check_incremental(env, docs, info["id"], summarize)
    finally:
        worker.stop()


def test_pipeline_local(tiny: Tiny, docs: Path, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**SMALL_CONTEXT, "LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'llmq.db'}",
           "LLMQ_BROKER_URL": "redis://127.0.0.1:1/0", "LLMQ_MODEL": str(tiny.gguf),
           "LLMQ_THREADS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from llmq.db.session import dispose_engines
    from llmq.settings import get_settings

    get_settings.cache_clear()
    dispose_engines()
    summarize = ["pipeline", "summarize", str(docs), "--local", "--slots", "8", "--json"]
    info = llmq_json(env, *summarize)
    _check_first_run(info, env)
    _check_incremental(env, docs, info["id"], summarize)
    get_settings.cache_clear()
    dispose_engines()


def test_schedule_shows_the_configured_pipelines() -> None:
    env = {"LLMQ_PIPELINES": '[{"name": "notes", "source": "/data/notes"}]',
           "LLMQ_PIPELINE_CRON": "30 3 * * *"}
    out = llmq(env, "pipeline", "schedule").stdout
    assert "cron 30 3 * * *" in out and "notes: /data/notes" in out


def test_a_folder_source_keeps_to_its_folder(tmp_path: Path) -> None:
    from llmq.worker.pipeline.sources import read_source

    outside = tmp_path / "secret.txt"
    outside.write_text("not for summarizing")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.md").write_text("beta")
    (folder / "inside.txt").symlink_to(folder / "a.txt")
    (folder / "leak.txt").symlink_to(outside)
    (folder / "linked").symlink_to(tmp_path)  # a link to a folder above: not walked
    assert [d.key for d in read_source(folder)] == ["a.txt", "inside.txt", "sub/b.md"]
