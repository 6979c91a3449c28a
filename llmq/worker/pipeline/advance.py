"""Moving a run forward, one idempotent step at a time. Each call looks at every unfinished
document of the run and, when the requests of its current level have all ended, plans the
next: chunk summaries for a long document (level 0), combined summaries while they do not fit
one prompt, then the final summary. New requests go into an ordinary batch, so they share
engine steps with everything else; the caller runs or enqueues the ids returned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from llmq.contract import RequestKind, SamplingParams
from llmq.db import pipeline as store
from llmq.db import queries
from llmq.db.models import (
    Chunk,
    PipelineRun,
    Request,
    RequestState,
    Result,
    RunDocument,
    RunState,
)
from llmq.engine.model.tokenizer import TextTokenizer

from .plan import PlanParams, final_instruction, group_by_budget, split_tokens
from .quality import Quality, measure


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
    sampling: dict[str, Any] | None = None  # instead of the run's own


def advance(session: Session, run_id: str, tokenizer: TextTokenizer) -> Advance:
    run = store.get_run(session, run_id)
    out = Advance()
    if run.state != RunState.RUNNING:
        out.finished = True
        return out
    params = PlanParams(**run.params["plan"])
    planned: list[_Planned] = []
    pending_request_ids: list[int] = []
    for rd in store.unfinished_documents(session, run.id):
        if rd.level < 0:
            text = store.document_text(session, rd.document_id)
            planned += _plan_document(rd, text, tokenizer, params)
            continue
        rows = store.chunk_outputs(session, rd.id, rd.level)
        waiting = [req.id for _, req, _ in rows
                   if req.state in (RequestState.QUEUED, RequestState.RUNNING)]
        if waiting:
            pending_request_ids += waiting
            continue
        failed = [req for _, req, _ in rows if req.state != RequestState.SUCCEEDED]
        if failed and rows[0][0].role == "retry":  # the first summary is still there
            planned += _finish_document(session, run, rd, params, rows[0])
            continue
        if failed:
            store.fail_document(rd, f"request {failed[0].custom_id}: "
                                    f"{failed[0].last_error or failed[0].state}")
            continue
        if rows[0][0].role in ("final", "retry"):
            planned += _finish_document(session, run, rd, params, rows[0])
            continue
        planned += _plan_reduce(rd, [res.text for _, _, res in rows if res], tokenizer, params)
    if planned:
        out.new_ids = _create_requests(session, run, planned)
    if pending_request_ids:
        out.unsent_ids = queries.unsent_ids(session, pending_request_ids)
    if not planned and not pending_request_ids:
        store.complete_run(run)
        out.finished = True
    return out


def _finish_document(session: Session, run: PipelineRun, rd: RunDocument, p: PlanParams,
                     row: tuple[Chunk, Request, Result | None]) -> list[_Planned]:
    """Stores the document's summary when it passes the quality floor; otherwise plans one
    retry of the same prompt with the run's retry sampling, and after the retry stores the
    better of the two, flagged when neither passes."""
    chunk, request, result = row
    document = store.document_text(session, rd.document_id)
    quality = measure(result.text if result else "", document)
    if chunk.role == "final" and not quality.passes and p.retry_sampling:
        prompt = request.input["messages"][-1]["content"]
        return [_Planned(rd, rd.level + 1, "retry", prompt, chunk.input_tokens,
                         p.retry_sampling)]
    if chunk.role == "retry" and not quality.passes:
        _, _, first = store.chunk_outputs(session, rd.id, rd.level - 1)[0]
        first_quality = measure(first.text if first else "", document)
        if _better(first_quality, quality):
            result, quality = first, first_quality
    store.store_summary(session, run, rd, result, quality.as_dict(), flagged=not quality.passes)
    return []


def _better(a: Quality, b: Quality) -> bool:
    return (a.passes, a.repeated_sentences == 0, a.distinct_trigrams) > \
        (b.passes, b.repeated_sentences == 0, b.distinct_trigrams)


def _plan_document(rd: RunDocument, text: str, tok: TextTokenizer,
                   p: PlanParams) -> list[_Planned]:
    ids = tok.encode(text)
    spans = split_tokens(ids, p.chunk_tokens, p.overlap_tokens)
    if len(spans) == 1:
        return [_Planned(rd, 0, "final", _final(p, text), len(ids))]
    return [_Planned(rd, 0, "map", p.map_prompt.format(text=tok.decode(ids[a:b])), b - a)
            for a, b in spans]


def _final(p: PlanParams, text: str) -> str:
    return p.final_prompt.format(text=text) + final_instruction(p.final_format)


def _plan_reduce(rd: RunDocument, outputs: list[str], tok: TextTokenizer,
                 p: PlanParams) -> list[_Planned]:
    lengths = [len(tok.encode(o)) + 2 for o in outputs]
    level = rd.level + 1
    if sum(lengths) <= p.chunk_tokens:
        joined = "\n\n".join(outputs)
        return [_Planned(rd, level, "final", _final(p, joined), sum(lengths))]
    return [_Planned(rd, level, "combine",
                     p.combine_prompt.format(text="\n\n".join(outputs[i] for i in group)),
                     sum(lengths[i] for i in group))
            for group in group_by_budget(lengths, p.chunk_tokens)]


def _create_requests(session: Session, run: PipelineRun, planned: list[_Planned]) -> list[int]:
    """One ordinary batch for the planned requests, and a chunk row for each."""
    p = PlanParams(**run.params["plan"])
    def sampling(item: _Planned) -> dict[str, Any]:
        given = p.sampling if item.sampling is None else item.sampling
        if p.final_format and item.role in ("final", "retry"):
            given = {**given, "response_format": p.final_format}
        return SamplingParams(**{"max_tokens": p.summary_tokens, **given}).stored()

    counters: dict[int, int] = {}
    new = []
    for item in planned:
        index = counters.get(item.rd.id, 0)
        counters[item.rd.id] = index + 1
        new.append(queries.NewRequest(
            custom_id=f"{run.id}/d{item.rd.document_id}/L{item.level}/{index}",
            kind=RequestKind.CHAT,
            input={"messages": [{"role": "user", "content": item.prompt}]},
            params=sampling(item)))
    levels = sorted({i.level for i in planned})
    _, ids = queries.create_batch(
        session, requests=new, model=run.model, name=f"pipeline {run.id} level "
        + ",".join(map(str, levels)), meta={"pipeline_run": run.id})
    store.add_chunks(session, [store.NewChunk(item.rd, item.level, item.role, item.tokens, rid)
                               for item, rid in zip(planned, ids, strict=True)])
    return ids
