"""Webhooks against real receivers (HTTP servers on loopback) and a real database: URLs that
are refused, ends announced once, signatures that the official `openai` SDK verifies, retries
that outlive the process that sent them, a 410 that disables, receivers that are slow, huge
or redirect, retention. The whole path through `llmq serve`, a worker and the SDK is in
test_webhooks_http.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import openai
import pytest
from sqlalchemy import select, update

from llmq.api import service
from llmq.api import webhooks as api_webhooks
from llmq.api.files import InvalidRequest
from llmq.db import queries
from llmq.db.migrate import upgrade
from llmq.db.models import (
    PipelineRun,
    RunState,
    Source,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    utcnow,
)
from llmq.db.session import session_scope
from llmq.settings import get_settings
from llmq.worker.retention import purge
from llmq.worker.webhooks import deliver
from llmq.worker.webhooks.send import RefusedUrl, new_secret, resolve

from .receiver import Receiver


@pytest.fixture
def hooks_env(llmq_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
              tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**llmq_env, "LLMQ_WEBHOOKS_ALLOW_PRIVATE": "true",
           "LLMQ_WEBHOOK_RETRY_SCHEDULE": "0s,1s,2s,3s,60s", "LLMQ_WEBHOOK_TIMEOUT": "2",
           "LLMQ_WEBHOOK_SENDERS": "2", "LLMQ_FILES_DIR": str(tmp_path / "files")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    upgrade()
    yield env
    get_settings.cache_clear()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def ended_batch(tmp_path: Path, lines: int = 2) -> str:
    """A CLI batch whose requests were all cancelled: ended, nothing to run."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(lines)))
    report = service.store_batch(path, model="m")
    with session_scope() as session:
        queries.cancel_batch(session, report.batch_id)
    return report.batch_id


def deliveries_by_state() -> dict[str, int]:
    with session_scope() as session:
        states = session.execute(select(WebhookDelivery.state)).scalars().all()
    return {s: states.count(s) for s in set(states)}


def run_senders(until: Callable[[], bool], timeout: float = 30) -> None:
    """This process's Deliverer (the workers' own) until ``until()``."""
    d = deliver.Deliverer(get_settings()).start()
    try:
        deadline = time.time() + timeout
        while not until():
            assert time.time() < deadline, deliveries_by_state()
            time.sleep(0.1)
    finally:
        d.stop()


@pytest.mark.parametrize("url", [
    "ftp://example.com/hook", "file:///etc/passwd", "http:///nohost", "http://127.0.0.1/x",
    "http://localhost:8080/x", "http://10.1.2.3/x", "http://192.168.0.1/x",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://100.64.0.1/x",
    "http://[::ffff:127.0.0.1]/x", "http://user:pw@93.184.216.34/x"])
def test_private_and_odd_urls_are_refused(url: str) -> None:
    with pytest.raises(RefusedUrl):
        resolve(url, allow_private=False)


def test_public_addresses_pass_and_private_ones_pass_when_allowed() -> None:
    assert resolve("https://93.184.216.34/hook", allow_private=False) == ["93.184.216.34"]
    assert resolve("http://127.0.0.1:9/x", allow_private=True) == ["127.0.0.1"]


def test_a_batch_end_is_announced_once_and_signed_for_the_sdk(
        hooks_env: dict[str, str], receiver: Receiver, tmp_path: Path) -> None:
    made = api_webhooks.create_endpoint(None, url=receiver.url,
                                        event_types=["batch.cancelled", "batch.completed"])
    other = api_webhooks.create_endpoint(None, url=receiver.url + "/other",
                                         event_types=["batch.failed"])
    batch_id = ended_batch(tmp_path)
    assert deliver.announce() == 1
    assert deliver.announce() == 0  # once, whoever looks again
    run_senders(lambda: deliveries_by_state() == {"delivered": 1})
    got = receiver.wait(1)
    assert len(got) == 1 and got[0].path == "/hook"  # not the batch.failed endpoint
    event = openai.OpenAI(api_key="x").webhooks.unwrap(got[0].body, got[0].headers,
                                                       secret=made["signing_secret"])
    assert (event.type, event.data.id, event.object) == ("batch.cancelled", batch_id, "event")
    assert got[0].headers["webhook-id"] == event.id
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="x").webhooks.unwrap(got[0].body, got[0].headers,
                                                   secret=new_secret())
    assert other["signing_secret"] != made["signing_secret"]
    # retried, it runs again and its next end is a new event
    with session_scope() as session:
        queries.retry_batch(session, batch_id, include_cancelled=True)
        queries.cancel_batch(session, batch_id)
    assert deliver.announce() == 1
    with session_scope() as session:
        assert len(session.execute(select(WebhookEvent)).all()) == 2


