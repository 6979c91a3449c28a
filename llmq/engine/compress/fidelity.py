"""How closely a model variant follows its base: mean KL divergence of next-token
distributions and top-1 agreement, teacher-forced on the base model's own greedy
continuations, and agreement of the variants' greedy continuations themselves."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.decoder import LlamaModel
from ..runner import ModelRunner
from ..scheduler import PrefillWork, Sequence, StepPlan


@dataclass(frozen=True)
class Fidelity:
    kl: float  # mean KL(base || variant) per position, nats
    top1: float  # share of positions where both pick the same next token
    same_outputs: int  # greedy continuations identical to the base's
    mean_shared_prefix: float  # tokens the greedy continuations share from the start
    sequences: int


def sequence_logits(model: LlamaModel, tokens: list[int]) -> torch.Tensor:
    """``[len(tokens), V]`` next-token logits of every position, in one prefill."""
    runner = ModelRunner(model, 1, len(tokens))
    seq = Sequence("fidelity", tokens, 1, slot=0)
    step, _ = runner.build_inputs(StepPlan(prefill=[PrefillWork(seq, 0, tokens, False)]))
    step.logits_rows = torch.arange(len(tokens), device=model.device)
    return model(step, runner.cache)


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def compare(base: LlamaModel, variant: LlamaModel, prompts: list[list[int]],
            base_outputs: list[list[int]], variant_outputs: list[list[int]]) -> Fidelity:
    """``prompts`` as token ids; ``*_outputs`` the greedy continuations of each model.
    KL and top-1 are measured on the continuation positions of prompt + base output."""
    kls, agree, total = [], 0, 0
    for prompt, out in zip(prompts, base_outputs, strict=True):
        tokens = prompt + out
        first = len(prompt) - 1  # the position that predicts the first output token
        ref = sequence_logits(base, tokens)[first:].float()
        var = sequence_logits(variant, tokens)[first:].float()
        kl = F.kl_div(var.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                      reduction="none").sum(-1)  # [positions]
        kls.append(kl)
        agree += int((ref.argmax(-1) == var.argmax(-1)).sum())
        total += ref.shape[0]
    pairs = list(zip(base_outputs, variant_outputs, strict=True))
    return Fidelity(
        kl=float(torch.cat(kls).mean()) if kls else 0.0,
        top1=agree / total if total else 1.0,
        same_outputs=sum(a == b for a, b in pairs),
        mean_shared_prefix=sum(shared_prefix(a, b) for a, b in pairs) / max(1, len(pairs)),
        sequences=len(pairs),
    )
