"""The pipeline's queries: sources and documents (with content hashes), runs and the
per-document progress of each run, the chunks of each map-reduce level, and the summaries.
A document needs summarizing when no summary exists for its current content and model, so a
rerun does only what is new, changed or failed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from .models import (
    Chunk,
    Document,
    DocumentState,
    PipelineRun,
    Request,
    Result,
    RunDocument,
    RunState,
    Source,
    Summary,
    utcnow,
)


class SourceDocument(Protocol):
    """A document as a source reader yields it."""

    @property
    def key(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def content_hash(self) -> str: ...


class RunNotFound(LookupError):
    pass


def ingest(session: Session, name: str, location: str,
           docs: Sequence[SourceDocument]) -> Source:
    """Records the source's documents, updating those whose content changed."""
    source = session.execute(select(Source).where(Source.name == name)).scalar_one_or_none()
    if source is None:
        source = Source(name=name, location=location)
        session.add(source)
        session.flush()
    else:
        source.location = location
    known = {d.key: d for d in session.execute(
        select(Document).where(Document.source_id == source.id)).scalars()}
    now = utcnow()
    for doc in docs:
        row = known.get(doc.key)
        if row is None:
            session.add(Document(source_id=source.id, key=doc.key, text=doc.text,
                                 content_hash=doc.content_hash, updated_at=now))
        elif row.content_hash != doc.content_hash:
            row.text, row.content_hash, row.updated_at = doc.text, doc.content_hash, now
    session.flush()
    return source


def create_run(session: Session, source: Source, keys: list[str], model: str,
               params: dict[str, Any]) -> PipelineRun:
    """A run over the source's documents (those in ``keys``) that have no summary of their
    current content by ``model``; completed at once when there are none."""
    run = PipelineRun(id="run_" + uuid.uuid4().hex[:20], source_id=source.id, model=model,
                      params=params, state=RunState.RUNNING)
    session.add(run)
    session.flush()
    done = select(Summary.id).where(Summary.document_id == Document.id,
                                    Summary.content_hash == Document.content_hash,
                                    Summary.model == model)
    todo = session.execute(select(Document).where(
        Document.source_id == source.id, Document.key.in_(keys), ~done.exists())
        .order_by(Document.key)).scalars().all()
    for doc in todo:
        session.add(RunDocument(run_id=run.id, document_id=doc.id,
                                content_hash=doc.content_hash))
    if not todo:
        complete_run(run)
    session.flush()
    return run


def get_run(session: Session, run_id: str) -> PipelineRun:
    run = session.get(PipelineRun, run_id)
    if run is None:
        raise RunNotFound(f"no pipeline run {run_id!r}")
    return run


def run_summary(session: Session, run: PipelineRun) -> dict[str, Any]:
    counts = dict(session.execute(select(RunDocument.state, func.count())
                                  .where(RunDocument.run_id == run.id)
                                  .group_by(RunDocument.state)).all())
    source = session.get(Source, run.source_id)
    requests = session.scalar(select(func.count(Chunk.id)).join(RunDocument).where(
        RunDocument.run_id == run.id)) or 0
    return {
        "id": run.id, "source": source.name if source else None, "model": run.model,
        "state": run.state, "documents": sum(counts.values()),
        "counts": {str(k): counts.get(k, 0) for k in DocumentState},
        "requests": requests, "quality": _run_quality(session, run.id),
        "created_at": run.created_at.isoformat() + "Z",
        "finished_at": run.finished_at.isoformat() + "Z" if run.finished_at else None,
    }


def list_runs(session: Session, limit: int = 20) -> list[PipelineRun]:
    return list(session.execute(select(PipelineRun).order_by(PipelineRun.created_at.desc())
                                .limit(limit)).scalars())


def run_documents(session: Session, run_id: str) -> list[dict[str, Any]]:
    """Per-document state of a run, with its map-reduce level and request counts."""
    rows = session.execute(
        select(RunDocument, Document.key).join(Document, Document.id == RunDocument.document_id)
        .where(RunDocument.run_id == run_id).order_by(Document.key)).all()
    summaries = {s.document_id: s for s in session.execute(
        select(Summary).where(Summary.run_id == run_id)).scalars()}
    chunk_counts = dict(session.execute(
        select(Chunk.run_document_id, func.count()).join(RunDocument)
        .where(RunDocument.run_id == run_id).group_by(Chunk.run_document_id)).all())
    return [{"document": key, "state": rd.state, "level": rd.level,
             "requests": chunk_counts.get(rd.id, 0), "error": rd.error,
             "quality": _quality_of(summaries.get(rd.document_id))} for rd, key in rows]


def _quality_of(summary: Summary | None) -> dict[str, Any] | None:
    if summary is None or summary.quality is None:
        return None
    return {**summary.quality, "flagged": summary.flagged}


def _run_quality(session: Session, run_id: str) -> dict[str, Any]:
    """The run's summaries at a glance: how many are flagged, and the weakest figures."""
    rows = [s for s in session.execute(select(Summary).where(Summary.run_id == run_id))
            .scalars() if s.quality]
    if not rows:
        return {"summaries": 0}
    q = [s.quality for s in rows if s.quality]
    return {"summaries": len(rows), "flagged": sum(s.flagged for s in rows),
            "min_distinct_trigrams": min(x["distinct_trigrams"] for x in q),
            "repeated_sentences": sum(x["repeated_sentences"] for x in q),
            "min_salient_hits": min(x["salient_hits"] for x in q),
            "mean_compression": round(sum(x["compression"] for x in q) / len(q), 4)}


