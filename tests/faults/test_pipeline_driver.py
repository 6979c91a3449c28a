"""A pipeline run whose driver chain ended (finding 7: the broker away at the moment the chain
reschedules itself) is driven again by the workers' sweep, and an outdated chain stops."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from llmq.api import pipelines
from llmq.db import pipeline as store
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker.pipeline.run import start_run
from tests.service.test_pipeline import EXAMPLES, SMALL_CONTEXT
from tests.service.workers import Worker


@pytest.fixture
def env(env: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The faults' env with a small context and quick pipeline polling."""
    extra = {**SMALL_CONTEXT, "LLMQ_PIPELINE_POLL_SECONDS": "0.2",
             "LLMQ_PIPELINE_RETRY_SAMPLING": "{}"}
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    return {**env, **extra}


def test_a_newer_driver_takes_over_and_the_older_one_stops(env: dict, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "notes", tmp_path / "docs")
    run_id = start_run(tmp_path / "docs")
    with session_scope() as session:
        assert store.drive(session, run_id, None)  # a chain from before drivers existed
        old = store.new_driver(session, run_id)
        new = store.new_driver(session, run_id)
    with session_scope() as session:
        assert not store.drive(session, run_id, old)
        assert store.drive(session, run_id, new)


def test_a_run_without_a_driver_is_driven_again(env: dict, tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "notes", tmp_path / "docs")
    run_id = start_run(tmp_path / "docs")  # stored, but no driver was ever sent
    worker = Worker(env, tmp_path / "w.log", "--slots", "4")
    try:
        worker.wait_ready()
        deadline = time.time() + 120
        while pipelines.pipeline_status(run_id)["state"] == "running":
            assert time.time() < deadline, (tmp_path / "w.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        worker.stop()
    info = pipelines.pipeline_status(run_id)
    assert info["state"] == "completed" and info["counts"]["succeeded"] == 2
    assert f"pipeline run {run_id} had no driver: sent a new one" in (
        tmp_path / "w.log").read_text()
