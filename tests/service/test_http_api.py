"""The official `openai` package, unmodified, against a real `llmq serve`, a real worker,
Redis, and SQLite and PostgreSQL: files, batches (output and error files, a bad line, cancel,
expiry, idempotent create), keys (401, another key's 404), caps (413, 429), completions."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Tiny
from tests.private_servers import RedisServer

from .http_stack import Stack, database, run_stack
from .workers import llmq, llmq_json

QUEUE_CAP = 60  # LLMQ_API_MAX_QUEUED_PER_KEY of this module's server
FILE_CAP = 100_000  # LLMQ_API_MAX_FILE_BYTES


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          redis_server: RedisServer, tiny: Tiny) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp(f"http-{request.param}")
    for url in database(request.param, folder):
        yield from run_stack(url, redis_server, folder, str(tiny.gguf),
                             LLMQ_API_MAX_QUEUED_PER_KEY=str(QUEUE_CAP),
                             LLMQ_API_MAX_FILE_BYTES=str(FILE_CAP))


def client(stack: Stack, key: str | None = None, retries: int = 2) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key or stack.key,
                         max_retries=retries)


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini",
                     "messages": [{"role": "user", "content": f"Say {i}."}], **body}}


def upload(api: openai.OpenAI, path: Path, lines: list[Any]) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n"
                            for x in lines))
    with path.open("rb") as f:
        return api.files.create(file=f, purpose="batch").id


def wait_status(api: openai.OpenAI, batch_id: str, done: tuple[str, ...],
                timeout: float = 120) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        batch = api.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        time.sleep(0.3)
    raise TimeoutError(f"{batch_id}: {batch.status}")


def lines_of(api: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    text = api.files.content(file_id).text
    return {r["custom_id"]: r for r in map(json.loads, text.splitlines())}


def test_batch_round_trip_with_a_bad_line(stack: Stack, tmp_path: Path) -> None:
    api = client(stack)
    lines: list[Any] = [chat_line(i) for i in range(6)]
    lines.insert(3, chat_line(99, temperature=-1))  # line 4: refused by the contract
    lines.insert(5, "{not json")  # line 6
    file_id = upload(api, tmp_path / "in.jsonl", lines)
    assert api.files.retrieve(file_id).purpose == "batch"
    assert file_id in [f.id for f in api.files.list()]

    batch = api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"job": "round-trip"})
    assert batch.status in ("in_progress", "finalizing", "completed")
    again = api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"job": "round-trip"})
    assert again.id == batch.id  # an SDK retry makes no second batch
    assert sorted(e.line for e in batch.errors.data) == [4, 6]

    done = wait_status(api, batch.id, ("completed",))
    assert done.request_counts.total == 8
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 2)
    assert done.metadata == {"job": "round-trip"} and done.completed_at >= done.created_at
    output = lines_of(api, done.output_file_id)
    assert sorted(output) == [f"req-{i}" for i in range(6)]
    body = output["req-0"]["response"]["body"]
    assert output["req-0"]["response"]["status_code"] == 200
    # ids that say nothing of how many requests the server has seen, the same on every read
    ids = [line["id"] for line in output.values()]
    assert all(re.fullmatch(r"batch_req_[0-9a-f]{24}", i) for i in ids) and len(set(ids)) == 6
    assert lines_of(api, done.output_file_id)["req-0"]["id"] == output["req-0"]["id"]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", body["id"])
    assert body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == 8
    # the batch's usage sums its output lines' (as the SDK types it)
    assert done.usage is not None and done.usage.output_tokens == 6 * 8
    assert done.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in output.values())
    assert done.usage.input_tokens_details.cached_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
        for line in output.values())
    errors = lines_of(api, done.error_file_id)
    assert errors["req-99"]["response"]["status_code"] == 400
    assert "line 4" in errors["req-99"]["response"]["body"]["error"]["message"]
    assert any("line 6" in r["response"]["body"]["error"]["message"] for r in errors.values())

    # an ordinary llmq batch: the CLI sees it
    status = llmq_json(stack.env, "status", batch.id, "--json")
    assert status["state"] == "completed" and status["counts"]["succeeded"] == 6
    assert batch.id in [b.id for b in api.batches.list(limit=100)]


def _sums(rows: list[dict[str, Any]]) -> tuple[int, ...]:
    return tuple(sum(r[k] for r in rows) for k in ("requests", "input_tokens", "cached_tokens",
                                                    "output_tokens", "total_tokens"))


def test_usage_per_key_and_day(stack: Stack, tmp_path: Path) -> None:
    api = client(stack)
    file_id = upload(api, tmp_path / "in.jsonl", [chat_line(i) for i in range(3)])
    batch = api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"job": "usage"})
    done = wait_status(api, batch.id, ("completed",))

    def read(key: str, query: str = "?days=3660") -> httpx.Response:
        return httpx.get(stack.base_url + "/v1/usage" + query,
                         headers={"Authorization": f"Bearer {key}"})

    mine = read(stack.key).json()["data"]
    assert mine and all("key_id" not in r for r in mine)  # a key reads its own, unnamed
    assert [r["date"] for r in mine] == sorted((r["date"] for r in mine), reverse=True)
    requests, input_tokens, cached, output_tokens, total = _sums(mine)
    assert requests >= 3 and output_tokens >= done.usage.output_tokens
    assert input_tokens >= done.usage.input_tokens and total == input_tokens + output_tokens
    # the CLI's view of the same key, and /metrics', agree
    ids = {k["name"]: k["id"] for k in llmq_json(stack.env, "keys", "list", "--json")}
    by_cli = llmq_json(stack.env, "keys", "usage", "--key", ids["tests"], "--days", "3660",
                       "--json")
    assert {r["key_id"] for r in by_cli} == {ids["tests"]}
    assert _sums(by_cli) == _sums(mine)
    every = llmq_json(stack.env, "keys", "usage", "--days", "3660", "--json")
    assert _sums([r for r in every if r["key_id"] == ids["tests"]]) == _sums(mine)
    metrics = httpx.get(stack.base_url + "/metrics").text
    assert (f'llmq:generation_tokens_by_key_total{{key="{ids["tests"]}"}} '
            f"{float(output_tokens)}") in metrics
    # another key's usage leaves this key's batches out
    others = read(stack.other_key).json()["data"]
    assert _sums(others) == _sums([r for r in every if r["key_id"] == ids["someone else"]])
    bad = read(stack.key, "?days=0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "days"


def test_files_and_outputs_expire_as_asked(stack: Stack, tmp_path: Path) -> None:
    api = client(stack)
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(chat_line(0)) + "\n")
    with path.open("rb") as f:
        default = api.files.create(file=f, purpose="batch")
    assert default.expires_at == default.created_at + 30 * 86400  # OpenAI's batch default
    with path.open("rb") as f:
        hour = api.files.create(file=f, purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": 3600})
    assert hour.expires_at == hour.created_at + 3600
    assert api.files.retrieve(hour.id).expires_at == hour.expires_at
    for bad, param in (({"anchor": "created_at", "seconds": 60}, "expires_after.seconds"),
                       ({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor")):
        with path.open("rb") as f, pytest.raises(openai.BadRequestError) as refused:
            api.files.create(file=f, purpose="batch", expires_after=bad)  # type: ignore[arg-type]
        assert refused.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as refused:
        api.batches.create(input_file_id=hour.id, endpoint="/v1/chat/completions",
                           completion_window="24h",
                           output_expires_after={"anchor": "created_at", "seconds": 10 ** 8})
    assert refused.value.body["param"] == "output_expires_after.seconds"
    batch = api.batches.create(input_file_id=hour.id, endpoint="/v1/chat/completions",
                               completion_window="24h",
                               output_expires_after={"anchor": "created_at", "seconds": 7200})
    done = wait_status(api, batch.id, ("completed",))
    output = api.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 7200


def test_cancel_mid_batch(stack: Stack, tmp_path: Path) -> None:
    api = client(stack)
    # three waves of the worker's 8 slots: queued ones are left when the cancel comes, on
    # however fast a machine
    long = [chat_line(i, max_tokens=400, ignore_eos=True) for i in range(24)]
    batch = api.batches.create(input_file_id=upload(api, tmp_path / "long.jsonl", long),
                               endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 60
    while llmq_json(stack.env, "status", batch.id, "--json")["counts"]["running"] == 0:
        assert time.time() < deadline, "nothing started"
        time.sleep(0.1)
    cancelled = api.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_status(api, batch.id, ("cancelled",))
    errors = lines_of(api, done.error_file_id)
    assert errors and {r["error"]["code"] for r in errors.values()} == {"batch_cancelled"}
    assert len(errors) + len(lines_of(api, done.output_file_id)) == 24


def test_expiry_keeps_what_finished(stack: Stack, tmp_path: Path) -> None:
    """The window is a race against the worker, so a machine too slow to finish even the
    short requests in it tries again with a longer one; every try checks the whole contract,
    and the test needs one where some requests finished and the rest expired."""
    api = client(stack)
    # a few short requests that finish at once, then more long ones than the worker's 8
    # slots can finish within the window
    lines = [chat_line(i, max_tokens=2) for i in range(4)]
    lines += [chat_line(i, max_tokens=400, ignore_eos=True) for i in range(4, 48)]
    outcomes = []
    for window in ("2s", "6s", "20s"):
        batch = api.batches.create(
            input_file_id=upload(api, tmp_path / f"long-{window}.jsonl", lines),
            endpoint="/v1/chat/completions", completion_window=window)
        done = wait_status(api, batch.id, ("expired",))
        assert done.expired_at is not None and done.expired_at >= done.expires_at
        errors = lines_of(api, done.error_file_id)
        assert errors and {r["error"]["code"] for r in errors.values()} == {"batch_expired"}
        finished = lines_of(api, done.output_file_id)
        assert len(errors) + len(finished) == 48
        assert (done.request_counts.completed, done.request_counts.failed) == (
            len(finished), len(errors))
        outcomes.append((window, len(finished)))
        if finished:
            break
    assert outcomes[-1][1], f"nothing finished within any window: {outcomes}"


def test_keys_and_caps(stack: Stack, tmp_path: Path) -> None:
    api = client(stack, retries=0)
    file_id = upload(api, tmp_path / "one.jsonl", [chat_line(1)])
    with pytest.raises(openai.AuthenticationError):
        client(stack, key="llmq-wrong", retries=0).files.list()
    other = client(stack, key=stack.other_key, retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(file_id)
    batch = api.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    assert batch.id not in [b.id for b in other.batches.list()]

    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps(chat_line(0)) * (FILE_CAP // 100))
    with pytest.raises(openai.APIStatusError) as too_big, big.open("rb") as f:
        api.files.create(file=f, purpose="batch")
    assert too_big.value.status_code == 413

    many = [chat_line(i, max_tokens=400, ignore_eos=True) for i in range(QUEUE_CAP - 5)]
    first = api.batches.create(input_file_id=upload(api, tmp_path / "many.jsonl", many),
                               endpoint="/v1/chat/completions", completion_window="24h")
    try:
        with pytest.raises(openai.RateLimitError) as full:
            api.batches.create(input_file_id=upload(api, tmp_path / "more.jsonl",
                                                    [chat_line(i) for i in range(10)]),
                               endpoint="/v1/chat/completions", completion_window="24h")
        assert int(full.value.response.headers["retry-after"]) > 0
        # another key has a cap of its own
        other_file = upload(other, tmp_path / "other.jsonl", [chat_line(1)])
        other.batches.create(input_file_id=other_file, endpoint="/v1/chat/completions",
                             completion_window="24h")
    finally:
        api.batches.cancel(first.id)

    other_id = next(k["id"] for k in llmq_json(stack.env, "keys", "list", "--json")
                    if k["name"] == "someone else")
    llmq(stack.env, "keys", "revoke", other_id)
    with pytest.raises(openai.AuthenticationError):
        other.files.list()
    assert all("key" not in k for k in llmq_json(stack.env, "keys", "list", "--json"))


def test_completions_plain_and_streamed(stack: Stack) -> None:
    api = client(stack)
    messages = [{"role": "user", "content": "Name a colour."}]
    plain = api.chat.completions.create(model="gpt-4o-mini", messages=messages, max_tokens=6)
    assert plain.object == "chat.completion" and plain.usage.completion_tokens > 0
    chunks = list(api.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                              max_tokens=6, stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # greedy: the same text
    # token by token, as the worker generated them (the role first, the finish reason last)
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    completion = api.completions.create(model="x", prompt="Once upon a time", max_tokens=4)
    assert completion.object == "text_completion" and completion.choices[0].text is not None
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="x", messages=messages, temperature=-3)
    assert bad.value.body["param"] or "temperature" in bad.value.message
    assert {m.id for m in api.models.list()}


def test_a_stream_carries_event_ids_and_the_same_text_as_the_result(stack: Stack) -> None:
    body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", stack.base_url + "/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.key}"}) as answer:
        events = [e for e in answer.read().decode().split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    pieces = [e for e in events if e.startswith("id: ")]
    assert len(pieces) > 1 and all(re.match(r"id: \d+-\d+\ndata: ", e) for e in pieces)
    streamed = "".join(json.loads(e.split("data: ", 1)[1])["choices"][0]["text"]
                       for e in events[:-1] if json.loads(e.split("data: ", 1)[1])["choices"])
    plain = client(stack).completions.create(model="x", prompt="Once upon a time",
                                             max_tokens=8)
    assert streamed == plain.choices[0].text


def test_metrics_and_health(stack: Stack) -> None:
    assert httpx.get(stack.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(stack.base_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    assert ready.json()["workers"] >= 1  # the stack's worker, heartbeating once it could serve
    text = httpx.get(stack.base_url + "/metrics").text
    for name in ("llmq:num_requests_running", "llmq:num_requests_waiting",
                 "llmq:generation_tokens_total", "llmq:time_to_first_token_seconds_bucket",
                 "llmq:request_queue_time_seconds_count", "llmq:engine_occupancy",
                 "llmq:prefix_cache_hits_total", "llmq:num_preemptions_total"):
        assert name in text, name
    # the completions of the tests before ran as the interactive class
    assert re.search(r'llmq:time_to_first_token_by_priority_seconds_count'
                     r'\{priority="interactive"\} [1-9]', text)
    tokens = next(line for line in text.splitlines()
                  if line.startswith("llmq:generation_tokens_total"))
    assert float(tokens.split()[-1]) > 0
    # a worker is named by host and process, nothing more
    workers = re.findall(r'llmq:engine_occupancy\{[^}]*worker="([^"]*)"', text)
    assert workers and all(re.fullmatch(r"[^:]+:\d+", w) for w in workers), workers


def test_open_mode_serves_loopback_only(tmp_path: Path) -> None:
    env = {"LLMQ_DATABASE_URL": f"sqlite:///{tmp_path / 'llmq.db'}", "LLMQ_API_OPEN": "true"}
    refused = llmq(env, "serve", "--host", "0.0.0.0", check=False)
    assert refused.returncode != 0 and "loopback" in refused.stderr
    assert "Traceback" not in refused.stderr