def run_summaries(session: Session, run_id: str) -> list[dict[str, Any]]:
    """Each document's summary; a run with a summary schema adds the parsed JSON."""
    structured = bool(get_run(session, run_id).params.get("plan", {}).get("final_format"))
    rows = session.execute(
        select(Summary, Document.key).join(Document, Document.id == Summary.document_id)
        .where(Summary.run_id == run_id).order_by(Document.key)).all()
    return [{"document": key, "summary": s.text, "model": s.model, "requests": s.requests,
             "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
             "content_hash": s.content_hash, "quality": s.quality, "flagged": s.flagged,
             **({"parsed": _parsed(s.text)} if structured else {})}
            for s, key in rows]


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:  # cut short by max_tokens: the text is delivered, flagged
        return None


def chunk_outputs(session: Session, run_document_id: int, level: int) -> list[tuple[Chunk,
                                                                                   Request,
                                                                                   Result | None]]:
    return [tuple(r) for r in session.execute(  # type: ignore[misc]
        select(Chunk, Request, Result).join(Request, Request.id == Chunk.request_id)
        .outerjoin(Result, Result.request_id == Request.id)
        .where(Chunk.run_document_id == run_document_id, Chunk.level == level)
        .order_by(Chunk.index)).all()]


# --- moving a run forward (llmq.worker.pipeline.advance decides, these record) -------------

def unfinished_documents(session: Session, run_id: str) -> list[RunDocument]:
    return list(session.execute(select(RunDocument).where(
        RunDocument.run_id == run_id,
        RunDocument.state.in_([DocumentState.PENDING, DocumentState.RUNNING]))
        .order_by(RunDocument.id)).scalars())


def document_text(session: Session, document_id: int) -> str:
    return session.execute(select(Document.text)
                           .where(Document.id == document_id)).scalar_one()


@dataclass
class NewChunk:
    """A request planned for a document at one level of its map-reduce."""

    run_document: RunDocument
    level: int
    role: str  # map | combine | final
    input_tokens: int
    request_id: int


def add_chunks(session: Session, chunks: Sequence[NewChunk]) -> None:
    """Records the level's requests; each document moves to the level of its new chunks."""
    counters: dict[int, int] = {}
    for c in chunks:
        rd = c.run_document
        index = counters.get(rd.id, 0)
        counters[rd.id] = index + 1
        session.add(Chunk(run_document_id=rd.id, level=c.level, index=index, role=c.role,
                          input_tokens=c.input_tokens, request_id=c.request_id))
        rd.level, rd.state = c.level, DocumentState.RUNNING
    session.flush()


def fail_document(rd: RunDocument, error: str) -> None:
    rd.state, rd.finished_at, rd.error = DocumentState.FAILED, utcnow(), error


def store_summary(session: Session, run: PipelineRun, rd: RunDocument, final: Result | None,
                  quality: dict[str, Any] | None = None, flagged: bool = False) -> None:
    """The document's summary (the final request's text) with what all its requests took,
    and its quality as measured by the pipeline."""
    count, prompt, completion = session.execute(
        select(func.count(Chunk.id), func.coalesce(func.sum(Result.prompt_tokens), 0),
               func.coalesce(func.sum(Result.completion_tokens), 0))
        .select_from(Chunk).outerjoin(Result, Result.request_id == Chunk.request_id)
        .where(Chunk.run_document_id == rd.id)).one()
    session.add(Summary(document_id=rd.document_id, run_id=run.id,
                        content_hash=rd.content_hash, model=run.model,
                        text=final.text.strip() if final else "", requests=int(count),
                        prompt_tokens=int(prompt), completion_tokens=int(completion),
                        quality=quality, flagged=flagged))
    rd.state, rd.finished_at = DocumentState.SUCCEEDED, utcnow()


# --- drivers: the chain of tasks that moves a distributed run -------------------------------

LOCAL_DRIVER = "local-"  # a run driven in one process (`--local`), never re-driven


def new_driver(session: Session, run_id: str, local: bool = False) -> str:
    """A token for a new driver chain of ``run_id``; any older chain stops at its next look."""
    token = (LOCAL_DRIVER + uuid.uuid4().hex)[:32] if local else uuid.uuid4().hex
    session.execute(update(PipelineRun).where(PipelineRun.id == run_id)
                    .values(driver=token, driven_at=utcnow()))
    return token


def drive(session: Session, run_id: str, token: str | None) -> bool:
    """Records a look by the chain ``token``; False when a newer chain has taken the run
    over (a chain sent before drivers existed has no token and always drives)."""
    if token is None:
        return True
    return bool(session.execute(
        update(PipelineRun).where(PipelineRun.id == run_id,
                                  or_(PipelineRun.driver == token,
                                      PipelineRun.driver.is_(None)))
        .values(driven_at=utcnow())).rowcount)


def undriven_runs(session: Session, before: datetime) -> list[str]:
    """Running runs whose driver has not looked since ``before``: its chain ended (a send
    that failed, a lost message)."""
    return list(session.execute(select(PipelineRun.id).where(
        PipelineRun.state == RunState.RUNNING,
        or_(PipelineRun.driver.is_(None), PipelineRun.driver.not_like(f"{LOCAL_DRIVER}%")),
        func.coalesce(PipelineRun.driven_at, PipelineRun.created_at) < before)).scalars())


def complete_run(run: PipelineRun) -> None:
    run.state, run.finished_at = RunState.COMPLETED, utcnow()
