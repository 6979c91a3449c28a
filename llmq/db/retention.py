"""Deleting what is no longer wanted: finished batches with their requests and results (and
the chunks of pipeline runs, whose documents keep their summaries), in small transactions
that never hold the tables for long."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.orm import Session

from .models import Batch, PipelineRun, Request, RequestState, RunState, StoredFile

UNFINISHED = (RequestState.QUEUED, RequestState.RUNNING)


def _in_live_run() -> ColumnElement[bool]:
    """The batch is a step of a pipeline run that is still running, whose later levels read
    the results (and chunks) of its earlier ones."""
    return exists().where(PipelineRun.id == Batch.meta["pipeline_run"].as_string(),
                          PipelineRun.state == RunState.RUNNING)


def unfinished(session: Session, batch_id: str) -> bool:
    """Whether the batch has requests queued or running, or belongs to a running pipeline."""
    return bool(session.execute(select(
        exists().where(Request.batch_id == batch_id, Request.state.in_(UNFINISHED))
        | exists().where(Batch.id == batch_id, _in_live_run()))).scalar())


def finished_before(session: Session, cutoff: datetime, limit: int) -> list[str]:
    """Up to ``limit`` batches created before ``cutoff`` that have nothing queued or running
    and whose last request ended before it too, oldest first."""
    last_end = (select(func.max(Request.finished_at)).where(Request.batch_id == Batch.id)
                .correlate(Batch).scalar_subquery())
    running = exists().where(Request.batch_id == Batch.id, Request.state.in_(UNFINISHED))
    return list(session.execute(
        select(Batch.id).where(Batch.created_at < cutoff, ~running, ~_in_live_run(),
                               func.coalesce(last_end, Batch.created_at) < cutoff)
        .order_by(Batch.created_at).limit(limit)).scalars())


def count_requests(session: Session, batch_ids: list[str]) -> int:
    return int(session.execute(select(func.count()).select_from(Request)
                               .where(Request.batch_id.in_(batch_ids))).scalar_one())


def delete_requests(session: Session, batch_id: str, limit: int) -> int:
    """Deletes up to ``limit`` of the batch's requests (their results and pipeline chunks go
    with them: ON DELETE CASCADE); returns how many."""
    ids = list(session.execute(select(Request.id).where(Request.batch_id == batch_id)
                               .limit(limit)).scalars())
    if ids:
        session.execute(delete(Request).where(Request.id.in_(ids)))
    return len(ids)


def delete_batch(session: Session, batch_id: str) -> list[str]:
    """Deletes the batch row (its requests already gone) and the rows of the files it wrote
    (output and errors); returns those files' paths under the files folder."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return []
    file_ids = [f for f in (batch.output_file_id, batch.error_file_id) if f]
    paths = list(session.execute(select(StoredFile.path)
                                 .where(StoredFile.id.in_(file_ids))).scalars())
    if file_ids:
        session.execute(delete(StoredFile).where(StoredFile.id.in_(file_ids)))
    session.execute(delete(Batch).where(Batch.id == batch_id))
    return paths
