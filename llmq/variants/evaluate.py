"""Measuring a variant: fidelity against its base on the held-out prompts shipped in
llmq/data (never the calibration set), and generated tokens/s."""

from __future__ import annotations

import json
import time
from importlib.resources import files
from typing import Any

from llmq.contract import SamplingParams
from llmq.engine.compress.fidelity import Fidelity, compare
from llmq.engine.config import EngineConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.host.process import configure_process
from llmq.engine.host.threads import on_compute_thread
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.tokenizer import TextTokenizer
from llmq.settings import get_settings
from llmq.variants import registry

SPEED_REQUESTS = 64
SPEED_NEW_TOKENS = 64


def shipped_messages(filename: str) -> list[list[dict[str, str]]]:
    text = files("llmq.data").joinpath(filename).read_text()
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def heldout_messages() -> list[list[dict[str, str]]]:
    return shipped_messages("heldout_prompts.jsonl")


def greedy_outputs(model: LlamaModel, tokenizer: TextTokenizer,
                   chats: list[list[dict[str, Any]]], new_tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    eng = Engine(model, tokenizer, EngineConfig(slots=len(chats), slot_length=512))
    return [r.token_ids for r in eng.generate_here(
        GenerationRequest(**tokenizer.chat_or_text(m), params=params) for m in chats)]


def evaluate_models(base: LlamaModel, variant: LlamaModel, tokenizer: TextTokenizer,
                    new_tokens: int = 64, base_outputs: list[list[int]] | None = None
                    ) -> Fidelity:
    chats = heldout_messages()
    if base_outputs is None:
        base_outputs = greedy_outputs(base, tokenizer, chats, new_tokens)
    outputs = greedy_outputs(variant, tokenizer, chats, new_tokens)
    prompts = [tokenizer.encode_chat_or_text(m) for m in chats]
    return compare(base, variant, prompts, base_outputs, outputs)


def evaluate(name: str, base: str, new_tokens: int = 64) -> Fidelity:
    settings = get_settings()
    configure_process(settings.threads, settings.compile, settings.cache_dir or None,
                      settings.int8_kernel)

    def run() -> Fidelity:
        engines = {which: Engine.load(registry.resolve(which), EngineConfig(slots=1))
                   for which in (base, name)}
        return evaluate_models(engines[base].model, engines[name].model,
                               engines[base].tokenizer, new_tokens)

    return on_compute_thread(run)


def evaluate_and_record(name: str, base: str | None = None,
                        new_tokens: int = 64) -> dict[str, Any]:
    """``llmq model eval``: measures ``name`` against ``base`` (default: its own base) and
    stores the figures with it."""
    base = base or registry.describe(name)["base"]
    if not base:
        raise ValueError(f"{name} has no base to compare with: pass --base")
    fid = evaluate(name, base, new_tokens)
    registry.record_figures(name, kl=fid.kl, top1=fid.top1)
    return {"name": name, "base": base, "kl": fid.kl, "top1": fid.top1,
            "same_outputs": fid.same_outputs, "mean_shared_prefix": fid.mean_shared_prefix,
            "sequences": fid.sequences, "new_tokens": new_tokens}


def measure_speed(model: LlamaModel, tokenizer: TextTokenizer, slots: int = 64) -> float:
    """Generated tokens/s over 64 held-out requests of 64 tokens each (EOS ignored), prefill
    included, after a warm-up that also triggers any kernel compilation. Runs on the calling
    thread, which should be a compute thread (threads.py)."""
    chats = heldout_messages()
    chats = [chats[i % len(chats)] for i in range(SPEED_REQUESTS)]
    params = SamplingParams(max_tokens=SPEED_NEW_TOKENS, ignore_eos=True)
    eng = Engine(model, tokenizer, EngineConfig(slots=slots, slot_length=512))
    eng.generate_here(GenerationRequest(messages=m, params=SamplingParams(
        max_tokens=4, ignore_eos=True)) for m in chats[:4])
    start = time.perf_counter()
    results = eng.generate_here(GenerationRequest(messages=m, params=params) for m in chats)
    seconds = time.perf_counter() - start
    return sum(r.completion_tokens for r in results) / seconds
