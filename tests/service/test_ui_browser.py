"""The status page in a real browser: headless Chromium (Debian's package, driven by
Playwright) against `llmq serve`, a real worker on the tiny model, Redis and SQLite. Signs in
with keys, reads each page, clicks cancel and retry, and checks what another key and hostile
strings cannot do. Screenshots go to artifacts/ui/."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Tiny
from tests.private_servers import PrivateCluster, RedisServer, ServerMissing, free_port

from .http_stack import Stack, run_stack, start_server, stop_server
from .workers import llmq, llmq_json

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'

if not Path(CHROMIUM).exists():
    if os.environ.get("LLMQ_REQUIRE_BROWSER"):  # .ci/run installs it: there it must run
        raise RuntimeError(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
          tiny: Tiny) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("ui")
    yield from run_stack(f"sqlite:///{folder / 'llmq.db'}", redis_server, folder,
                         str(tiny.gguf))


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return llmq_json(stack.env, "keys", "create", "--name", "operator", "--admin",
                     "--json")["key"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def api(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=2)


def submit(stack: Stack, key: str, folder: Path, lines: list[Any],
           metadata: dict[str, str] | None = None) -> str:
    path = folder / f"in-{time.monotonic_ns()}.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n"
                            for x in lines))
    client = api(stack, key)
    with path.open("rb") as f:
        file_id = client.files.create(file=f, purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata=metadata).id


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "Hi."}], **body}}


def wait_batch(stack: Stack, key: str, batch_id: str, done: tuple[str, ...],
               timeout: float = 120) -> None:
    client = api(stack, key)
    deadline = time.time() + timeout
    while client.batches.retrieve(batch_id).status not in done:
        assert time.time() < deadline, f"{batch_id} never reached {done}"
        time.sleep(0.3)


def signed_in(browser: Any, stack: Stack, key: str) -> Any:
    """A fresh browser context (its own cookies) signed in with ``key``, on the overview."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(stack.base_url + "/ui")
    assert "/ui/login" in page.url  # not signed in: sent to sign in first
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(stack.base_url + "/ui")
    return page


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def points(page: Any, chart: str) -> list[float]:
    return [float(v) for v in page.eval_on_selector_all(
        f"#{chart} .point", "els => els.map(e => e.dataset.value)")]


def test_a_key_sees_its_batches_with_charts_and_no_one_elses(
        stack: Stack, browser: Any, tmp_path: Path) -> None:
    theirs = submit(stack, stack.other_key, tmp_path, [line("x1"), line("x2")])
    mine = submit(stack, stack.key, tmp_path,
                  [line(f"ok-{i}") for i in range(6)] + [
                      {"custom_id": HOSTILE, "method": "POST",
                       "url": "/v1/chat/completions", "body": {"model": "m"}}],
                  metadata={"note": HOSTILE})
    wait_batch(stack, stack.key, mine, ("completed",))
    wait_batch(stack, stack.other_key, theirs, ("completed",))
    page = signed_in(browser, stack, stack.key)
    assert page.text_content("#viewer") == "tests"
    assert page.query_selector("#workers") is None  # the workers are the admins'
    assert sum(points(page, "tokens-hour")) > 0
    shot(page, "overview-key")

    page.click("text=Batches")
    listed = page.eval_on_selector_all("#batches tr[data-batch]",
                                       "rows => rows.map(r => r.dataset.batch)")
    assert mine in listed and theirs not in listed
    shot(page, "batches")

    page.click(f"a[href='/ui/batches/{mine}']")
    page.wait_for_selector("#progress")
    assert page.text_content("#state") == "completed"
    assert max(points(page, "progress")) == 7  # six done and the invalid line
    assert sum(points(page, "time-to-first-token")) == 6
    assert sum(points(page, "total-time")) == 6
    # the hostile strings are shown as text, and ran nowhere
    assert page.text_content("#failed .cid") == HOSTILE
    assert HOSTILE in page.text_content("table.facts")
    assert page.evaluate("window.__pwned") is None
    shot(page, "batch")

    response = page.goto(f"{stack.base_url}/ui/batches/{theirs}")
    assert response.status == 404 and "Not found" in page.text_content("h1")
    page.context.close()


