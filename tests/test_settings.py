"""Settings: what is checked when they are read, and secrets kept out of messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmq.settings import Settings, redact_url


def test_passwords_never_reach_a_message() -> None:
    assert redact_url("postgresql://llmq:s3cr:et@db:5432/llmq") == (
        "postgresql://llmq:***@db:5432/llmq")
    assert redact_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("sqlite:///llmq.db") == "sqlite:///llmq.db"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_liveness_settings_must_leave_room_for_a_late_heartbeat() -> None:
    with pytest.raises(ValidationError, match="LLMQ_WORKER_TIMEOUT"):
        Settings(heartbeat_seconds=10, worker_timeout=15)
    with pytest.raises(ValidationError, match="LLMQ_VISIBILITY_TIMEOUT"):
        Settings(visibility_timeout=60, task_time_limit=60)
    assert Settings(heartbeat_seconds=1, worker_timeout=5).worker_timeout == 5
