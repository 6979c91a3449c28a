"""Moving a run forward, one idempotent step at a time. Each call looks at every unfinished
document of the run and, when the requests of its current level have all ended, plans the
next: chunk summaries for a long document (level 0), combined summaries while they do not fit
one prompt, then the final summary. New requests go into an ordinary batch, so they share
engine steps with everything else; the caller runs or enqueues the ids returned."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmq.db import queries
from llmq.db.models import (
    Chunk,
    Document,
    PipelineRun,
    RequestState,
    Result,
    RunDocument,
    Summary,
    utcnow,
)
from llmq.worker.engine.tokenizer import TextTokenizer

from .plan import PlanParams, group_by_budget, split_tokens
from .store import chunk_outputs, get_run


@dataclass
class Advance:
    new_ids: list[int] = field(default_factory=list)
    unsent_ids: list[int] = field(default_factory=list)  # planned before but never enqueued
    finished: bool = False


@dataclass
class _Planned:
    rd: RunDocument
    level: int
    role: str
    prompt: str
    tokens: int


def advance(session: Session, run_id: str, tokenizer: TextTokenizer) -> Advance:
    run = get_run(session, run_id)
    out = Advance()
    if run.state != "running":
        out.finished = True
        return out
    params = PlanParams(**run.params["plan"])
    planned: list[_Planned] = []
    pending_request_ids: list[int] = []
    unfinished = session.execute(select(RunDocument).where(
        RunDocument.run_id == run.id, RunDocument.state.in_(["pending", "running"]))
        .order_by(RunDocument.id)).scalars().all()
    for rd in unfinished:
        if rd.level < 0:
            text = session.execute(select(Document.text)
                                   .where(Document.id == rd.document_id)).scalar_one()
            planned += _plan_document(rd, text, tokenizer, params)
            continue
        rows = chunk_outputs(session, rd.id, rd.level)
        waiting = [req.id for _, req, _ in rows
                   if req.state in (RequestState.QUEUED, RequestState.RUNNING)]
        if waiting:
            pending_request_ids += waiting
            continue
        failed = [req for _, req, _ in rows if req.state != RequestState.SUCCEEDED]
        if failed:
            rd.state, rd.finished_at = "failed", utcnow()
            rd.error = f"request {failed[0].custom_id}: {failed[0].last_error or failed[0].state}"
            continue
        if rows[0][0].role == "final":
            _store_summary(session, run, rd, rows[0][2])
            continue
        planned += _plan_reduce(rd, [res.text for _, _, res in rows if res], tokenizer, params)
    if planned:
        out.new_ids = _create_requests(session, run, planned)
    if pending_request_ids:
        out.unsent_ids = queries.unsent_ids(session, pending_request_ids)
    if not planned and not pending_request_ids:
        run.state, run.finished_at = "completed", utcnow()
        out.finished = True
    return out


def _plan_document(rd: RunDocument, text: str, tok: TextTokenizer,
                   p: PlanParams) -> list[_Planned]:
    ids = tok.encode(text)
    spans = split_tokens(ids, p.chunk_tokens, p.overlap_tokens)
    if len(spans) == 1:
        return [_Planned(rd, 0, "final", p.final_prompt.format(text=text), len(ids))]
    return [_Planned(rd, 0, "map", p.map_prompt.format(text=tok.decode(ids[a:b])), b - a)
            for a, b in spans]


def _plan_reduce(rd: RunDocument, outputs: list[str], tok: TextTokenizer,
                 p: PlanParams) -> list[_Planned]:
    lengths = [len(tok.encode(o)) + 2 for o in outputs]
    level = rd.level + 1
    if sum(lengths) <= p.chunk_tokens:
        joined = "\n\n".join(outputs)
        return [_Planned(rd, level, "final", p.final_prompt.format(text=joined), sum(lengths))]
    return [_Planned(rd, level, "combine",
                     p.combine_prompt.format(text="\n\n".join(outputs[i] for i in group)),
                     sum(lengths[i] for i in group))
            for group in group_by_budget(lengths, p.chunk_tokens)]


def _create_requests(session: Session, run: PipelineRun, planned: list[_Planned]) -> list[int]:
    p = PlanParams(**run.params["plan"])
    counters: dict[int, int] = {}
    new = []
    for item in planned:
        index = counters.get(item.rd.id, 0)
        counters[item.rd.id] = index + 1
        new.append(queries.NewRequest(
            custom_id=f"{run.id}/d{item.rd.document_id}/L{item.level}/{index}", kind="chat",
            input={"messages": [{"role": "user", "content": item.prompt}]},
            params={"max_tokens": p.summary_tokens, "temperature": 0.0}))
    levels = sorted({i.level for i in planned})
    batch_id, ids = queries.create_batch(
        session, requests=new, model=run.model, name=f"pipeline {run.id} level "
        + ",".join(map(str, levels)), meta={"pipeline_run": run.id})
    counters.clear()
    for item, request_id in zip(planned, ids, strict=True):
        index = counters.get(item.rd.id, 0)
        counters[item.rd.id] = index + 1
        session.add(Chunk(run_document_id=item.rd.id, level=item.level, index=index,
                          role=item.role, input_tokens=item.tokens, request_id=request_id))
        item.rd.level, item.rd.state = item.level, "running"
    session.flush()
    return ids


def _store_summary(session: Session, run: PipelineRun, rd: RunDocument,
                   final: Result | None) -> None:
    count, prompt, completion = session.execute(
        select(func.count(Chunk.id), func.coalesce(func.sum(Result.prompt_tokens), 0),
               func.coalesce(func.sum(Result.completion_tokens), 0))
        .select_from(Chunk).outerjoin(Result, Result.request_id == Chunk.request_id)
        .where(Chunk.run_document_id == rd.id)).one()
    session.add(Summary(document_id=rd.document_id, run_id=run.id,
                        content_hash=rd.content_hash, model=run.model,
                        text=final.text.strip() if final else "", requests=int(count),
                        prompt_tokens=int(prompt), completion_tokens=int(completion)))
    rd.state, rd.finished_at = "succeeded", utcnow()
