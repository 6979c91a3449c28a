"""What operators and load balancers ask: /healthz, /readyz, /metrics (Prometheus text,
named as vLLM names the same things), and /v1/models and /v1/usage."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from llmq.api import keys as api_keys
from llmq.api import metrics
from llmq.api.files import unix
from llmq.api.http.auth import caller
from llmq.api.variants import list_models

router = APIRouter(tags=["operations"])

PREFIX = "llmq:"


def _families(snap: metrics.Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    yield GaugeMetricFamily(PREFIX + "num_requests_running", "Requests running in engines.",
                            value=snap.requests.get("running", 0))
    yield GaugeMetricFamily(PREFIX + "num_requests_waiting", "Requests queued.",
                            value=snap.requests.get("queued", 0))
    states = GaugeMetricFamily(PREFIX + "requests", "Requests by state.", labels=["state"])
    for state in ("queued", "running", "succeeded", "failed", "cancelled"):
        states.add_metric([state], snap.requests.get(state, 0))
    yield states
    yield CounterMetricFamily(PREFIX + "prompt_tokens", "Prompt tokens of finished requests.",
                              value=snap.prompt_tokens)
    yield CounterMetricFamily(PREFIX + "generation_tokens", "Tokens generated.",
                              value=snap.generation_tokens)
    by_key = [CounterMetricFamily(PREFIX + f"{what}_tokens_by_key", f"{text} per API key "
                                  "(key=\"\": batches made without one).", labels=["key"])
              for what, text in (("prompt", "Prompt tokens of finished requests"),
                                 ("generation", "Tokens generated"))]
    for key, counts in sorted(snap.tokens_by_key.items(), key=lambda kv: kv[0] or ""):
        for family, value in zip(by_key, counts, strict=True):
            family.add_metric([key or ""], value)
    yield from by_key
    finished = CounterMetricFamily(PREFIX + "request_success", "Requests finished, by reason.",
                                   labels=["finished_reason"])
    for reason, n in sorted(snap.finish_reasons.items()):
        finished.add_metric([reason], n)
    yield finished
    for name, (cumulative, count, total) in snap.histograms.items():
        buckets = [(repr(b), n) for b, n in zip(snap.buckets, cumulative, strict=True)]
        yield HistogramMetricFamily(PREFIX + name, name.replace("_", " ") + ".",
                                    buckets=[*buckets, ("+Inf", count)], sum_value=total)
    by_class = HistogramMetricFamily(
        PREFIX + "time_to_first_token_by_priority_seconds",
        "time to first token per priority class.", labels=["priority"])
    for cls, (cumulative, count, total) in sorted(snap.first_token_by_priority.items()):
        by_class.add_metric([cls], [*[(repr(b), n) for b, n in zip(snap.buckets, cumulative,
                                                                  strict=True)],
                                    ("+Inf", count)], total)
    yield by_class
    if snap.queues is not None:
        depth = GaugeMetricFamily(PREFIX + "queue_depth", "Messages waiting, by broker queue.",
                                  labels=["queue"])
        for queue, n in sorted(snap.queues.items()):
            depth.add_metric([queue], n)
        yield depth
    yield from _worker_families(snap.workers)


def _worker_families(workers: list[dict[str, Any]]) -> Iterator[Metric]:
    labels = ["worker", "model", "device"]
    occupancy = GaugeMetricFamily(PREFIX + "engine_occupancy",
                                  "Share of a worker's engine slots running.", labels=labels)
    queries = CounterMetricFamily(PREFIX + "prefix_cache_queries",
                                  "Prompt tokens admitted by a worker's engine.", labels=labels)
    hits = CounterMetricFamily(PREFIX + "prefix_cache_hits",
                               "Prompt tokens a worker's engine took from its prefix cache.",
                               labels=labels)
    preempted = CounterMetricFamily(PREFIX + "num_preemptions",
                                    "Sequences a worker's engine preempted for a higher "
                                    "priority.", labels=labels)
    for w in workers:
        # host and process only: the name's last part is the worker's private life token
        key = [w["name"].rsplit(":", 1)[0], w["model"], w["device"]]
        if w.get("slots"):
            occupancy.add_metric(key, w.get("running", 0) / w["slots"])
        queries.add_metric(key, w.get("prompt_tokens", 0))
        hits.add_metric(key, w.get("prefix_hit_tokens", 0))
        preempted.add_metric(key, w.get("preemptions", 0))
    yield from (occupancy, queries, hits, preempted)


class _Snapshot:
    """A collector over one snapshot, registered for one scrape."""

    def __init__(self, snap: metrics.Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        return _families(self.snap)


@router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics.snapshot()))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz() -> JSONResponse:
    checks = await run_in_threadpool(metrics.readiness)
    ready = all(v == "ok" for v in checks.values())
    # how many workers can serve, for the operator: the API takes batches without any
    workers = await run_in_threadpool(metrics.ready_workers)
    return JSONResponse({"status": "ok" if ready else "unavailable", **checks,
                         "workers": workers}, status_code=200 if ready else 503)


@router.get("/v1/usage")
async def usage(days: int = Query(30, ge=1, le=3660),
                owner: str | None = Depends(caller)) -> dict[str, Any]:
    """The calling key's tokens per UTC day (llmq's own read; OpenAI's usage API is an
    organization admin's): ``{"object": "list", "data": [...]}``, newest day first."""
    rows = await run_in_threadpool(api_keys.usage, days, owner)
    return {"object": "list", "data": [{k: v for k, v in r.items() if k != "key_id"}
                                       for r in rows]}


@router.get("/v1/models")
def models(owner: str | None = Depends(caller)) -> dict[str, Any]:
    data = []
    for m in list_models():
        created = m.get("created_at")
        stamp = unix(datetime.fromisoformat(created.rstrip("Z"))) if created else 0
        data.append({"id": m["name"], "object": "model", "created": stamp, "owned_by": "llmq"})
    return {"object": "list", "data": data}