def test_cancel_and_retry_buttons_change_the_batch(stack: Stack, browser: Any,
                                                   tmp_path: Path) -> None:
    # three waves of the worker's 8 slots: some are still queued when the click comes
    long = [line(f"long-{i}", max_tokens=400, ignore_eos=True) for i in range(24)]
    batch_id = submit(stack, stack.key, tmp_path, long)
    page = signed_in(browser, stack, stack.key)
    page.goto(f"{stack.base_url}/ui/batches/{batch_id}")
    page.wait_for_selector("#cancel")
    page.click("#cancel")
    page.wait_for_url(f"{stack.base_url}/ui/batches/{batch_id}")
    assert page.text_content("#state") == "cancelled"
    status = llmq_json(stack.env, "status", batch_id, "--json")
    assert status["counts"]["cancelled"] > 0 and status["state"] == "cancelled"
    shot(page, "batch-cancelled")

    page.click("#retry")
    page.wait_for_url(f"{stack.base_url}/ui/batches/{batch_id}")
    assert page.text_content("#state") in ("queued", "running", "completed")
    after = llmq_json(stack.env, "status", batch_id, "--json")["counts"]
    assert after["cancelled"] == 0 and after["queued"] + after["running"] + after[
        "succeeded"] == 24
    api(stack, stack.key).batches.cancel(batch_id)  # the rest is not this test's
    page.context.close()


def test_an_admin_sees_every_key_the_workers_and_the_other_pages(
        stack: Stack, admin_key: str, browser: Any, tmp_path: Path) -> None:
    theirs = submit(stack, stack.other_key, tmp_path, [line("y1")])
    wait_batch(stack, stack.other_key, theirs, ("completed",))
    page = signed_in(browser, stack, admin_key)
    assert page.text_content("#viewer") == "operator (admin)"
    worker = page.text_content("#workers tbody")
    assert str(stack.worker.proc.pid) in worker and "cpu" in worker
    assert page.query_selector("#queues") is not None
    shot(page, "overview")
    page.goto(f"{stack.base_url}/ui/batches?state=completed")
    assert theirs in page.eval_on_selector_all("#batches tr[data-batch]",
                                               "rows => rows.map(r => r.dataset.batch)")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "river.txt").write_text("The river rose after three days of rain. " * 8)
    run = llmq_json({**stack.env, "LLMQ_PIPELINE_SUMMARY_TOKENS": "16"}, "pipeline",
                    "summarize", str(docs), "--wait", "--json")
    page.click("text=Pipelines")
    page.wait_for_selector("#runs")
    shot(page, "pipelines")
    page.click(f"a[href='/ui/pipelines/{run['id']}']")
    row = page.text_content("#documents tbody")
    assert "river.txt" in row and "succeeded" in row
    assert page.query_selector_all("#documents td.quality")  # its summary's measures
    shot(page, "pipeline")
    page.click("text=Models")
    page.wait_for_selector("#models")
    shot(page, "models")
    page.context.close()


def test_live_updates_without_a_reload(stack: Stack, browser: Any, tmp_path: Path) -> None:
    page = signed_in(browser, stack, stack.key)
    page.goto(f"{stack.base_url}/ui/batches")
    page.evaluate("document.querySelector('#live').dataset.marker = 'old'")
    batch_id = submit(stack, stack.key, tmp_path, [line("live")])
    # the page polls (htmx): the new batch appears in this same document
    page.wait_for_selector(f"tr[data-batch='{batch_id}']", timeout=20_000)
    assert page.evaluate("window.performance.getEntriesByType('navigation').length") == 1
    page.context.close()


