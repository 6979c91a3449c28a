"""A tiny random Llama with SmolLM2's tokenizer, written as the checkpoints llmq reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmq.engine.config import ModelConfig
from llmq.engine.kernels import int8 as int8_kernels
from llmq.engine.kernels import native
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.tokenizer import TextTokenizer, load_tokenizer
from llmq.engine.runner import ModelRunner
from llmq.engine.scheduler import PrefillWork, Sequence, StepPlan
from llmq.variants.registry import builtin_model_path

HAS_COMPILER = native.compiler() is not None  # inductor and the native kernels need one


@contextmanager
def native_kernels() -> Iterator[None]:
    """llmq's native kernels on for the block; the tests' process runs PyTorch's forms
    otherwise (conftest configures it without compilation)."""
    native.configure(True)
    try:
        yield
    finally:
        native.configure(False)


@contextmanager
def forced_int8_kernel(name: str) -> Iterator[None]:
    """One int8 GEMM for the block, whichever this CPU would choose (int8.py)."""
    int8_kernels.pin_int8_kernel(name)
    try:
        yield
    finally:
        int8_kernels.pin_int8_kernel(None)


def tiny_config(tokenizer: TextTokenizer, **overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=96, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1,
        eos_token_ids=(2,),
    )
    fields.update(overrides)
    return ModelConfig(**fields)  # type: ignore[arg-type]


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Hugging Face names and layouts, scaled so that logits are not flat."""
    g = torch.Generator().manual_seed(seed)
    c = config

    def rnd(*shape: int, scale: float = 0.15) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w = {"model.embed_tokens.weight": rnd(c.vocab_size, c.hidden_size, scale=0.5),
         "model.norm.weight": 1 + rnd(c.hidden_size, scale=0.1)}
    q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(q_out, c.hidden_size)
        w[p + "self_attn.k_proj.weight"] = rnd(kv_out, c.hidden_size)
        w[p + "self_attn.v_proj.weight"] = rnd(kv_out, c.hidden_size)
        w[p + "self_attn.o_proj.weight"] = rnd(c.hidden_size, q_out)
        w[p + "mlp.gate_proj.weight"] = rnd(c.intermediate_size, c.hidden_size)
        w[p + "mlp.up_proj.weight"] = rnd(c.intermediate_size, c.hidden_size)
        w[p + "mlp.down_proj.weight"] = rnd(c.hidden_size, c.intermediate_size)
        w[p + "input_layernorm.weight"] = 1 + rnd(c.hidden_size, scale=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + rnd(c.hidden_size, scale=0.1)
    if not c.tie_word_embeddings:
        w["lm_head.weight"] = rnd(c.vocab_size, c.hidden_size, scale=0.5)
    return w


def repeat_ffn_channels(config: ModelConfig, weights: dict[str, torch.Tensor],
                        g: torch.Generator) -> None:
    """Makes the last third of every FFN's channels (96 -> 64 kept) nearly repeat the first
    third, in place: as in trained models (random ones have next to none), kept channels then
    share something with pruned ones for a recovery to find."""
    for i in range(config.num_layers):
        for name in ("gate_proj", "up_proj"):
            w = weights[f"model.layers.{i}.mlp.{name}.weight"]  # [96, D]
            w[64:] = w[:32] + 0.05 * w[:32].std() * torch.randn(w[:32].shape, generator=g)


def chunked_logits(model: LlamaModel, prompt: list[int], chunk: int,
                   slot_length: int = 256) -> torch.Tensor:
    """Logits of every prompt position, prefilled in chunks of ``chunk`` tokens into slot 1
    of 2: every chunk after the first reads the KV cache."""
    runner = ModelRunner(model, 2, slot_length)
    seq = Sequence("x", prompt, 1, slot=1)
    rows = []
    for start in range(0, len(prompt), chunk):
        part = prompt[start:start + chunk]
        plan = StepPlan(prefill=[PrefillWork(seq, start, part, False)])
        step, _ = runner.build_inputs(plan)
        step.logits_rows = torch.arange(len(part))
        rows.append(model(step, runner.cache))
    return torch.cat(rows)


def smollm2_tokenizer() -> TextTokenizer:
    return load_tokenizer(builtin_model_path("smollm2-135m"))


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py reordering of Q/K rows, as it writes them."""
    return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def add_smollm2_tokenizer(wr: Any) -> None:
    """SmolLM2's tokenizer fields (BPE, its chat template) on a ``gguf.GGUFWriter``."""
    from llmq.engine.model.gguf_file import read_gguf

    fields, _ = read_gguf(builtin_model_path("smollm2-135m"))
    wr.add_tokenizer_model(fields["tokenizer.ggml.model"])
    wr.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    wr.add_token_list(fields["tokenizer.ggml.tokens"])
    wr.add_token_types(fields["tokenizer.ggml.token_type"])
    wr.add_token_merges(fields["tokenizer.ggml.merges"])
    wr.add_bos_token_id(fields["tokenizer.ggml.bos_token_id"])
    wr.add_eos_token_id(fields["tokenizer.ggml.eos_token_id"])
    wr.add_chat_template(fields["tokenizer.chat_template"])


def write_gguf(path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]) -> Path:
    """Writes a GGUF file the way llama.cpp's converter does (F32 tensors, permuted Q/K)."""
    import gguf

    wr = gguf.GGUFWriter(str(path), "llama")
    c = config
    wr.add_context_length(c.max_position_embeddings)
    wr.add_embedding_length(c.hidden_size)
    wr.add_block_count(c.num_layers)
    wr.add_feed_forward_length(c.intermediate_size)
    wr.add_head_count(c.num_heads)
    wr.add_head_count_kv(c.num_kv_heads)
    wr.add_rope_dimension_count(c.head_dim)
    wr.add_rope_freq_base(c.rope_theta)
    wr.add_layer_norm_rms_eps(c.rms_norm_eps)
    add_smollm2_tokenizer(wr)
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, t in weights.items():
        arr = t.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            _, _, idx, rest = name.split(".", 3)
            part = rest.rsplit(".", 1)[0]
            gname = f"blk.{idx}.{parts[part]}.weight"
            if part == "self_attn.q_proj":
                arr = llama_cpp_permute(arr, c.num_heads)
            elif part == "self_attn.k_proj":
                arr = llama_cpp_permute(arr, c.num_kv_heads)
        else:
            gname = names[name]
        wr.add_tensor(gname, np.ascontiguousarray(arr))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def write_hf_folder(path: Path, config: ModelConfig, weights: dict[str, torch.Tensor],
                    tokenizer: TextTokenizer) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_hf()))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    tokenizer._tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": tokenizer.chat_template}))
    return path


def hf_model(config: ModelConfig, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """transformers' own Llama on the same weights: the reference for parity."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = {k: v for k, v in config.to_hf().items() if k != "architectures"}
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg)).eval()
    model.load_state_dict(weights, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model
