"""Tables. Times are naive UTC datetimes (the same on SQLite and PostgreSQL). A batch's counts
and state are derived from its requests, never stored twice."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments an INTEGER PRIMARY KEY
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class RequestState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunState(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"


class DocumentState(enum.StrEnum):
    """A document's progress through one pipeline run."""

    PENDING = "pending"  # nothing planned yet
    RUNNING = "running"  # requests of its current level are queued or running
    SUCCEEDED = "succeeded"  # summary stored
    FAILED = "failed"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime()}


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    device: Mapped[str] = mapped_column(String(10), default="any")
    priority: Mapped[str] = mapped_column(String(20), default="normal")
    source_file: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]
    # a batch created over HTTP (llmq.api.openai_batches): whose key, from which file, and
    # the OpenAI Batch object's own fields; all empty for batches of the CLI
    owner: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    # "<owner>:<key>": one batch per key (NULLs would never collide in a unique index)
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    input_file_id: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(40))
    completion_window: Mapped[str | None] = mapped_column(String(10))
    validated_at: Mapped[datetime | None]  # every line stored (in_progress from then on)
    failed_at: Mapped[datetime | None]  # no line could be accepted
    expires_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    finalized_at: Mapped[datetime | None]  # output and error files written
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    # OpenAI's output_expires_after: the output and error files expire this long after
    # they are written (None: kept)
    output_expires_seconds: Mapped[int | None]
    # when its end was announced to webhooks (None: not yet; `llmq retry` clears it, so a
    # batch that runs again is announced again); and the URL `llmq submit --notify` named
    announced_at: Mapped[datetime | None] = mapped_column(index=True)
    notify_url: Mapped[str | None] = mapped_column(Text)

    requests: Mapped[list[Request]] = relationship(back_populates="batch", lazy="raise")


Index("ix_batches_owner_created", Batch.owner, Batch.created_at)
Index("ix_batches_created", Batch.created_at)


class ApiKey(Base):
    """A key of the HTTP API. Only its SHA-256 is kept: a key is 256 random bits, so a fast
    hash is as safe as a slow one, and a lookup is one indexed equality."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # sees every key's work and the workers on the status page (`llmq keys create --admin`)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class UiSession(Base):
    """A browser signed in to the status page. The cookie holds a random token; only its
    SHA-256 is kept (as for keys). ``key_id`` None: open mode's anonymous viewer. ``csrf``
    is the token every form that changes state must carry."""

    __tablename__ = "ui_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class StoredFile(Base):
    """A file of the Files API: its bytes lie in LLMQ_FILES_DIR under ``path``."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(300))
    purpose: Mapped[str] = mapped_column(String(30))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer, default=0)  # non-blank lines
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # when the workers' sweep deletes it (OpenAI's expires_after); None: kept
    expires_at: Mapped[datetime | None] = mapped_column(index=True)


class Request(Base):
    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("batch_id", "custom_id", name="uq_requests_batch_custom_id"),
        Index("ix_requests_batch_state", "batch_id", "state"),
        Index("ix_requests_state_worker", "state", "worker"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    custom_id: Mapped[str] = mapped_column(String(200))
    line: Mapped[int | None] = mapped_column(Integer)  # where it came from in the input file
    model: Mapped[str] = mapped_column(String(200))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"prompt": ...} | {"messages": [...]}
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    kind: Mapped[str] = mapped_column(String(20), default="chat")  # chat | completion
    state: Mapped[str] = mapped_column(String(12), default=RequestState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    first_token_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    batch: Mapped[Batch] = relationship(back_populates="requests", lazy="raise")
    result: Mapped[Result | None] = relationship(back_populates="request", lazy="raise")


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), unique=True)
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # of prompt_tokens, those the prefix cache served (OpenAI usage's cached_tokens)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_host: Mapped[str] = mapped_column(String(200))
    worker_pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(String(200))
    engine_batch_size: Mapped[float] = mapped_column(Float)
    queue_ms: Mapped[float] = mapped_column(Float)
    prefill_ms: Mapped[float] = mapped_column(Float)
    decode_ms: Mapped[float] = mapped_column(Float)
    total_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    request: Mapped[Request] = relationship(back_populates="result", lazy="raise")


class Worker(Base):
    """A process that claims requests (a worker, or ``llmq run``), with its heartbeat. Its
    name is what ``requests.worker`` holds while it runs them."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))
    device: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_step_at: Mapped[datetime | None]  # when its engine last finished a step
    # its engine's occupancy and prefix-cache counters at the last heartbeat (for /metrics)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    stopped_at: Mapped[datetime | None]  # stopped cleanly, or reaped


class ModelVariant(Base):
    __tablename__ = "model_variants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    base: Mapped[str | None] = mapped_column(String(200))
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_path: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    kl: Mapped[float | None] = mapped_column(Float)
    top1: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    # greedy agreement, parameters, FLOPs, how speed was measured: whatever optimize measured
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- the summarization pipeline -------------------------------------------------------------

class Source(Base):
    """A place documents come from: a folder, a JSONL or a CSV file."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    location: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("source_id", "key", name="uq_documents_source_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(1000))  # relative path or the input's id
    content_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineRun(Base):
    __tablename__ = "pipeline_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(12), default=RunState.RUNNING)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # the driver chain that moves the run (the newest one sent wins) and its last look
    driver: Mapped[str | None] = mapped_column(String(32))
    driven_at: Mapped[datetime | None]
    announced_at: Mapped[datetime | None] = mapped_column(index=True)  # as Batch's


class RunDocument(Base):
    """A document's progress through one run: the level of map-reduce it has reached."""

    __tablename__ = "run_documents"
    __table_args__ = (UniqueConstraint("run_id", "document_id", name="uq_run_documents"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    content_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12), default=DocumentState.PENDING)
    level: Mapped[int] = mapped_column(Integer, default=-1)  # -1: nothing planned yet
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]


class Chunk(Base):
    """One generation request of the pipeline: a chunk summary (level 0, role map), a combined
    summary (role combine), or the document's final summary (role final)."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("run_document_id", "level", "index",
                                       name="uq_chunks_position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_document_id: Mapped[int] = mapped_column(
        ForeignKey("run_documents.id", ondelete="CASCADE"))
    level: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(10))
    input_tokens: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))


class Summary(Base):
    __tablename__ = "summaries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    content_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    requests: Mapped[int] = mapped_column(Integer)  # generation requests it took
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # llmq.worker.pipeline.quality's measures; flagged: below the floor even after a retry
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- webhooks ---------------------------------------------------------------------------------

class WebhookEndpoint(Base):
    """A receiver of events, owned by a key (None: the anonymous owner, whose events are those
    of batches made without a key and of pipeline runs). The secret signs; during a rotation
    the previous one signs too, until ``previous_secret_until``."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]  # its receiver answered 410 Gone
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class WebhookEvent(Base):
    """One event, its body kept as signed: every attempt of every delivery sends these bytes,
    and its id is the ``webhook-id`` receivers deduplicate by."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(64))  # the batch's or the run's id
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class WebhookDelivery(Base):
    """An event on its way to one receiver: an endpoint, or a batch's ``notify_url``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)  # a notify URL (an endpoint's is read when sent)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    # a sender's lease: past it, a sender that died is presumed gone and the delivery is due
    claimed_until: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One try of a delivery, as it went: every attempt is kept (`llmq webhooks deliveries`)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