def test_forms_need_this_sessions_token_and_origin(stack: Stack, tmp_path: Path) -> None:
    base = stack.base_url
    with httpx.Client(base_url=base, follow_redirects=False) as http:
        assert http.get("/ui").headers["location"].startswith("/ui/login")
        # a sign-in posted from elsewhere is refused, a wrong key named as such
        assert http.post("/ui/login", data={"key": stack.key}).status_code == 403
        wrong = http.post("/ui/login", data={"key": "llmq-nope"}, headers={"Origin": base})
        assert wrong.status_code == 401 and "no live key" in wrong.text
        signed = http.post("/ui/login", data={"key": stack.key, "next": "https://evil.test/"},
                           headers={"Origin": base})
        assert signed.status_code == 303 and signed.headers["location"] == "/ui"
        cookie = signed.headers["set-cookie"].lower()
        for flag in ("httponly", "samesite=strict", "secure", "path=/ui"):
            assert flag in cookie
        session = re.search(r"llmq_ui=([^;]+)", signed.headers["set-cookie"]).group(1)
        http.cookies.set("llmq_ui", session)  # httpx keeps no Secure cookie over http
        page = http.get("/ui")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)

        batch_id = submit(stack, stack.key, tmp_path, [line(f"c{i}", max_tokens=400,
                                                            ignore_eos=True)
                                                       for i in range(12)])
        action = f"/ui/batches/{batch_id}/cancel"
        assert http.post(action, data={"csrf": csrf}).status_code == 403  # no origin
        assert http.post(action, data={"csrf": "forged"},
                         headers={"Origin": base}).status_code == 403
        assert http.post(action, data={"csrf": csrf},
                         headers={"Origin": "http://evil.test"}).status_code == 403
        assert llmq_json(stack.env, "status", batch_id, "--json")["counts"]["cancelled"] == 0
        done = http.post(action, data={"csrf": csrf}, headers={"Origin": base})
        assert done.status_code == 303
        assert llmq_json(stack.env, "status", batch_id, "--json")["state"] == "cancelled"

        # bad filters and pages name themselves; unknown ids are 404 pages
        bad = http.get("/ui/batches?state=done")
        assert bad.status_code == 400 and "state" in bad.text and "text/html" in bad.headers[
            "content-type"]
        assert http.get("/ui/batches?page=999").status_code == 400
        assert "page" in http.get("/ui/batches?page=x").text
        assert http.get("/ui/batches/batch_nope").status_code == 404
        assert http.get("/ui/pipelines/run_nope").status_code == 404
        assert http.get("/ui/no/such/page").status_code == 404
        too_big = http.post("/ui/login", content=b"key=" + b"x" * (64 << 10),
                            headers={"Origin": base,
                                     "Content-Type": "application/x-www-form-urlencoded"})
        assert too_big.status_code == 413

        # signing out ends the session
        assert http.post("/ui/logout", data={"csrf": csrf},
                         headers={"Origin": base}).status_code == 303
        assert http.get("/ui").status_code == 303


def test_the_page_says_when_the_database_or_broker_is_gone(browser: Any,
                                                         tmp_path: Path) -> None:
    try:
        cluster = PrivateCluster()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    try:
        cluster.start()
        cluster.create_database()
        env = {"LLMQ_DATABASE_URL": cluster.url, "LLMQ_API_OPEN": "true",
               "LLMQ_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nobody there
        llmq(env, "db", "upgrade")
        port = free_port()
        server = start_server(env, port, tmp_path / "serve.log")
        try:
            page = browser.new_context().new_page()
            page.goto(f"http://127.0.0.1:{port}/ui")  # open mode: no sign-in on loopback
            page.wait_for_selector("#health .banner")
            assert "cannot reach its broker" in page.text_content("#health")
            # the page itself works: what needs the broker says it did not answer
            assert "the broker did not answer" in page.text_content("main")
            assert page.text_content("#workers tbody")
            cluster.stop()
            page.wait_for_selector("#health :text('cannot reach its database')",
                                   timeout=20_000)  # the banner polls: no reload
            shot(page, "database-lost")
            response = page.reload()
            assert response.status == 503 and "database" in page.text_content("main")
            page.context.close()
        finally:
            stop_server(server)
    finally:
        try:
            cluster.stop()
        except RuntimeError:  # stopped already, by the test
            pass
        cluster.remove()
