"""Evaluating a variant against its base on the held-out prompts shipped in llmq/data."""

from __future__ import annotations

import json
from importlib.resources import files

from llmq.worker.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from llmq.worker.engine.fidelity import Fidelity, compare
from llmq.worker.models import resolve_model


def heldout_messages() -> list[list[dict[str, str]]]:
    text = files("llmq.data").joinpath("heldout_prompts.jsonl").read_text()
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def evaluate(name: str, base: str, new_tokens: int = 64) -> Fidelity:
    chats = heldout_messages()
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    config = EngineConfig(num_slots=len(chats), slot_length=512)
    outputs = {}
    engines = {}
    try:
        for which in (base, name):
            engines[which] = Engine.load(resolve_model(which), config)
            outputs[which] = [r.token_ids for r in engines[which].generate(
                GenerationRequest(messages=m, params=params) for m in chats)]
        prompts = [engines[base].tokenizer.encode_chat(m) for m in chats]
        return compare(engines[base].model, engines[name].model, prompts, outputs[base],
                       outputs[name])
    finally:
        for engine in engines.values():
            engine.close()
