"""Webhooks end to end: endpoints managed by the official `openai` SDK against a real
`llmq serve`, a real worker that runs the batch and announces its end, and a real receiver
that verifies it with `client.webhooks.unwrap`; the same through `llmq webhooks` and
`llmq submit --notify`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from llmq.worker.webhooks.send import new_secret
from tests.conftest import Tiny
from tests.private_servers import RedisServer

from .http_stack import Stack, database, run_stack
from .receiver import Receiver
from .test_http_api import chat_line, client, upload, wait_status
from .workers import llmq, llmq_json, wait_finished

NOTIFY_SECRET = new_secret()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          redis_server: RedisServer, tiny: Tiny) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp(f"hooks-{request.param}")
    for url in database(request.param, folder):
        yield from run_stack(url, redis_server, folder, str(tiny.gguf),
                             LLMQ_WEBHOOKS_ALLOW_PRIVATE="true",
                             LLMQ_WEBHOOK_SECRET=NOTIFY_SECRET,
                             LLMQ_WEBHOOK_RETRY_SCHEDULE="0s,1s,2s")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_the_sdk_manages_endpoints_and_unwraps_a_batch_end(stack: Stack, receiver: Receiver,
                                                           tmp_path: Path) -> None:
    api = client(stack)
    made = api.webhooks.create(url=receiver.url, event_types=["batch.completed"], name="mine")
    assert made.signing_secret.startswith("whsec_") and made.object == "webhook_endpoint"
    assert api.webhooks.retrieve(made.id).signing_secret_hint == made.signing_secret_hint
    assert made.id in [e.id for e in api.webhooks.list()]
    assert "batch.completed" in api.webhooks.event_types.list().data
    stranger = client(stack, stack.other_key)
    with pytest.raises(openai.NotFoundError):
        stranger.webhooks.retrieve(made.id)
    assert made.id not in [e.id for e in stranger.webhooks.list()]
    with pytest.raises(openai.BadRequestError) as bad:
        api.webhooks.create(url="ftp://example.com/", event_types=["batch.completed"],
                            name="x")
    assert bad.value.body["param"] == "url"  # type: ignore[index]

    file_id = upload(api, tmp_path / "in.jsonl", [chat_line(i) for i in range(3)])
    batch = api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    got = receiver.wait(1, timeout=120)[0]
    event = api.webhooks.unwrap(got.body, got.headers, secret=made.signing_secret)
    assert (event.type, event.data.id) == ("batch.completed", batch.id)
    assert wait_status(api, batch.id, ("completed",)).id == batch.id

    result = api.webhooks.test(made.id, event_type="batch.failed")
    assert (result.status_code, result.success) == (200, True)
    tested = api.webhooks.unwrap(receiver.wait(2)[1].body, receiver.received[1].headers,
                                 secret=made.signing_secret)
    assert tested.type == "batch.failed"
    updated = api.webhooks.update(made.id, event_types=["batch.completed", "batch.expired"])
    assert updated.event_types == ["batch.completed", "batch.expired"]
    assert api.webhooks.delete(made.id).deleted
    with pytest.raises(openai.NotFoundError):
        api.webhooks.retrieve(made.id)


def test_the_cli_adds_lists_tests_and_removes_endpoints(stack: Stack, receiver: Receiver
                                                        ) -> None:
    key_id = next(k["id"] for k in llmq_json(stack.env, "keys", "list", "--json")
                  if k["name"] == "tests")
    made = llmq_json(stack.env, "webhooks", "add", receiver.url, "--events",
                     "batch.completed,batch.failed", "--key", key_id, "--json")
    assert set(made) == {"id", "url", "events", "secret"}
    assert made["events"] == ["batch.completed", "batch.failed"]
    listed = llmq_json(stack.env, "webhooks", "list", "--json")
    assert [e["owner"] for e in listed if e["id"] == made["id"]] == [key_id]
    assert "secret" not in json.dumps(listed).replace("signing_secret_hint", "")
    tested = llmq_json(stack.env, "webhooks", "test", made["id"], "--json")
    assert tested["status_code"] == 200
    got = receiver.wait(1)[0]
    openai.OpenAI(api_key="x").webhooks.verify_signature(got.body, got.headers,
                                                         secret=made["secret"])
    sent = llmq_json(stack.env, "webhooks", "deliveries", made["id"], "--json")
    assert sent[0]["state"] == "delivered" and sent[0]["attempts"][0]["status_code"] == 200
    llmq(stack.env, "webhooks", "remove", made["id"])
    assert made["id"] not in [e["id"] for e in llmq_json(stack.env, "webhooks", "list",
                                                         "--json")]

    refused = llmq({**stack.env, "LLMQ_WEBHOOKS_ALLOW_PRIVATE": "false"}, "webhooks", "add",
                   "http://127.0.0.1:9/x", "--events", "batch.completed", check=False)
    assert refused.returncode == 1 and "not a public address" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    wrong = llmq(stack.env, "webhooks", "add", receiver.url, "--events", "batch.done",
                 check=False)
    assert wrong.returncode == 1 and "event_types" in wrong.stderr


def test_submit_notify_signs_with_the_configured_secret(stack: Stack, receiver: Receiver,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(3)))
    unsigned = llmq({**stack.env, "LLMQ_WEBHOOK_SECRET": ""}, "submit", str(path), "--notify",
                    receiver.url, check=False)
    assert unsigned.returncode == 1 and "LLMQ_WEBHOOK_SECRET" in unsigned.stderr
    report = llmq_json(stack.env, "submit", str(path), "--notify", receiver.url, "--json")
    wait_finished(stack.env, report["batch_id"])
    got = receiver.wait(1, timeout=120)[0]
    event = openai.OpenAI(api_key="x").webhooks.unwrap(got.body, got.headers,
                                                       secret=NOTIFY_SECRET)
    assert (event.type, event.data.id) == ("batch.completed", report["batch_id"])
