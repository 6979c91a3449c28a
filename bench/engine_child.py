"""One measured configuration of bench/engine.py, in its own process (JSON in, JSON out)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bench.common import peak_rss_mb, workload


def run_llmq(args: dict) -> dict:
    from llmq.contract import SamplingParams
    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest
    from llmq.engine.host.process import configure_process
    from llmq.variants.registry import resolve

    configure_process(threads=args.get("threads", 2))
    engine = Engine.load(resolve(args.get("model", args.get("base", "smollm2-135m"))), EngineConfig(
        slots=args["slots"], slot_length=args.get("slot_length", 512),
        threads=args.get("threads", 2),
        step_tokens=args.get("step_tokens", 4096),
        prefix_cache_entries=args.get("prefix_entries", 16)))
    prompts = workload(args.get("limit"))
    if args.get("repeat_to"):
        prompts = [prompts[i % len(prompts)] for i in range(args["repeat_to"])]
    params = SamplingParams(max_tokens=args["new_tokens"], ignore_eos=True)

    def requests() -> list:  # as chats, or as plain prompts for a model without a template
        return [GenerationRequest(**engine.tokenizer.chat_or_text(p["messages"]),
                                  params=params) for p in prompts]

    engine.generate(requests()[:2])  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    results = engine.generate(requests())
    seconds = time.perf_counter() - start
    engine.close()
    failed = [r for r in results if not r.ok]
    if failed:  # not a speed of 0: the engine's own error, for the parent to report
        raise RuntimeError(f"{len(failed)} of {len(results)} requests failed: {failed[0].error}")
    generated = sum(r.completion_tokens for r in results)
    return {"tokens": generated, "seconds": seconds, "tok_s": generated / seconds,
            "peak_rss_mb": peak_rss_mb(), "outputs": [r.token_ids for r in results]}


def run_transformers(args: dict) -> dict:
    """transformers' generate on the shipped GGUF (SmolLM2), or, with ``hf_dir``, on the
    Hugging Face folder llmq's loader unpacked a GGUF into, fed ``prompt_ids`` (llmq's
    tokens: the same for every engine) left-padded by hand."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq.variants.registry import builtin_model_path

    batch = args["slots"]
    n = args["new_tokens"]
    if args.get("hf_dir"):
        model = AutoModelForCausalLM.from_pretrained(args["hf_dir"], dtype=torch.float32).eval()
        texts: list = args["prompt_ids"][:args.get("limit")]
        pad = 0

        def encode(chunk: list) -> dict:
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk])
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk])
            return {"input_ids": ids, "attention_mask": mask}
    else:
        path = builtin_model_path("smollm2-135m")
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.padding_side = "left"
        pad = tok.pad_token_id
        texts = [tok.apply_chat_template(p["messages"], add_generation_prompt=True,
                                         tokenize=False)
                 for p in workload(args.get("limit"))]

        def encode(chunk: list) -> dict:
            return tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)

    def generate(chunk: list) -> list[list[int]]:
        enc = encode(chunk)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=pad)
        return out[:, enc["input_ids"].shape[1]:].tolist()

    generate(texts[:2])
    start = time.perf_counter()
    outputs: list[list[int]] = []
    for i in range(0, len(texts), batch):
        outputs += generate(texts[i:i + batch])
    seconds = time.perf_counter() - start
    generated = sum(len(o) for o in outputs)
    return {"tokens": generated, "seconds": seconds, "tok_s": generated / seconds,
            "peak_rss_mb": peak_rss_mb(), "outputs": outputs}


def convert_ctranslate2(out_dir: str, quantization: str) -> None:
    """The shipped GGUF into CTranslate2's format, through a Hugging Face folder written from
    llmq's own loader (transformers will not save a model it loaded from GGUF)."""
    import ctranslate2
    from safetensors.torch import save_file

    from llmq.engine.model.loader import load_checkpoint
    from llmq.variants.registry import builtin_model_path

    hf_dir = Path(out_dir).with_suffix(".hf")
    if not (hf_dir / "model.safetensors").is_file():
        hf_dir.mkdir(parents=True, exist_ok=True)
        ckpt = load_checkpoint(builtin_model_path("smollm2-135m"))
        (hf_dir / "config.json").write_text(json.dumps(ckpt.config.to_hf()))
        ckpt.tokenizer.save_hf_files(hf_dir)
        save_file({k: v.contiguous() for k, v in ckpt.weights.items()},
                  str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(
        out_dir, quantization=quantization, force=True)


def run_ctranslate2(args: dict) -> dict:
    import ctranslate2

    from llmq.engine.model.tokenizer import load_tokenizer
    from llmq.variants.registry import builtin_model_path

    out_dir = args["ct2_dir"]
    if not (Path(out_dir) / "model.bin").is_file():
        convert_ctranslate2(out_dir, args.get("quantization", "int8"))
    tok = load_tokenizer(builtin_model_path("smollm2-135m"))
    gen = ctranslate2.Generator(out_dir, device="cpu", compute_type=args.get(
        "quantization", "int8"), intra_threads=args.get("threads", 2))
    prompts = workload(args.get("limit"))
    n = args["new_tokens"]
    tokens = [[tok.token_text(i) for i in tok.encode_chat(p["messages"])] for p in prompts]

    def generate(batch: list[list[str]]) -> list[list[int]]:
        res = gen.generate_batch(batch, max_length=n, min_length=n, sampling_topk=1,
                                 include_prompt_in_result=False, max_batch_size=args["slots"])
        return [r.sequences_ids[0] for r in res]

    generate(tokens[:2])
    start = time.perf_counter()
    outputs = generate(tokens)
    seconds = time.perf_counter() - start
    generated = sum(len(o) for o in outputs)
    return {"tokens": generated, "seconds": seconds, "tok_s": generated / seconds,
            "peak_rss_mb": peak_rss_mb(), "outputs": outputs}


def main() -> None:
    args = json.loads(sys.stdin.read())
    if args["engine"] == "llmq":  # the engine sets its own thread's count (threads.py)
        result = run_llmq(args)
    elif args["engine"] == "ctranslate2":
        result = run_ctranslate2(args)
    else:
        torch.set_num_threads(args.get("threads", 2))
        result = run_transformers(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
