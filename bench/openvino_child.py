"""One OpenVINO GenAI run of the shared workload, in its own process and its own virtual
environment (JSON in, JSON out; it imports nothing of llmq): the prompts come in as token ids
rendered by llmq's tokenizer, so both engines see the same tokens. As in
../shared/bench/README.md: ContinuousBatchingPipeline, 64 sequences, 2 inference threads,
greedy, EOS ignored."""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    args = json.loads(sys.stdin.read())
    scheduler = ov_genai.SchedulerConfig()
    scheduler.max_num_seqs = args["slots"]
    scheduler.cache_size = 2  # GB of KV cache: room for 64 sequences of ~250 tokens
    properties = {"INFERENCE_NUM_THREADS": 2}
    if args.get("precision"):
        properties["INFERENCE_PRECISION_HINT"] = args["precision"]
    if args.get("kv_precision"):
        properties["KV_CACHE_PRECISION"] = args["kv_precision"]
    pipe = ov_genai.ContinuousBatchingPipeline(args["model_dir"], scheduler, "CPU",
                                               properties)
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = args["new_tokens"]
    config.min_new_tokens = args["new_tokens"]
    config.ignore_eos = True
    config.do_sample = False
    prompts = [ov.Tensor(np.array([ids], dtype=np.int64))
               for ids in args["prompt_ids"][:args.get("limit")]]
    pipe.generate(prompts[:2], [config] * 2)  # warm-up, as llmq's runs have
    start = time.perf_counter()
    results = pipe.generate(prompts, [config] * len(prompts))
    seconds = time.perf_counter() - start
    outputs = [list(r.m_generation_ids[0]) for r in results]
    generated = sum(len(o) for o in outputs)
    print(json.dumps({"tokens": generated, "seconds": seconds, "tok_s": generated / seconds,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "outputs": outputs}))


if __name__ == "__main__":
    main()
