"""What goes into the engine and what comes out of it. Kept apart from the engine's loop so
that callers (feeders, the embedded runner, benches) can read an outcome's cause without
matching error strings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from llmq.contract import FinishReason, SamplingParams

ENGINE_CLOSED = "engine closed"  # the error of requests still in flight at close
STEP_FAILED = "engine step failed"  # the error of requests in flight when a step failed


class ErrorCause(StrEnum):
    """Why a request ended without its text; callers decide what to do by this, not by the
    error's wording."""

    REQUEST = "request"  # the request itself cannot run (too long, bad seed, bad grammar)
    STEP = "step"  # a step failed with it in flight: not its fault, worth another try
    CLOSED = "closed"  # the engine stopped with it in flight: another process should run it


@dataclass
class GenerationRequest:
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    rank: int = 1  # contract.PRIORITY_RANKS: higher ranks take free slots first


@dataclass
class Timing:
    submitted_at: float  # epoch seconds
    started_at: float | None = None  # admitted into a slot (first prefill step)
    first_token_at: float | None = None
    finished_at: float | None = None
    batch_size: float = 0.0  # mean number of sequences in the steps this request ran in


@dataclass
class GenerationResult:
    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timing: Timing
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)
    cause: ErrorCause | None = None  # set with FinishReason.ERROR and engine-closed cancels
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def ok(self) -> bool:
        return self.finish_reason in (FinishReason.STOP, FinishReason.LENGTH,
                                      FinishReason.REPETITION)
