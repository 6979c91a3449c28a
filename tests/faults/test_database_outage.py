"""PostgreSQL goes away for 45 seconds in the middle of a batch: the worker claims nothing
meanwhile, keeps the results it finishes, writes them when the database is back, and every
request ends with one result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.api import service
from llmq.db.migrate import upgrade
from llmq.db.session import dispose_engines
from llmq.settings import get_settings
from tests.conftest import Tiny
from tests.private_servers import PrivateCluster, RedisServer, ServerMissing
from tests.service.test_end_to_end import prompts_file, wait_done
from tests.service.workers import Worker, llmq_json

from .conftest import FAST_LIVENESS
from .invariants import assert_every_request_ended_once
from .test_worker_loss import _wait_for

OUTAGE_SECONDS = 45


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    try:
        pg = PrivateCluster()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    try:
        pg.start()
        pg.create_database()
        yield pg
    finally:
        try:
            pg.stop()
        except RuntimeError:  # not running
            pass
        pg.remove()


@pytest.fixture
def env(cluster: PrivateCluster, redis_server: RedisServer, tiny: Tiny,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    redis_server.flush()
    env = {"LLMQ_DATABASE_URL": cluster.url, "LLMQ_BROKER_URL": redis_server.url,
           "LLMQ_MODEL": str(tiny.gguf), **FAST_LIVENESS}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    dispose_engines()
    upgrade()
    yield env
    dispose_engines()
    get_settings.cache_clear()


def test_postgres_stopped_for_45_s_mid_batch(env: dict[str, str], cluster: PrivateCluster,
                                             tmp_path: Path) -> None:
    report = llmq_json(env, "submit", str(prompts_file(tmp_path / "p.jsonl", 64, "o",
                                                       max_tokens=300)), "--json")
    batch = report["batch_id"]
    worker = Worker(env, tmp_path / "w.log", "--slots", "4", "--concurrency", "2")
    try:
        worker.wait_ready()
        _wait_for(lambda: service.status(batch)["counts"]["succeeded"] >= 4, timeout=120)
        dispose_engines()  # this process's connections die with the server anyway
        cluster.stop()
        time.sleep(OUTAGE_SECONDS)
        assert worker.proc.poll() is None  # the worker rode it out
        cluster.start()
        info = wait_done(batch, timeout=240)
    finally:
        worker.stop()
    assert info["counts"]["succeeded"] == 64 and info["counts"]["failed"] == 0
    assert_every_request_ended_once()
    assert "database unavailable while" in (tmp_path / "w.log").read_text()
