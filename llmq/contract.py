"""The request contract, shared by every layer and free of torch: what a request may ask for
(sampling parameters with their bounds and defaults, response formats), what kinds of request
exist, and what a result looks like.

The input parser validates lines against ``SamplingOverrides``; what is stored with a request
is a complete ``SamplingParams`` as JSON; the engine samples with that same ``SamplingParams``.
Adding a parameter is an edit here plus the code that uses it."""

from __future__ import annotations

import enum
import functools
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from llmq.settings import Settings

# Defaults of a request that sets nothing; LLMQ_MAX_TOKENS and LLMQ_TEMPERATURE override them
# (``defaults_from``).
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.0
MAX_TEMPERATURE = 5.0
# OpenAI documents seeds as 64-bit signed integers; torch's generators take at most 64 bits.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
MAX_STOP_STRINGS = 16
# OpenAI's bounds for its two penalties; repetition_penalty is a divisor, so it must be > 0.
MAX_OPENAI_PENALTY = 2.0
MAX_REPETITION_PENALTY = 10.0
MAX_NGRAM_SIZE = 64
# a batch's priority as the engine ranks it: a waiting sequence of a higher rank is admitted
# into the next free slot before every waiting one of a lower rank
# the engine's ranks of the priority classes: a waiting sequence of a higher rank is admitted
# first and preempts a running one of a lower rank (engine.scheduler); "interactive" is the
# class of synchronous /v1/chat/completions and /v1/completions calls
PRIORITY_RANKS = {"low": 0, "normal": 1, "high": 2, "interactive": 3}
# sanity bounds of what no model's context holds (each worker checks its own context, and
# submit checks max_tokens against LLMQ_SLOT_LENGTH: llmq.api.inputs.InputLimits)
MAX_MAX_TOKENS = 1 << 20
MAX_TOP_K = 1 << 20


class RequestKind(enum.StrEnum):
    CHAT = "chat"  # {"messages": [...]}
    COMPLETION = "completion"  # {"prompt": "..."}
    INVALID = "invalid"  # a rejected input line, stored failed with its reason


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end of sequence or a stop string
    LENGTH = "length"  # max_tokens reached
    REPETITION = "repetition"  # stopped early: the output had started to repeat itself
    CANCELLED = "cancelled"
    ERROR = "error"


class TextFormat(BaseModel):
    """Free text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text"] = "text"

    def grammar(self) -> str | None:
        return None


@functools.cache
def _probe_tokenizer() -> Any:
    """An llguidance tokenizer of the 256 bytes and an end token: enough to take a grammar's
    first step without a model's vocabulary, so that one that no text satisfies (a schema
    whose ``$ref`` only refers to itself, incompatible types) is refused at submit rather
    than by the worker."""
    import llguidance
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    return llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=len(vocab))


@functools.lru_cache(maxsize=256)
def _grammar_error(grammar: str) -> str:
    """Why ``grammar`` cannot be compiled, or cannot be satisfied ("" when it can be used);
    cached, since a file's lines usually share one schema."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar)
    if error:
        return error
    matcher = LLMatcher(_probe_tokenizer(), grammar, log_level=0)
    matcher.compute_bitmask()
    if not matcher.is_error():
        return ""
    first = matcher.get_error().splitlines()[0]  # the rest is llguidance's state dump
    return "no text satisfies it" if first == "NoExtensionBias" else first


class _Constrained(BaseModel):
    """A format the engine enforces token by token with a grammar (llguidance); one that
    cannot be compiled is refused here, so its line is rejected at submit time."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def grammar(self) -> str:
        raise NotImplementedError

    @model_validator(mode="after")
    def _compiles(self) -> _Constrained:
        try:
            error = _grammar_error(self.grammar())
        except (ValueError, TypeError) as exc:
            error = str(exc)
        if error:
            raise ValueError(f"cannot be compiled: {error.strip()[:500]}")
        return self


class JsonObjectFormat(_Constrained):
    """Any JSON object (OpenAI's JSON mode)."""

    type: Literal["json_object"]

    def grammar(self) -> str:
        from llguidance import LLMatcher

        return LLMatcher.grammar_from_json_schema({"type": "object"})


class JsonSchemaSpec(BaseModel):
    """OpenAI's ``json_schema`` member: a name, the schema, and whether it is strict."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Constrained):
    """JSON that validates against a schema (OpenAI's structured outputs)."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec

    def grammar(self) -> str:
        from llguidance import LLMatcher

        # lenient on keywords the compiler does not know unless the schema asks to be strict
        options = {"whitespace_flexible": False, "coerce_one_of": True,
                   "lenient": not self.json_schema.strict}
        return LLMatcher.grammar_from_json_schema(self.json_schema.json_schema,
                                                  defaults=options)  # type: ignore[arg-type]


class RegexFormat(_Constrained):
    """llmq's own: text that matches a regular expression (the whole output)."""

    type: Literal["regex"]
    regex: str = Field(min_length=1, max_length=10_000)

    def grammar(self) -> str:
        from llguidance import LLMatcher

        return LLMatcher.grammar_from_regex(self.regex)


class ChoiceFormat(_Constrained):
    """llmq's own: exactly one of the given strings."""

    type: Literal["choice"]
    choice: list[str] = Field(min_length=1, max_length=1000)

    def grammar(self) -> str:
        from llguidance import LLMatcher

        return LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in self.choice))


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat | RegexFormat | ChoiceFormat,
    Field(discriminator="type"),
]


