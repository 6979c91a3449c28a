"""Recovery by distillation: after pruning (and the closed-form re-fit of reconstruct.py), the
student's decoder weights are trained to match the base's next-token distributions, the mean
KL(base || student) over every position of the base's own text.

Training runs on weights in Hugging Face names (what ``prune`` returns and smoothing takes),
through a plain causal forward over padded batches: the serving model packs its weights for
oneDNN and runs under inference mode, and needs neither here. The teacher's logits are
computed step by step rather than stored (the vocabulary is 49,152 wide: 200 KB a position).

On SmolLM2 a CPU's budget of steps recovers a little of what a cut cost, more the deeper the
cut, and most of it stays lost (bench/prune_recovery.py has the figures). A GPU does the
same steps in seconds: the weights go to CUDA when the machine has it.

A run is resumable: with ``checkpoint`` set, the trained tensors and Adam's moments are
written there (safetensors, no pickle) every ``save_every`` steps and picked up again by a
run with the same ``fingerprint``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..model.rope import apply_rope, rope_inv_freq

Weights = dict[str, torch.Tensor]
OnStep = Callable[[int, int, float], None]  # (steps done, steps in all, this step's KL)


@dataclass(frozen=True)
class DistillSettings:
    steps: int
    lr: float = 3e-5  # 1e-4 overshoots on SmolLM2: held-out KL rose above the re-fit's
    batch: int = 4  # sequences per step, of similar lengths
    seed: int = 0
    save_every: int = 10  # steps between checkpoints


@dataclass(frozen=True)
class DistillReport:
    steps: int
    positions: int  # positions trained on, summed over steps
    resumed_at: int  # the step a checkpoint let this run start from (0: from scratch)
    first_kl: float
    last_kl: float


def forward_logits(config: ModelConfig, w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` logits of right-padded ``tokens [B, T]`` (pads only ever follow a
    sequence's tokens, so causal attention never lets a real position see one)."""
    c = config
    batch, length = tokens.shape
    d, heads, kv, dim = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    inv = rope_inv_freq(c).to(tokens.device)
    freqs = torch.outer(torch.arange(length, device=tokens.device, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, : inv.shape[0]] *= -1  # rotate_half's sign, as LlamaModel.rope_tables
    cos, sin = emb.cos().repeat(batch, 1).unsqueeze(1), sin.repeat(batch, 1).unsqueeze(1)

    def heads_first(x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(batch, length, n, dim).transpose(1, 2)

    x = F.embedding(tokens.reshape(-1), w["model.embed_tokens.weight"])
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        h = F.rms_norm(x, (d,), w[p + "input_layernorm.weight"], c.rms_norm_eps)
        q = apply_rope(F.linear(h, w[p + "self_attn.q_proj.weight"]).view(-1, heads, dim),
                       cos, sin)
        k = apply_rope(F.linear(h, w[p + "self_attn.k_proj.weight"]).view(-1, kv, dim),
                       cos, sin)
        v = F.linear(h, w[p + "self_attn.v_proj.weight"])
        attn = F.scaled_dot_product_attention(heads_first(q, heads), heads_first(k, kv),
                                              heads_first(v, kv), is_causal=True,
                                              enable_gqa=True)
        x = x + F.linear(attn.transpose(1, 2).reshape(-1, heads * dim),
                         w[p + "self_attn.o_proj.weight"])
        h = F.rms_norm(x, (d,), w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)
        act = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(
            h, w[p + "mlp.up_proj.weight"])
        x = x + F.linear(act, w[p + "mlp.down_proj.weight"])
    x = F.rms_norm(x, (d,), w["model.norm.weight"], c.rms_norm_eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return F.linear(x, head).view(batch, length, -1)


def trained_names(weights: Weights) -> list[str]:
    """The decoder's linears and norms; embeddings and the (tied) head stay as they are."""
    return sorted(k for k in weights if k.startswith("model.layers.")
                  and k.endswith(("_proj.weight", "layernorm.weight")))


def batches(sequences: Sequence[list[int]], size: int) -> list[tuple[torch.Tensor,
                                                                     torch.Tensor]]:
    """(tokens ``[B, T]`` right-padded, mask ``[B, T]`` of real positions) of sequences
    sorted by length, so that a batch pads little."""
    ordered = sorted(sequences, key=len)
    out = []
    for start in range(0, len(ordered), size):
        group = ordered[start:start + size]
        length = max(map(len, group))
        tokens = torch.zeros(len(group), length, dtype=torch.long)
        mask = torch.zeros(len(group), length, dtype=torch.bool)
        for row, seq in enumerate(group):
            tokens[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = True
        out.append((tokens, mask))
    return out


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
                  ) -> torch.Tensor:
    """Mean KL(teacher || student) over the real positions; logits ``[B, T, V]``."""
    kl = F.kl_div(student.float().log_softmax(-1), teacher.float().log_softmax(-1),
                  log_target=True, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum()


def distill(config: ModelConfig, weights: Weights, teacher_config: ModelConfig,
            teacher: Weights, sequences: Sequence[list[int]], settings: DistillSettings,
            on_step: OnStep | None = None, checkpoint: Path | None = None,
            fingerprint: str = "") -> tuple[Weights, DistillReport]:
    """The student's weights after ``settings.steps`` steps of Adam on the KL to the
    teacher; ``weights`` itself is left as it was."""
    device = teacher["model.embed_tokens.weight"].device
    w = {k: v.detach().to(device=device, dtype=torch.float32) for k, v in weights.items()}
    names = trained_names(w)
    for name in names:
        w[name] = w[name].clone().requires_grad_(True)
    optim = torch.optim.Adam([w[n] for n in names], lr=settings.lr)
    start = _resume(checkpoint, fingerprint, w, names, optim) if checkpoint else 0
    work = batches(sequences, settings.batch)
    order = _order(len(work), settings.steps, settings.seed)
    kls: list[float] = []
    positions = 0
    for step in range(start, settings.steps):
        tokens, mask = (t.to(device) for t in work[order[step]])
        with torch.no_grad():
            target = forward_logits(teacher_config, teacher, tokens)
        loss = kl_to_teacher(forward_logits(config, w, tokens), target, mask)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        kls.append(float(loss.detach()))
        positions += int(mask.sum())
        if on_step is not None:
            on_step(step + 1, settings.steps, kls[-1])
        if checkpoint and ((step + 1) % settings.save_every == 0 or step + 1 == settings.steps):
            _save(checkpoint, fingerprint, step + 1, w, names, optim)
    trained = {k: v.detach().to(weights[k].device) for k, v in w.items()}
    return trained, DistillReport(settings.steps, positions, start,
                                  kls[0] if kls else 0.0, kls[-1] if kls else 0.0)


def _order(num_batches: int, steps: int, seed: int) -> list[int]:
    """Which batch each step trains on: shuffled epochs, the same for the same seed (so a
    resumed run continues the order it started)."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps:
        order.extend(torch.randperm(num_batches, generator=g).tolist())
    return order[:steps]


def _save(path: Path, fingerprint: str, step: int, w: Weights, names: list[str],
          optim: torch.optim.Optimizer) -> None:
    tensors = {}
    for name in names:
        state = optim.state[w[name]]
        tensors[f"w.{name}"] = w[name].detach().cpu().contiguous()
        if state:
            tensors[f"m.{name}"] = state["exp_avg"].cpu().contiguous()
            tensors[f"v.{name}"] = state["exp_avg_sq"].cpu().contiguous()
            tensors[f"t.{name}"] = state["step"].detach().cpu().reshape(1).float()
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"fingerprint": fingerprint,
                                               "step": json.dumps(step)})
    partial.replace(path)  # never half a checkpoint under the real name


def _resume(path: Path, fingerprint: str, w: Weights, names: list[str],
            optim: torch.optim.Optimizer) -> int:
    """Loads a checkpoint of the same run into ``w`` and ``optim``; the step it was at."""
    step = checkpoint_step(path, fingerprint)
    if not step:
        return 0
    tensors = load_file(str(path))
    with torch.no_grad():
        for name in names:
            w[name].copy_(tensors[f"w.{name}"])
            if f"m.{name}" in tensors:
                optim.state[w[name]] = {
                    "step": tensors[f"t.{name}"].reshape(()).clone(),
                    "exp_avg": tensors[f"m.{name}"].to(w[name].device),
                    "exp_avg_sq": tensors[f"v.{name}"].to(w[name].device)}
    return step


def checkpoint_step(path: Path, fingerprint: str) -> int:
    """The step a checkpoint at ``path`` resumes the run ``fingerprint`` at (0: none)."""
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return int(json.loads(meta["step"])) if meta.get("fingerprint") == fingerprint else 0
