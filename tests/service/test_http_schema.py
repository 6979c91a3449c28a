"""The HTTP API's OpenAPI schema, fuzzed by schemathesis: whatever a client sends that the
schema allows (and much that it does not), the answer is never an internal error (500), and
every error is in OpenAI's shape. No worker runs here, so a valid completion ends in the
documented 504 (no result within LLMQ_API_REQUEST_TIMEOUT), which is the right answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from llmq.api.http.app import create_app
from llmq.db.migrate import upgrade
from llmq.db.session import dispose_engines
from llmq.settings import get_settings
from tests.private_servers import RedisServer

APP = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture
def open_api(tmp_path: Path, redis_server: RedisServer,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Open mode on a SQLite file and the private Redis; completions give up quickly (no
    worker runs here, so they end in 504, which is the right answer)."""
    for name, value in {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'llmq.db'}",
                        "LLMQ_BROKER_URL": redis_server.url, "LLMQ_API_OPEN": "true",
                        "LLMQ_FILES_DIR": str(tmp_path / "files"),
                        "LLMQ_API_REQUEST_TIMEOUT": "0.2"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    dispose_engines()
    upgrade()
    yield
    get_settings.cache_clear()
    dispose_engines()


def no_internal_error(response: schemathesis.Response) -> None:
    assert response.status_code != 500, response.text
    if response.status_code >= 400 and response.headers.get("content-type", [""])[0].startswith(
            "application/json"):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_server_errors(case: schemathesis.Case, open_api: None) -> None:
    no_internal_error(case.call())
