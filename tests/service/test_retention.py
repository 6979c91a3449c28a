"""Retention on SQLite and PostgreSQL: `llmq purge` and LLMQ_RETENTION_DAYS delete finished
batches with their requests, results and output files, in chunks; running batches, and the
batches of running pipeline runs, stay (llmq/worker/retention.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from llmq.db import files as queries_files
from llmq.db import queries
from llmq.db.migrate import upgrade
from llmq.db.models import (
    Batch,
    PipelineRun,
    Request,
    Result,
    RunState,
    Source,
    StoredFile,
    utcnow,
)
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker import retention
from llmq.worker.reaper import sweep

from .test_db import _succeed
from .workers import llmq, llmq_json

OLD = timedelta(days=40)


def _batch(n: int, *, age: timedelta, finished: bool = True,
           meta: dict[str, str] | None = None) -> str:
    reqs = [queries.NewRequest(f"c{i}", "completion", {"prompt": f"p{i}"}, {"max_tokens": 4})
            for i in range(n)]
    with session_scope() as s:
        batch_id, ids = queries.create_batch(s, requests=reqs, model="m", meta=meta)
        queries.claim(s, ids if finished else ids[1:], "w1", max_attempts=3)
    for rid in ids if finished else ids[1:]:
        assert _succeed(rid)
    when = utcnow() - age
    with session_scope() as s:
        s.execute(update(Batch).where(Batch.id == batch_id).values(created_at=when))
        s.execute(update(Request).where(Request.batch_id == batch_id)
                  .values(finished_at=when, created_at=when))
    return batch_id


def _left(batch_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Of these batches, those still stored: their requests and results."""
    with session_scope() as s:
        out = {}
        for b in batch_ids:
            if s.get(Batch, b) is not None:
                requests = s.scalar(select(func.count()).select_from(Request)
                                    .where(Request.batch_id == b))
                results = s.scalar(select(func.count()).select_from(Result).join(Request)
                                   .where(Request.batch_id == b))
                out[b] = (requests, results)
        return out


def test_purge_deletes_old_finished_batches_and_keeps_the_rest(
        llmq_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv("LLMQ_FILES_DIR", str(files))
    get_settings.cache_clear()
    upgrade()
    monkeypatch.setattr(retention, "REQUESTS_PER_TRANSACTION", 2)  # chunks of a batch
    old = _batch(5, age=OLD)
    with_output = _batch(2, age=OLD)
    (files / "out.jsonl").write_text("{}\n")
    with session_scope() as s:
        s.add(StoredFile(id="file-out", owner=None, filename="out.jsonl", purpose="batch_output",
                         bytes=3, lines=1, path="out.jsonl"))
        s.execute(update(Batch).where(Batch.id == with_output).values(output_file_id="file-out"))
    running = _batch(3, age=OLD, finished=False)  # one request still queued
    recent = _batch(2, age=timedelta(days=2))
    with session_scope() as s:
        source = Source(name="docs", location="/docs")
        s.add(source)
        s.flush()
        s.add(PipelineRun(id="run-live", source_id=source.id, model="m",
                          state=RunState.RUNNING))
    in_live_run = _batch(2, age=OLD, meta={"pipeline_run": "run-live"})
    every = [old, with_output, running, recent, in_live_run]

    dry = retention.purge(timedelta(days=30), dry_run=True)
    assert (dry.batches, dry.requests, dry.files) == (2, 7, 1)
    assert len(_left(every)) == 5 and (files / "out.jsonl").exists()

    done = retention.purge(timedelta(days=30))
    assert (done.batches, done.requests, done.files) == (2, 7, 1)
    assert _left(every) == {running: (3, 2), recent: (2, 2), in_live_run: (2, 2)}
    assert not (files / "out.jsonl").exists()
    with session_scope() as s:
        assert s.get(StoredFile, "file-out") is None

    # a batch named while it runs is refused, and nothing else goes with it
    with pytest.raises(retention.StillRunning, match=running):
        retention.purge(timedelta(days=30), (running,))
    assert running in _left(every)
    # once its run is over, a pipeline's old batch goes (its documents' summaries are rows
    # of their own)
    with session_scope() as s:
        s.execute(update(PipelineRun).values(state=RunState.COMPLETED, finished_at=utcnow()))
    assert retention.purge(None, (in_live_run, recent)).batches == 2
    assert _left(every) == {running: (3, 2)}


def test_the_workers_sweep_purges_past_the_retention_days(
        llmq_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    upgrade()
    old, recent = _batch(2, age=OLD), _batch(2, age=timedelta(days=10))
    monkeypatch.setattr(retention, "_last_retention", None)
    keep_all = get_settings().model_copy(update={"retention_days": 0})
    assert retention.retain(keep_all) is None and len(_left([old, recent])) == 2
    thirty = keep_all.model_copy(update={"retention_days": 30})
    report = retention.retain(thirty)
    assert report is not None and report.batches == 1
    assert list(_left([old, recent])) == [recent]
    assert retention.retain(thirty.model_copy(update={"retention_days": 5})) is None  # hourly


def test_purge_on_the_command_line(llmq_env: dict[str, str]) -> None:
    upgrade()
    old = _batch(2, age=OLD)
    nothing = llmq(llmq_env, "purge", check=False)
    assert nothing.returncode == 2 and "--older-than" in nothing.stderr
    bad = llmq(llmq_env, "purge", "--older-than", "3 weeks", check=False)
    assert bad.returncode == 2 and "--older-than" in bad.stderr and "30d" in bad.stderr
    missing = llmq(llmq_env, "purge", "--batch", "b_nope", check=False)
    assert missing.returncode == 1 and "b_nope" in missing.stderr
    assert "Traceback" not in nothing.stderr + bad.stderr + missing.stderr
    dry = llmq_json(llmq_env, "purge", "--older-than", "30d", "--dry-run", "--json")
    assert dry == {"batches": 1, "requests": 2, "files": 0, "webhook_events": 0,
                   "dry_run": True}
    assert "deleted 1 batches, 2 requests" in llmq(llmq_env, "purge", "--older-than",
                                                   "30d").stdout
    assert old not in _left([old])


def test_expired_files_are_deleted_by_the_sweep(llmq_env: dict[str, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.setenv("LLMQ_FILES_DIR", str(files))
    get_settings.cache_clear()
    upgrade()
    now = utcnow()
    with session_scope() as s:
        for name, expires in (("gone", now - timedelta(seconds=1)),
                              ("later", now + timedelta(hours=1)), ("kept", None)):
            (files / name).write_text("{}\n")
            s.add(StoredFile(id=f"file-{name}", owner=None, filename=name, purpose="batch",
                             bytes=3, lines=1, path=name, expires_at=expires))
    with session_scope() as s:  # past its expiry, a file is gone to readers at once
        assert queries_files.get_file(s, "file-gone", None) is None
        assert {f.id for f in queries_files.list_files(s, None)} == {"file-later", "file-kept"}
    sweep(get_settings().model_copy(update={"retention_days": 0}))  # what every worker runs
    assert sorted(p.name for p in files.iterdir()) == ["kept", "later"]
    with session_scope() as s:
        assert s.get(StoredFile, "file-gone") is None
        assert s.get(StoredFile, "file-later") is not None
    assert retention.expire_files() == 0
