"""The one settings object: environment variables prefixed ``LLMQ_``, read once. Imports
nothing of ours, so every layer may import it."""

from __future__ import annotations

import os
import re
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# How pipeline summaries are decoded, chosen by measurement (bench/pipeline.py,
# bench/BENCHMARKS.md); checked against the request contract when a run starts.
PIPELINE_SAMPLING: dict[str, Any] = {"repetition_penalty": 1.1}
PIPELINE_RETRY_SAMPLING: dict[str, Any] = {"temperature": 0.7, "top_p": 0.9, "seed": 1234,
                                           "repetition_penalty": 1.1}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore")

    # where things live
    database_url: str = "sqlite:///llmq.db"
    broker_url: str = "redis://127.0.0.1:6379/0"
    model: str = Field("smollm2-135m", description="model variant used when a request names none")
    model_dir: str = Field("models", description="where `llmq model optimize` writes artifacts "
                           "(workers read them from the path registered, so share it)")
    cache_dir: str = Field(
        default_factory=lambda: str(Path(os.environ.get("XDG_CACHE_HOME") or
                                         Path.home() / ".cache") / "llmq"),
        description="where GGUF checkpoints are kept unpacked (fp32) so that workers start "
                    "in a fraction of the time, and llmq's kernels built for this CPU; "
                    "empty: never")

    # request defaults (a line of the input file overrides them; unset: the contract's own,
    # 256 tokens and greedy; llmq.contract.defaults_from reads them)
    max_tokens: int | None = Field(None, ge=1, description="default max new tokens")
    temperature: float | None = Field(None, ge=0.0, description="default temperature, 0 = greedy")

    # what one input file may hold (a line over a limit is rejected with its reason)
    max_file_bytes: int = Field(4 << 30, ge=1, description="size of one input file")
    max_line_bytes: int = Field(16 << 20, ge=1, description="size of one input line")
    max_prompt_chars: int = Field(
        200_000, ge=1, description="characters of one prompt (all messages together)")

    # engine
    device: Literal["cpu", "gpu", "auto"] = "auto"
    slots: int = Field(32, ge=1, description="sequences decoded together by one engine")
    slot_length: int = Field(2048, ge=64, description="context per slot: prompt + output")
    step_tokens: int = Field(4096, ge=16, description="tokens per forward pass")
    interactive_step_tokens: int = Field(
        512, ge=16, description="tokens per forward pass while an interactive request runs "
        "or waits (shorter steps: its tokens come sooner; the batch's prefill slower)")
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores)")
    compile: bool = Field(True, description="fuse int8 layers' quantize passes with inductor "
                          "and build llmq's decode attention kernel for this CPU")
    int8_kernel: Literal["auto", "onednn", "fbgemm"] = Field(
        "auto", description="the int8 GEMM of int8 variants on CPU (auto: the faster one here, "
        "timed at start)")
    chat_date: date | None = Field(
        None, description="the date chat templates render through strftime_now, as "
        "YYYY-MM-DD (Llama 3's 'Today Date'; default: the day each prompt is rendered), so "
        "that a batch's prompts do not change at midnight")
    verify_artifacts: bool = Field(
        True, description="check a variant's files against its manifest's hashes at load")

    # delivery
    chunk_size: int = Field(16, ge=1, description="request ids per queue message")
    concurrency: int | None = Field(None, ge=1, description="feeder threads per worker")
    max_attempts: int = Field(3, ge=1, description="claims before a request is failed")
    task_time_limit: int = Field(3600, ge=1, description="hard limit per message, seconds")
    visibility_timeout: int = Field(
        7200, ge=1, description="seconds before an unacknowledged message is redelivered")
    cancel_poll_seconds: float = Field(1.0, gt=0)
    db_outage_seconds: float = Field(
        600.0, ge=0, description="how long a worker waits out a database outage, holding its "
        "claims and finished results, before it gives up on a message")

    # liveness: heartbeats (llmq.worker.heartbeat), the reaper and the reconciler (reaper.py)
    heartbeat_seconds: float = Field(10.0, gt=0, description="how often a worker heartbeats")
    worker_timeout: float = Field(
        60.0, gt=0, description="silence after which a worker's requests go back to the queue")
    reaper_seconds: float = Field(30.0, gt=0, description="how often workers sweep")
    resend_after: float = Field(
        120.0, gt=0, description="seconds a queued request may wait, its queue empty, before "
        "it is sent again")
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="after SIGTERM, how long running requests may finish before "
        "they are handed back to the queue")
    retention_days: int = Field(
        0, ge=0, description="finished batches older than this many days are deleted, with "
        "their requests, results and output files, by the workers' sweep (0: kept for ever)")
    engine_stall_seconds: float = Field(
        600.0, gt=0, description="an engine with work but no step for this long exits its "
        "worker, to be replaced")

    # the HTTP API (llmq serve): file bytes live in a folder, not in the database, so that an
    # upload streams to disk and a 200 MB file never passes through one SQL value; a shared
    # folder (a volume) when the API runs on several machines
    files_dir: str = Field("files", description="where the Files API keeps file contents")
    api_open: bool = Field(
        False, description="no keys: every caller is one anonymous owner (loopback only)")
    api_max_file_bytes: int = Field(200 << 20, ge=1, description="largest upload (413)")
    api_max_queued: int = Field(
        1_000_000, ge=1, description="queued and running requests in all, beyond which "
        "new work over HTTP gets 429")
    api_max_queued_per_key: int = Field(
        200_000, ge=1, description="queued and running requests of one key (429 beyond)")
    api_retry_after: int = Field(30, ge=1, description="Retry-After of a 429, seconds")
    # the front door (api/http/front_door.py): what a request is let in on
    api_body_timeout: float = Field(
        30.0, gt=0, description="a request body that sends nothing for this long gets 408")
    api_body_deadline: float = Field(
        900.0, gt=0, description="a request body not whole after this long gets 408 (a slow "
        "trickle as much as a stall)")
    api_max_uploading_bytes_per_key: int = Field(
        400 << 20, ge=1, description="bytes of one key's uploads in progress (429 beyond)")
    api_max_uploading_bytes: int = Field(
        2 << 30, ge=1, description="bytes of all uploads in progress (503 beyond): bounds "
        "the temporary files they spool to")
    api_metrics_need_key: bool = Field(
        False, description="/metrics answers only calls with a key (it is open by default, "
        "as Prometheus scrapes are)")
    api_max_connections: int = Field(
        512, ge=1, description="open connections of one `llmq serve` process (503 beyond)")
    api_request_timeout: float = Field(
        600.0, gt=0, description="how long /v1/chat/completions waits for its result (504)")
    ui_session_hours: float = Field(
        12.0, gt=0, description="how long a sign-in to the status page (/ui) lasts")

    # webhooks (llmq/worker/webhooks): batch and pipeline-run ends pushed to receivers
    webhooks_allow_private: bool = Field(
        False, description="let webhook URLs resolve to loopback, link-local or private "
        "addresses (refused by default: a key could otherwise probe the internal network)")
    webhook_secret: str | None = Field(
        None, description="the whsec_ secret that signs deliveries to `llmq submit --notify` "
        "URLs (`llmq webhooks secret` makes one)")
    webhook_retry_schedule: str = Field(
        "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h", pattern=r"^\d+[smhd](,\d+[smhd])*$",
        description="when each attempt of a delivery "
        "is due, counted from its event (Standard Webhooks' schedule, over a day)")
    webhook_timeout: float = Field(
        15.0, gt=0, description="seconds one delivery attempt may take, body included")
    webhook_senders: int = Field(
        4, ge=1, description="deliveries one worker sends at once (a slow receiver holds one)")

    # nightly pipeline
    pipeline_cron: str = Field("0 2 * * *", description="when beat runs the pipelines")
    pipelines: list[dict[str, str]] = Field(
        default_factory=list,
        description='pipelines beat runs: [{"name": ..., "source": ..., "model": ...}]')
    pipeline_chunk_tokens: int | None = Field(
        None, ge=32, description="tokens per chunk (default: what the slot leaves free)")
    pipeline_overlap_tokens: int = Field(64, ge=0)
    pipeline_summary_tokens: int = Field(256, ge=8, description="max tokens of each summary")
    pipeline_poll_seconds: float = Field(2.0, gt=0)
    pipeline_sampling: dict[str, Any] = Field(
        default_factory=lambda: dict(PIPELINE_SAMPLING),
        description="request fields of every summary (penalties, temperature, seed...)")
    pipeline_retry_sampling: dict[str, Any] = Field(
        default_factory=lambda: dict(PIPELINE_RETRY_SAMPLING),
        description="request fields of the one retry of a summary below the quality floor")
    pipeline_summary_schema: dict[str, Any] | None = Field(
        None, description="a JSON schema: each document's summary is written as JSON that "
        "validates against it (e.g. examples/summary-schema.json: title, summary, keywords)")
    # the text first and the instruction last: a 135M model follows an instruction that
    # comes right before its answer (measured in bench/pipeline.py)
    pipeline_map_prompt: str = "{text}\n\nSummarize the text above in three sentences."
    pipeline_combine_prompt: str = (
        "{text}\n\nThe paragraphs above summarize consecutive parts of one document. "
        "Summarize the whole document in three sentences.")
    pipeline_final_prompt: str = "{text}\n\nSummarize the text above in three sentences."

    @model_validator(mode="after")
    def _redelivery_after_time_limit(self) -> Settings:
        # a message still running legitimately must never be handed to a second worker
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"LLMQ_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must exceed "
                f"LLMQ_TASK_TIME_LIMIT ({self.task_time_limit}s)")
        if self.worker_timeout <= 2 * self.heartbeat_seconds:
            # one late heartbeat must not get a live worker reaped
            raise ValueError(
                f"LLMQ_WORKER_TIMEOUT ({self.worker_timeout}s) must exceed twice "
                f"LLMQ_HEARTBEAT_SECONDS ({self.heartbeat_seconds}s)")
        return self


def redact_url(url: str) -> str:
    """``url`` with its password hidden, for messages and logs."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
