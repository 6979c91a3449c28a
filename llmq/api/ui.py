"""The status page (/ui) as service functions: who is looking (a browser session signed in
with an API key), and what each page shows them. A key sees its own batches; an admin key,
or open mode's anonymous viewer, sees everything, the workers and the queues. Pipeline runs
are started by operators and belong to no key: admins see them."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from llmq.api import keys as api_keys
from llmq.api import ui_charts
from llmq.api.service import NotFound
from llmq.db import metrics as aggregates
from llmq.db import openai_batches as http_rows
from llmq.db import pipeline as pipeline_store
from llmq.db import queries
from llmq.db import ui as rows
from llmq.db.models import Batch, utcnow
from llmq.db.session import session_scope
from llmq.settings import get_settings

PAGE_SIZE = 50
FAILED_SHOWN = 50
PROGRESS_POINTS = 40


class InvalidQuery(ValueError):
    """A filter or page number out of range (400); ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SignInRefused(ValueError):
    pass


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a session's key (None: open mode's anonymous viewer)."""

    session: str  # the SHA-256 of the cookie's token
    key_id: str | None
    name: str
    admin: bool
    csrf: str

    @property
    def scope(self) -> str | None:
        """Whose batches this viewer sees (db.ui.EVERYONE: all)."""
        return rows.EVERYONE if self.admin else self.key_id

    def sees(self, batch: Batch) -> bool:
        return self.admin or batch.owner == self.key_id

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, token or "")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_session(key_id: str | None) -> str:
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with session_scope() as session:
        rows.add_session(session, _digest(token), key_id, secrets.token_urlsafe(32), now,
                         now + timedelta(hours=get_settings().ui_session_hours))
    return token


def sign_in(key: str) -> str:
    """A new session's cookie token for a live key; SignInRefused otherwise."""
    key = key.strip()
    if not key.startswith(api_keys.KEY_PREFIX):
        raise SignInRefused("not an llmq key (they start with llmq-; `llmq keys create`)")
    with session_scope() as session:
        row = rows.key_by_hash(session, api_keys.key_hash(key))
        key_id = row.id if row else None
    if key_id is None:
        raise SignInRefused("no live key matches: it was mistyped or has been revoked")
    return _new_session(key_id)


def open_session() -> str:
    """Open mode's session: anonymous, but with a CSRF token like any other."""
    return _new_session(None)


def viewer(token: str | None) -> Viewer | None:
    if not token:
        return None
    digest = _digest(token)
    with session_scope() as session:
        found = rows.live_session(session, digest, utcnow())
        if found is None:
            return None
        ui_session, key = found
        if key is None:
            return Viewer(digest, None, "open mode", True, ui_session.csrf)
        return Viewer(digest, key.id, key.name, key.admin, ui_session.csrf)


def sign_out(who: Viewer) -> None:
    with session_scope() as session:
        rows.drop_session(session, who.session)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def _ago(t: datetime | None, now: datetime) -> str:
    if t is None:
        return ""
    return _duration((now - t).total_seconds()) + " ago"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _page(page: int, total: int) -> tuple[int, int]:
    """(offset, pages) of a page number, checked: 400 naming ``page`` when out of range."""
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if page < 1 or page > pages:
        raise InvalidQuery("page", f"page {page} is out of range: there "
                           f"{'is 1 page' if pages == 1 else f'are {pages} pages'}")
    return (page - 1) * PAGE_SIZE, pages


# --- overview -------------------------------------------------------------------------------

