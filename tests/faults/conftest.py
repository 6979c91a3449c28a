"""The fault tests use the service tests' real servers: a private redis-server, and a fresh
PostgreSQL database per test or a SQLite file. ``env``: the tiny model with the default
settings except the liveness intervals (seconds here, not a minute); a test module may
override it, or extend it by asking for ``env`` itself."""

import pytest

from llmq.db.migrate import upgrade
from tests.conftest import Tiny
from tests.service.conftest import (  # noqa: F401
    db_url,
    kill_leftover_workers,
    llmq_env,
    redis_server,
)

FAST_LIVENESS = {"LLMQ_HEARTBEAT_SECONDS": "1", "LLMQ_WORKER_TIMEOUT": "5",
                 "LLMQ_REAPER_SECONDS": "2", "LLMQ_RESEND_AFTER": "10"}


@pytest.fixture
def env(llmq_env: dict[str, str], tiny: Tiny,  # noqa: F811 - the fixture imported above
        monkeypatch: pytest.MonkeyPatch) -> dict:
    fast = {"LLMQ_MODEL": str(tiny.gguf), **FAST_LIVENESS}
    for k, v in fast.items():
        monkeypatch.setenv(k, v)
    upgrade()
    return {**llmq_env, **fast}