def _one_stop_string(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


# numbers are strict: an integer field takes JSON integers only (not true, 5.0 or "5"), a
# float field integers and floats, finite; every one is bounded
MaxTokens = Annotated[int, Field(strict=True, ge=1, le=MAX_MAX_TOKENS)]
Temperature = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0,
                                     le=MAX_TEMPERATURE)]
TopP = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1)]
TopK = Annotated[int, Field(strict=True, ge=0, le=MAX_TOP_K)]
Seed = Annotated[int, Field(strict=True, ge=SEED_MIN, le=SEED_MAX)]
OpenAIPenalty = Annotated[float, Field(strict=True, allow_inf_nan=False,
                                       ge=-MAX_OPENAI_PENALTY, le=MAX_OPENAI_PENALTY)]
RepetitionPenalty = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0,
                                           le=MAX_REPETITION_PENALTY)]
NgramSize = Annotated[int, Field(strict=True, ge=0, le=MAX_NGRAM_SIZE)]


class SamplingOverrides(BaseModel):
    """The sampling fields an input line may set; unset ones (None) take the defaults."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None  # 0 = no limit
    seed: Seed | None = None
    stop: list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    ignore_eos: bool | None = None
    frequency_penalty: OpenAIPenalty | None = None
    presence_penalty: OpenAIPenalty | None = None
    repetition_penalty: RepetitionPenalty | None = None
    no_repeat_ngram_size: NgramSize | None = None
    stop_loops: bool | None = None
    response_format: ResponseFormat | None = None

    _stop = field_validator("stop", mode="before")(_one_stop_string)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        """``"regex": "..."`` and ``"choice": [...]`` beside the other fields, as vLLM's
        guided_regex and guided_choice, are response formats of their own."""
        if not isinstance(data, dict) or not ({"regex", "choice"} & data.keys()):
            return data
        given = [k for k in ("regex", "choice", "response_format") if data.get(k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of {', '.join(given)}, not several")
        data = dict(data)
        for key in ("regex", "choice"):
            value = data.pop(key, None)
            if value is not None:
                data["response_format"] = {"type": key, key: value}
        return data


class SamplingParams(BaseModel):
    """Everything that decides how one request is generated, complete: what is stored with a
    request and what the engine samples with."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS
    temperature: Temperature = DEFAULT_TEMPERATURE  # 0 = greedy
    top_p: TopP = 1.0
    top_k: TopK = 0  # 0 = no limit
    seed: Seed | None = None
    stop: tuple[str, ...] = Field((), max_length=MAX_STOP_STRINGS)
    ignore_eos: bool = False
    # OpenAI's: subtracted from a token's logit once per time (frequency) or once if at all
    # (presence) it occurs in the output so far
    frequency_penalty: OpenAIPenalty = 0.0
    presence_penalty: OpenAIPenalty = 0.0
    # CTRL's / Hugging Face's: logits of tokens in the prompt or output divided by it when
    # positive, multiplied when negative (1 = off)
    repetition_penalty: RepetitionPenalty = 1.0
    # Hugging Face's: no n-gram of this size occurs twice in prompt + output (0 = off)
    no_repeat_ngram_size: NgramSize = 0
    # end a generation that has started to loop with finish_reason "repetition" (never when
    # ignore_eos asks for exactly max_tokens)
    stop_loops: bool = True
    response_format: ResponseFormat = Field(default_factory=TextFormat)

    _stop = field_validator("stop", mode="before")(_one_stop_string)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty
                    or self.repetition_penalty != 1.0 or self.no_repeat_ngram_size)

    @property
    def detects_loops(self) -> bool:
        """Loops are cut in free text only: cutting would break a structure, which the
        grammar and max_tokens bound anyway."""
        return self.stop_loops and not self.ignore_eos and self.response_format.type == "text"

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> SamplingParams:
        """The parameters stored with a request; raises ValueError naming the bad field."""
        try:
            return cls.model_validate(stored)
        except ValidationError as exc:
            raise ValueError(explain(exc)) from None

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def defaults_from(settings: Settings, **given: Any) -> dict[str, Any]:
    """A command's sampling defaults: what it was given, else the settings, else the
    contract's own defaults. The one place where settings turn into request defaults."""
    chosen = {"max_tokens": settings.max_tokens, "temperature": settings.temperature}
    chosen.update({k: v for k, v in given.items() if v is not None})
    return {k: v for k, v in chosen.items() if v is not None}


def explain(exc: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line that names each bad field."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "line"
        parts.append(f"{prefix}{loc}: {err['msg']}")
    return "; ".join(parts)


# --- the result shape (`llmq results`, `llmq run --output`) -------------------------------

class Usage(TypedDict):
    prompt_tokens: int | None
    completion_tokens: int | None


class ResultLine(TypedDict):
    custom_id: str
    status: str  # the request's state
    text: str | None
    finish_reason: str | None  # a FinishReason once succeeded
    parsed: Any  # the JSON value, for a completed request with a JSON response format
    usage: Usage
    error: str | None
    timing: dict[str, Any]  # queue/prefill/decode/total ms, batch size, device, worker, model