def overview(who: Viewer) -> dict[str, Any]:
    """Workers and queues (admins), requests waiting, tokens/s over the last hour and day."""
    now = utcnow().replace(microsecond=0)
    heard_after = now - timedelta(seconds=get_settings().worker_timeout)
    hour_start = now.replace(second=0) - timedelta(minutes=59)
    day_start = now.replace(minute=(now.minute // 15) * 15, second=0) - timedelta(hours=23,
                                                                                   minutes=45)
    with session_scope() as session:
        # one read of the day, by minute: the hour is its last 60 minutes
        minutes = rows.tokens_over_time(session, who.scope, day_start, timedelta(minutes=1),
                                        96 * 15)
        day = [sum(minutes[i:i + 15]) for i in range(0, 96 * 15, 15)]
        offset = int((hour_start - day_start).total_seconds()) // 60
        hour = minutes[offset:offset + 60]
        waiting = rows.requests_waiting(session, who.scope)
        workers = []
        if who.admin:
            for w in aggregates.live_workers(session, heard_after):
                stats = w.stats or {}
                slots = int(stats.get("slots", 0) or 0)
                running = int(stats.get("running", 0) or 0)
                workers.append({"name": w.name, "host": w.host, "pid": w.pid, "model": w.model,
                                "device": w.device, "slots": slots, "running": running,
                                "occupancy": round(100 * running / slots) if slots else 0,
                                "heartbeat": _ago(w.heartbeat_at, now),
                                "started": _iso(w.started_at)})
    queues: dict[str, int] | None = {}
    if who.admin:
        queues = _queue_depths()
    label = lambda t: t.strftime("%H:%M")  # noqa: E731
    return {
        "now": _iso(now), "workers": workers, "queues": queues,
        "waiting": {"queued": waiting.get("queued", 0), "running": waiting.get("running", 0)},
        "hour": ui_charts.line_chart([n / 60 for n in hour],
                                     [label(hour_start + timedelta(minutes=i))
                                      for i in range(60)], "tokens/s"),
        "day": ui_charts.line_chart([n / 900 for n in day],
                                    [label(day_start + timedelta(minutes=15 * i))
                                     for i in range(96)], "tokens/s"),
        "hour_tokens": sum(hour), "day_tokens": sum(day),
    }


def _queue_depths() -> dict[str, int] | None:
    """Messages waiting per broker queue (None: the broker did not answer)."""
    try:
        from llmq.worker.broker import queue_depths

        return dict(sorted(queue_depths(get_settings().broker_url).items()))
    except Exception:
        return None


def health() -> dict[str, str]:
    """"ok" or the error of the database and of the broker, as /readyz reads them."""
    from llmq.api.metrics import readiness

    return readiness()


# --- batches --------------------------------------------------------------------------------

def _progress(counts: dict[str, int]) -> dict[str, Any]:
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    total = counts["total"]
    return {"done": done, "total": total,
            "percent": round(100 * done / total) if total else 100}


def _eta(counts: dict[str, int], started: datetime | None, now: datetime) -> str:
    """Time left at the rate so far (empty when nothing is left or nothing has ended)."""
    left = counts["queued"] + counts["running"]
    done = counts["total"] - left
    if not left or not done or started is None:
        return ""
    elapsed = (now - started).total_seconds()
    return _duration(left * elapsed / done) if elapsed > 0 else ""


def batches(who: Viewer, state: str | None, page: int) -> dict[str, Any]:
    if state is not None and state not in rows.BATCH_FILTERS:
        raise InvalidQuery("state", f"state {state!r} is not one of "
                           f"{', '.join(rows.BATCH_FILTERS)}")
    now = utcnow()
    with session_scope() as session:
        total = rows.batch_page(session, who.scope, state, 0, 0)[1]
        offset, pages = _page(page, total)
        found, _ = rows.batch_page(session, who.scope, state, offset, PAGE_SIZE)
        ids = [b.id for b in found]
        counts = http_rows.counts_of(session, ids)
        active = [b for b in ids if counts[b]["queued"] or counts[b]["running"]]
        starts = rows.first_starts(session, active)
        names = rows.key_names(session, sorted({b.owner for b in found if b.owner}))
        items = []
        for b in found:
            c = counts[b.id]
            items.append({
                "id": b.id, "name": b.name or "", "state": queries.batch_state(
                    c, b.cancelled_at is not None), "counts": c, "progress": _progress(c),
                "eta": _eta(c, starts.get(b.id), now), "model": b.model,
                "priority": b.priority, "owner": names.get(b.owner or "", "") if b.owner
                else "", "created": _iso(b.created_at)})
    return {"rows": items, "state": state, "page": page, "pages": pages, "total": total,
            "filters": rows.BATCH_FILTERS}


def _seen_batch(session: Any, who: Viewer, batch_id: str) -> Batch:
    """The batch if this viewer may see it; another key's is as missing as a wrong id."""
    batch = queries.get_batch(session, batch_id)
    if batch is None or not who.sees(batch):
        raise NotFound(f"no batch {batch_id!r}")
    return batch


def batch(who: Viewer, batch_id: str) -> dict[str, Any]:
    now = utcnow()
    with session_scope() as session:
        b = _seen_batch(session, who, batch_id)
        counts = queries.batch_counts(session, batch_id)
        state = queries.batch_state(counts, b.cancelled_at is not None)
        first, last = rows.batch_span(session, batch_id)
        start = first or b.created_at
        end = last if state in ("completed", "cancelled") and last else now
        if end <= start:
            end = start + timedelta(seconds=1)
        step = (end - start) / (PROGRESS_POINTS - 1)
        edges = [start + step * i for i in range(PROGRESS_POINTS - 1)] + [end]
        finished = rows.finished_over_time(session, batch_id, edges)
        hist = aggregates.histograms(session, batch_id=batch_id)
        failed, failed_total = rows.failed_requests(session, batch_id, FAILED_SHOWN)
        usage = queries.batch_usage(session, batch_id)
        owner = rows.key_names(session, [b.owner]).get(b.owner, b.owner) if b.owner else ""
        short = (lambda t: t.strftime("%H:%M:%S")) if (end - start) < timedelta(days=1) else (
            lambda t: t.strftime("%m-%d %H:%M"))
        detail = {
            "id": b.id, "name": b.name or "", "state": state, "counts": counts,
            "progress": _progress(counts),
            "eta": _eta(counts, first, now), "model": b.model, "device": b.device,
            "priority": b.priority, "owner": owner, "created": _iso(b.created_at),
            "started": _iso(first), "finished": _iso(last) if state in (
                "completed", "cancelled") else None,
            "metadata": b.meta or {}, "source": b.source_file or b.input_file_id or "",
            "output_file": b.output_file_id or "", "error_file": b.error_file_id or "",
            "usage": usage,
            "progress_chart": ui_charts.line_chart([float(n) for n in finished],
                                                   [short(t) for t in edges], "requests"),
            "charts": {title: ui_charts.histogram(hist[name][0], hist[name][1],
                                                  aggregates.BUCKETS)
                       for title, name in (("queue wait", "request_queue_time_seconds"),
                                           ("time to first token",
                                            "time_to_first_token_seconds"),
                                           ("total time", "e2e_request_latency_seconds"))},
            "failed": [{"custom_id": c, "line": line, "error": e or ""}
                       for c, line, e in failed],
            "failed_total": failed_total,
            "can_cancel": state in ("queued", "running"),
            "can_retry": bool(counts["failed"] or counts["cancelled"]) and state not in (
                "queued", "running"),
        }
    return detail


def cancel(who: Viewer, batch_id: str) -> int:
    """Cancels what has not finished (as `llmq cancel`)."""
    with session_scope() as session:
        _seen_batch(session, who, batch_id)
        return queries.cancel_batch(session, batch_id)


def retry(who: Viewer, batch_id: str) -> int:
    """Runs failed and cancelled requests again (as `llmq retry --include-cancelled`). A
    batch of the Files API is finalized again when it ends: new output and error files."""
    from llmq.api.service import retry as retry_batch

    with session_scope() as session:
        b = _seen_batch(session, who, batch_id)
        if b.input_file_id is not None:
            http_rows.reopen(session, batch_id)
    return retry_batch(batch_id, include_cancelled=True)


# --- pipelines and models -------------------------------------------------------------------

def pipelines(who: Viewer, page: int) -> dict[str, Any]:
    if not who.admin:
        return {"rows": [], "page": 1, "pages": 1, "total": 0, "hidden": True}
    with session_scope() as session:
        total = rows.run_page(session, 0, 0)[1]
        offset, pages = _page(page, total)
        runs, _ = rows.run_page(session, offset, PAGE_SIZE)
        items = [pipeline_store.run_summary(session, r) for r in runs]
    return {"rows": items, "page": page, "pages": pages, "total": total, "hidden": False}


def pipeline(who: Viewer, run_id: str) -> dict[str, Any]:
    if not who.admin:
        raise NotFound(f"no pipeline run {run_id!r}")
    with session_scope() as session:
        try:
            run = pipeline_store.get_run(session, run_id)
        except pipeline_store.RunNotFound:
            raise NotFound(f"no pipeline run {run_id!r}") from None
        info = pipeline_store.run_summary(session, run)
        info["documents_list"] = pipeline_store.run_documents(session, run_id)
    return info


def models() -> list[dict[str, Any]]:
    """Registered models and variants, as `llmq model list` shows them."""
    from llmq.api.variants import list_models

    out = []
    for r in list_models():
        recipe = dict(r["recipe"] or {})
        about = recipe.pop("model", None) or {}
        out.append({"name": r["name"], "base": r["base"] or "",
                    "family": about.get("family") or "",
                    "params": f"{about['params'] / 1e6:.0f}M" if about.get("params") else "",
                    "context": about.get("context") or "", "template": about.get(
                        "template") or "",
                    "recipe": ", ".join(f"{k}={v}" for k, v in recipe.items()),
                    "size": f"{(r['size_bytes'] or 0) / 1e6:.1f} MB",
                    "kl": "" if r["fidelity"]["kl"] is None else f"{r['fidelity']['kl']:.4f}",
                    "top1": "" if r["fidelity"]["top1"] is None else
                    f"{r['fidelity']['top1']:.1%}",
                    "tokens_per_s": "" if r["tokens_per_s"] is None else
                    f"{r['tokens_per_s']:.0f}", "created": r["created_at"] or ""})
    return out