def test_a_delivery_outlives_its_sender_and_a_receiver_that_was_down(
        hooks_env: dict[str, str], receiver: Receiver, tmp_path: Path) -> None:
    """The receiver answers 503; the sending process is killed (-9) between attempts; another
    process's senders deliver it once the receiver is back, with the same webhook-id and
    every attempt recorded."""
    made = api_webhooks.create_endpoint(None, url=receiver.url,
                                        event_types=["batch.cancelled"])
    ended_batch(tmp_path)
    receiver.behaviour.status = 503
    code = ("import time; from llmq.settings import get_settings; "
            "from llmq.worker.webhooks.deliver import Deliverer; "
            "Deliverer(get_settings()).start(); time.sleep(600)")

    def sender() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **hooks_env},
                                start_new_session=True)

    first = sender()
    try:
        receiver.wait(2, timeout=60)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    receiver.behaviour.status = 204
    second = sender()
    try:
        deadline = time.time() + 60
        while deliveries_by_state() != {"delivered": 1}:
            assert time.time() < deadline, deliveries_by_state()
            time.sleep(0.2)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    got = receiver.received
    assert len({r.headers["webhook-id"] for r in got}) == 1
    for r in got:  # each attempt signed afresh, with its own timestamp
        openai.OpenAI(api_key="x").webhooks.verify_signature(
            r.body, r.headers, secret=made["signing_secret"])
    with session_scope() as session:
        attempts = session.execute(select(WebhookAttempt).order_by(WebhookAttempt.id)
                                   ).scalars().all()
        statuses = [a.status_code for a in attempts]
        assert statuses[-1] == 204 and set(statuses[:-1]) == {503}
        assert [a.number for a in attempts] == list(range(1, len(attempts) + 1))
        # an attempt in flight when its sender was killed reached the receiver unrecorded,
        # and was made again once its lease ran out
        assert len(got) - 1 <= len(attempts) <= len(got)


