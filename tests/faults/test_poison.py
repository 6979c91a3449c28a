"""A request that crashes its worker every time (fault 7), or wedges its engine every time
(fault 10): it fails after LLMQ_MAX_ATTEMPTS, and the requests that shared its message, and
its engine steps, still succeed. The faults are real ones, triggered by llmq.failpoints: the
process exits at once, as on a segfault (request.crash), or the engine's step never returns,
as on a hung kernel, until the heartbeat thread sees no step for LLMQ_ENGINE_STALL_SECONDS
and exits the worker (request.wedge). A restarted worker plays the part of docker's
restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmq.api import service
from tests.service.test_end_to_end import wait_done
from tests.service.workers import Worker, count_rows, llmq_json

from .invariants import assert_every_request_ended_once

MARKER = "@@crash-this-worker@@"


FAULTS = {"crash": {"LLMQ_FAILPOINTS": f"request.crash={MARKER}"},
          "wedge": {"LLMQ_FAILPOINTS": f"request.wedge={MARKER}",
                    "LLMQ_ENGINE_STALL_SECONDS": "4"}}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_request_that_kills_its_worker_fails_alone(env: dict, tmp_path: Path,
                                                     fault: str) -> None:
    path = tmp_path / "p.jsonl"
    with path.open("w") as f:
        for i in range(12):
            content = f"Question {i}?" + (f" {MARKER}" if i == 5 else "")
            f.write(json.dumps({"custom_id": f"q{i:02d}", "max_tokens": 16, "ignore_eos": True,
                                "messages": [{"role": "user", "content": content}]}) + "\n")
    batch = llmq_json(env, "submit", str(path), "--json")["batch_id"]  # one message of 12
    worker_env = {**env, **FAULTS[fault]}
    crashes = 0
    deadline = time.time() + 300
    while service.status(batch)["state"] != "completed":
        assert time.time() < deadline, service.status(batch)
        worker = Worker(worker_env, tmp_path / f"w{crashes}.log", "--slots", "4",
                        "--concurrency", "2")
        while worker.proc.poll() is None and service.status(batch)["state"] != "completed":
            time.sleep(0.2)
        if worker.proc.poll() is not None:
            assert worker.proc.returncode == 70, (tmp_path / f"w{crashes}.log").read_text()
            crashes += 1
            assert crashes <= 3, "the poisonous request ran more than LLMQ_MAX_ATTEMPTS times"
        else:
            worker.stop()
    info = wait_done(batch, timeout=5)
    assert crashes == 3  # LLMQ_MAX_ATTEMPTS
    assert info["counts"]["succeeded"] == 11 and info["counts"]["failed"] == 1
    assert count_rows("SELECT count(*) FROM requests WHERE custom_id = 'q05' AND "
                      "state = 'failed' AND last_error LIKE 'gave up after 3 attempts%'") == 1
    # the innocent ones were lost with it at most twice (fresh, then with the others lost
    # once), and then ran without it
    assert count_rows("SELECT max(attempts) FROM requests WHERE custom_id <> 'q05'") <= 3
    assert_every_request_ended_once()
