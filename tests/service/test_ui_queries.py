"""The status page's reads on SQLite and PostgreSQL: the batch filters agree with the state
`llmq status` derives, a key sees only its own batches, throughput lands in the right minute,
and sessions end with their key or their time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from llmq.api import keys as api_keys
from llmq.api import ui
from llmq.api.service import NotFound
from llmq.db import openai_batches as http_rows
from llmq.db import queries
from llmq.db import ui as rows
from llmq.db.migrate import upgrade
from llmq.db.models import Batch, Request, RequestState, UiSession, utcnow
from llmq.db.session import session_scope

RESULT = {"text": "t", "finish_reason": "length", "prompt_tokens": 3, "completion_tokens": 5,
          "worker_host": "h", "worker_pid": 1, "device": "cpu", "model": "m",
          "engine_batch_size": 2.0, "queue_ms": 1.0, "prefill_ms": 2.0, "decode_ms": 3.0,
          "total_ms": 6.0}


def _batch(owner: str | None, n: int = 3) -> tuple[str, list[int]]:
    reqs = [queries.NewRequest(f"c{i}", "completion", {"prompt": "p"}, {}, line=i + 1)
            for i in range(n)]
    with session_scope() as s:
        batch_id, ids = queries.create_batch(s, requests=reqs, model="m")
        s.get(Batch, batch_id).owner = owner  # type: ignore[union-attr]
    return batch_id, ids


def _run(ids: list[int], succeed: int = 0, fail: int = 0) -> None:
    """Claims ``ids``; the first ``succeed`` succeed, the next ``fail`` fail."""
    now = utcnow()
    with session_scope() as s:
        queries.claim(s, ids, "w1", max_attempts=3)
    for rid in ids[:succeed]:
        with session_scope() as s:
            queries.record_success(s, rid, result=RESULT, started_at=now, first_token_at=now,
                                   finished_at=now)
    for rid in ids[succeed:succeed + fail]:
        with session_scope() as s:
            queries.record_failure(s, rid, "boom")


def test_filters_agree_with_the_derived_state_and_keys_see_their_own(
        llmq_env: dict[str, str]) -> None:
    upgrade()
    mine = api_keys.create_key("mine")["id"]
    other = api_keys.create_key("other")["id"]
    made = {}
    made["queued"] = _batch(mine)[0]
    b, ids = _batch(mine)
    _run(ids[:1])  # one running, two queued
    made["running"] = b
    b, ids = _batch(other)
    _run(ids[:1], succeed=1)  # one done, two queued: running by `llmq status`
    made["running, partly done"] = b
    b, ids = _batch(mine)
    _run(ids, succeed=3)
    made["completed"] = b
    b, ids = _batch(other)
    _run(ids, succeed=2, fail=1)
    made["completed with a failure"] = b
    b, ids = _batch(None)
    with session_scope() as s:
        queries.cancel_batch(s, b)
    made["cancelled"] = b
    with session_scope() as s:
        derived = {}
        for b in made.values():
            counts = queries.batch_counts(s, b)
            derived[b] = queries.batch_state(counts, s.get(Batch, b).cancelled_at is not None)
        for state in rows.BATCH_FILTERS:
            found, total = rows.batch_page(s, rows.EVERYONE, state, 0, 50)
            expect = ({b for b in made.values() if queries.batch_counts(s, b)["failed"]}
                      if state == "failed" else {b for b, d in derived.items() if d == state})
            assert {x.id for x in found} == expect, state
            assert total == len(expect)
        every, total = rows.batch_page(s, rows.EVERYONE, None, 0, 50)
        assert total == 6 and [x.id for x in every] == sorted(
            made.values(), key=lambda b: (s.get(Batch, b).created_at, b), reverse=True)
        owned, _ = rows.batch_page(s, mine, None, 0, 50)
        assert {x.id for x in owned} == {made["queued"], made["running"], made["completed"]}
        keyless, _ = rows.batch_page(s, None, None, 0, 50)
        assert {x.id for x in keyless} == {made["cancelled"]}
        page2, _ = rows.batch_page(s, rows.EVERYONE, None, 4, 50)
        assert [x.id for x in page2] == [x.id for x in every][4:]


def test_pages_count_tokens_and_progress(llmq_env: dict[str, str]) -> None:
    upgrade()
    key = api_keys.create_key("k")
    b, ids = _batch(key["id"], n=4)
    _run(ids, succeed=3, fail=1)
    token = ui.sign_in(key["key"])
    who = ui.viewer(token)
    assert who is not None and not who.admin and who.key_id == key["id"]
    page = ui.batches(who, None, 1)
    assert [r["id"] for r in page["rows"]] == [b]
    assert page["rows"][0]["progress"] == {"done": 4, "total": 4, "percent": 100}
    detail = ui.batch(who, b)
    assert detail["state"] == "completed" and detail["can_retry"]
    assert detail["failed"] == [{"custom_id": "c3", "line": 4, "error": "boom"}]
    assert detail["progress_chart"].marks[-1].value == 4
    ttft = detail["charts"]["time to first token"]
    assert sum(m.value for m in ttft.marks) == 3  # the three results, 3 ms each
    over = ui.overview(who)
    assert over["hour_tokens"] == 15 and over["workers"] == []  # a key sees no workers
    # in the newest minute (or the one before, if the clock turned a minute meanwhile)
    assert sum(m.value for m in over["hour"].marks[-2:]) * 60 == pytest.approx(15)
    assert sum(m.value for m in over["day"].marks[-2:]) * 900 == pytest.approx(15)
    with pytest.raises(ui.InvalidQuery) as bad:
        ui.batches(who, None, 2)
    assert bad.value.field == "page"
    with pytest.raises(ui.InvalidQuery) as bad:
        ui.batches(who, "done", 1)
    assert bad.value.field == "state"
    someone = _batch(None)[0]
    with pytest.raises(NotFound):
        ui.batch(who, someone)
    with pytest.raises(NotFound):
        ui.cancel(who, someone)
    with session_scope() as s:  # nothing of it was touched
        assert queries.batch_counts(s, someone)["queued"] == 3


def test_retry_reopens_a_files_batch(llmq_env: dict[str, str]) -> None:
    upgrade()
    b, ids = _batch(None, n=2)
    _run(ids, succeed=1, fail=1)
    with session_scope() as s:
        batch = s.get(Batch, b)
        batch.input_file_id, batch.endpoint = "file-x", "/v1/chat/completions"
        http_rows.mark_finalized(s, b, "file-out", "file-err")
    who = ui.viewer(ui.open_session())
    assert who is not None and who.admin
    assert ui.retry(who, b) == 1
    with session_scope() as s:
        batch = s.get(Batch, b)
        assert (batch.finalized_at, batch.output_file_id, batch.error_file_id) == (
            None, None, None)
        assert s.get(Request, ids[1]).state == RequestState.QUEUED


def test_sessions_end_with_their_key_or_their_time(llmq_env: dict[str, str]) -> None:
    upgrade()
    admin = api_keys.create_key("ops", admin=True)
    token = ui.sign_in(admin["key"])
    who = ui.viewer(token)
    assert who is not None and who.admin and who.scope == rows.EVERYONE
    assert who.csrf_ok(who.csrf) and not who.csrf_ok("x" * len(who.csrf))
    assert not who.csrf_ok(None)
    with pytest.raises(ui.SignInRefused):
        ui.sign_in("llmq-" + "x" * 43)
    with pytest.raises(ui.SignInRefused):
        ui.sign_in("sk-not-ours")
    api_keys.revoke_key(admin["id"])
    assert ui.viewer(token) is None
    key = api_keys.create_key("k")
    token = ui.sign_in(key["key"])
    with session_scope() as s:
        for row in s.query(UiSession):
            row.expires_at = utcnow() - timedelta(seconds=1)
    assert ui.viewer(token) is None
    ui.sign_in(key["key"])  # a new sign-in sweeps the expired sessions away
    with session_scope() as s:
        assert s.query(UiSession).count() == 1