def test_gone_disables_and_the_schedule_ends_in_failure(
        hooks_env: dict[str, str], receiver: Receiver, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_WEBHOOK_RETRY_SCHEDULE", "0s,1s")
    get_settings.cache_clear()
    gone = api_webhooks.create_endpoint(None, url=receiver.url + "/gone",
                                        event_types=["batch.cancelled"])
    failing = Receiver().start()
    try:
        api_webhooks.create_endpoint(None, url=failing.url, event_types=["batch.cancelled"])
        receiver.behaviour.status = 410
        failing.behaviour.status = 500
        ended_batch(tmp_path)
        deliver.announce()
        run_senders(lambda: deliveries_by_state() == {"disabled": 1, "failed": 1})
        assert len(failing.received) == 2  # both attempts of the schedule
    finally:
        failing.stop()
    endpoint = api_webhooks.get_endpoint(None, gone["id"])
    assert endpoint["disabled_at"] and "410" in endpoint["disabled_reason"]
    ended_batch(tmp_path)  # a disabled endpoint hears nothing more
    deliver.announce()
    assert deliveries_by_state() == {"disabled": 1, "failed": 1, "pending": 1}
    api_webhooks.update_endpoint(None, gone["id"], name="back")  # enabled again
    assert api_webhooks.get_endpoint(None, gone["id"])["disabled_at"] is None


def test_slow_redirecting_and_huge_receivers_do_not_hold_up_the_others(
        hooks_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_WEBHOOK_TIMEOUT", "4")  # room for the other three meanwhile
    get_settings.cache_clear()
    slow, redirecting, huge, fast = (Receiver().start() for _ in range(4))
    try:
        slow.behaviour.delay = 8  # past LLMQ_WEBHOOK_TIMEOUT
        redirecting.behaviour.status, redirecting.behaviour.location = 307, fast.url + "/moved"
        huge.behaviour.body_bytes = 256 << 20
        for r in (slow, redirecting, huge, fast):
            api_webhooks.create_endpoint(None, url=r.url, event_types=["batch.cancelled"])
        ended_batch(tmp_path)
        deliver.announce()

        def settled() -> bool:
            with session_scope() as session:
                return all(d.attempts >= 1 for d in session.execute(
                    select(WebhookDelivery)).scalars())
        run_senders(settled)
        with session_scope() as session:
            by_url = {d.url: d for d in session.execute(select(WebhookDelivery)).scalars()}
            assert by_url[fast.url].state == "delivered"
            assert by_url[huge.url].state == "delivered"
            assert "no answer within 4 s" in by_url[slow.url].last_error
            assert "redirect" in by_url[redirecting.url].last_error
            assert by_url[redirecting.url].state == "pending"  # retried, not followed
            slow_attempt = session.execute(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id == by_url[slow.url].id)).scalar_one()
            slow_ended = slow_attempt.started_at + timedelta(
                milliseconds=slow_attempt.duration_ms)
            assert by_url[fast.url].delivered_at < slow_ended
        assert all(r.path == "/hook" for r in fast.received)  # the redirect was not followed
        assert huge.behaviour.written and huge.behaviour.written[0] < 256 << 20
    finally:
        for r in (slow, redirecting, huge, fast):
            r.stop()


def test_pipeline_runs_tell_the_keyless_endpoints(
        hooks_env: dict[str, str], receiver: Receiver) -> None:
    api_webhooks.create_endpoint(None, url=receiver.url, event_types=["pipeline_run.completed"])
    with session_scope() as session:
        source = Source(name="docs", location="/nowhere")
        session.add(source)
        session.flush()
        session.add(PipelineRun(id="run_hooktest", source_id=source.id, model="m",
                                state=RunState.COMPLETED, finished_at=utcnow()))
    assert deliver.announce() == 1
    run_senders(lambda: deliveries_by_state() == {"delivered": 1})
    assert b'"type":"pipeline_run.completed"' in receiver.received[0].body
    assert b'"data":{"id":"run_hooktest"}' in receiver.received[0].body


def test_endpoint_input_is_checked_and_rotation_signs_with_both(
        hooks_env: dict[str, str], receiver: Receiver) -> None:
    with pytest.raises(InvalidRequest, match="event_types") as bad:
        api_webhooks.create_endpoint(None, url=receiver.url, event_types=["response.completed"])
    assert bad.value.param == "event_types"
    with pytest.raises(InvalidRequest, match="only http and https"):
        api_webhooks.create_endpoint(None, url="gopher://x/", event_types=["batch.failed"])
    made = api_webhooks.create_endpoint(None, url=receiver.url, event_types=["batch.failed"])
    rotated = api_webhooks.rotate_secret(None, made["id"], keep_old=True)
    result = api_webhooks.test_endpoint(None, made["id"], "batch.failed")
    assert result["status_code"] == 200
    got = receiver.wait(1)[0]
    sdk = openai.OpenAI(api_key="x").webhooks
    for secret in (made["signing_secret"], rotated["signing_secret"]):
        sdk.verify_signature(got.body, got.headers, secret=secret)
    api_webhooks.rotate_secret(None, made["id"])  # the old one stops at once
    api_webhooks.test_endpoint(None, made["id"])
    last = receiver.wait(2)[1]
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.verify_signature(last.body, last.headers, secret=rotated["signing_secret"])
    assert [d["state"] for d in api_webhooks.deliveries(api_webhooks.EVERY)] == [
        "delivered", "delivered"]
    receiver.stop()
    with pytest.raises(InvalidRequest, match="reached no receiver"):
        api_webhooks.test_endpoint(None, made["id"])


def test_old_events_go_with_retention(hooks_env: dict[str, str], receiver: Receiver,
                                      tmp_path: Path) -> None:
    api_webhooks.create_endpoint(None, url=receiver.url, event_types=["batch.cancelled"])
    ended_batch(tmp_path)
    deliver.announce()
    run_senders(lambda: deliveries_by_state() == {"delivered": 1})
    with session_scope() as session:
        session.execute(update(WebhookEvent).values(created_at=utcnow() - timedelta(days=40)))
    report = purge(timedelta(days=30))
    assert report.webhook_events == 1
    with session_scope() as session:
        assert session.execute(select(WebhookAttempt)).first() is None
        assert session.execute(select(WebhookDelivery)).first() is None
