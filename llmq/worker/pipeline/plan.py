"""How documents are cut and summaries grouped: plain arithmetic on token counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmq.contract import SamplingOverrides
from llmq.settings import Settings

TEMPLATE_OVERHEAD = 96  # tokens of prompt template and chat markup around a chunk


@dataclass(frozen=True)
class PlanParams:
    chunk_tokens: int
    overlap_tokens: int
    summary_tokens: int
    map_prompt: str
    combine_prompt: str
    final_prompt: str
    # how every summary is decoded, and how one below the quality floor is decoded again
    # (runs stored before these existed decode greedily and are not retried)
    sampling: dict[str, Any] = field(default_factory=dict)
    retry_sampling: dict[str, Any] | None = None
    # the response format of a document's final summary (LLMQ_PIPELINE_SUMMARY_SCHEMA)
    final_format: dict[str, Any] | None = None

    @classmethod
    def from_settings(cls, s: Settings, chunk_tokens: int | None = None,
                      overlap_tokens: int | None = None) -> PlanParams:
        budget = s.slot_length - s.pipeline_summary_tokens - TEMPLATE_OVERHEAD
        chunk = chunk_tokens or s.pipeline_chunk_tokens or budget
        if chunk > budget:
            raise ValueError(f"chunks of {chunk} tokens leave no room for the prompt and a "
                             f"{s.pipeline_summary_tokens}-token summary in the "
                             f"{s.slot_length}-token context (at most {budget})")
        if chunk < 2 * (s.pipeline_summary_tokens + 2):
            # two summaries must fit one combining prompt, or reducing could not shrink
            raise ValueError(f"chunks of {chunk} tokens cannot hold two "
                             f"{s.pipeline_summary_tokens}-token summaries; use at least "
                             f"{2 * (s.pipeline_summary_tokens + 2)}")
        overlap = s.pipeline_overlap_tokens if overlap_tokens is None else overlap_tokens
        if overlap >= chunk // 2:
            raise ValueError(f"overlap {overlap} must be under half the chunk ({chunk})")
        return cls(chunk, overlap, s.pipeline_summary_tokens, s.pipeline_map_prompt,
                   s.pipeline_combine_prompt, s.pipeline_final_prompt,
                   _overrides(s.pipeline_sampling), _overrides(s.pipeline_retry_sampling),
                   _summary_format(s.pipeline_summary_schema))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _overrides(given: dict[str, Any]) -> dict[str, Any]:
    """Only the fields given, checked against the request contract."""
    return SamplingOverrides.model_validate(given).model_dump(mode="json", exclude_none=True,
                                                              by_alias=True)


def _summary_format(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    fmt = {"type": "json_schema",
           "json_schema": {"name": "summary", "schema": schema, "strict": True}}
    try:
        return _overrides({"response_format": fmt})["response_format"]
    except ValueError as exc:  # pydantic's error names the field
        raise ValueError(f"LLMQ_PIPELINE_SUMMARY_SCHEMA: {exc}") from None


def final_instruction(final_format: dict[str, Any] | None) -> str:
    """What a final summary's prompt adds when the summary is structured: the grammar forces
    the shape, and naming the fields tells the model what goes in each."""
    if not final_format:
        return ""
    fields = list(final_format["json_schema"]["schema"].get("properties", {}))
    return f" Answer with a JSON object with the fields {', '.join(fields)}." if fields else ""


def split_tokens(tokens: list[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges of at most ``size`` that overlap by ``overlap`` and cover everything."""
    if len(tokens) <= size:
        return [(0, len(tokens))]
    step = size - overlap
    spans = []
    start = 0
    while True:
        end = min(start + size, len(tokens))
        spans.append((start, end))
        if end == len(tokens):
            return spans
        start += step


def group_by_budget(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of indices whose lengths fit ``budget``, at least two per group
    (so each level shrinks), unless a single item is left."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and used + n > budget and len(current) >= 2:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        if len(current) == 1 and groups:
            groups[-1].append(current[0])
        else:
            groups.append(current)
    return groups
