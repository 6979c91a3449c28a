"""llguidance against xgrammar on our tokenizer, side by side in one process: for each of the
formats in examples/structured.jsonl, the time to compile it, then the time to compute the
token masks of a step for all of them at once, replaying the same token streams through both
libraries (the outputs SmolLM2 wrote under those formats). Why llmq uses llguidance is
written under these figures in bench/BENCHMARKS.md. Needs xgrammar beside the test extra
(its own requirements pull in triton, which it does not use on a CPU):
pip install --no-deps xgrammar apache-tvm-ffi.

    .venv/bin/python -m bench.grammar
"""

from __future__ import annotations

import json
import statistics
import time

from bench.common import ROOT, markdown_table, record

EXAMPLES = ROOT / "examples" / "structured.jsonl"


def token_streams() -> tuple[list[dict], list[list[int]], object]:
    from llmq.api.inputs import read_input
    from llmq.contract import SamplingParams
    from llmq.engine.config import EngineConfig
    from llmq.engine.engine import Engine
    from llmq.engine.generation import GenerationRequest
    from llmq.engine.host.process import configure_process
    from llmq.variants.registry import builtin_model_path

    configure_process()
    engine = Engine.load(builtin_model_path("smollm2-135m"),
                         EngineConfig(slots=64, slot_length=1024))
    accepted = read_input(EXAMPLES).accepted
    params = [SamplingParams.from_stored(a.params) for a in accepted]
    results = engine.generate(GenerationRequest(messages=a.input["messages"], params=p)
                              for a, p in zip(accepted, params, strict=True))
    engine.close()
    formats = [p.response_format.model_dump(mode="json", by_alias=True) for p in params]
    return formats, [r.token_ids for r in results], engine.tokenizer


def llguidance_run(formats: list[dict], streams: list[list[int]], tok) -> dict:
    import llguidance
    import llguidance.torch

    from llmq.contract import SamplingOverrides

    ll = llguidance.LLTokenizer(tok.hf_json(), n_vocab=49152, eos_token=list(tok.eos_token_ids))
    executor = llguidance.LLExecutor(num_threads=1)
    grammars = [SamplingOverrides.model_validate({"response_format": f}).response_format.grammar()
                for f in formats]
    start = time.perf_counter()
    matchers = [llguidance.LLMatcher(ll, g, log_level=0) for g in grammars]
    compile_ms = (time.perf_counter() - start) * 1000 / len(matchers)
    mask = llguidance.torch.allocate_token_bitmask(len(matchers), 49152)

    def fill(live: list[int]) -> None:
        llguidance.torch.fill_next_token_bitmask_par(
            executor, [(matchers[i], i) for i in live], mask)

    def accept(i: int, token: int) -> bool:
        return matchers[i].consume_token(token) and not matchers[i].is_error()

    return {"compile_ms": compile_ms, **_replay(streams, fill, accept)}


def xgrammar_run(formats: list[dict], streams: list[list[int]], tok) -> dict:
    import tokenizers
    import transformers
    import xgrammar as xgr

    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(tok.hf_json()))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=49152,
                                              stop_token_ids=list(tok.eos_token_ids))
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile_one(f: dict):
        if f["type"] == "json_schema":
            # compact, as llguidance writes it (xgrammar's default puts a space after ":")
            return compiler.compile_json_schema(json.dumps(f["json_schema"]["schema"]),
                                                any_whitespace=False, separators=(",", ":"))
        if f["type"] == "json_object":
            return compiler.compile_builtin_json_grammar()
        if f["type"] == "regex":
            return compiler.compile_regex(f["regex"])
        import re
        return compiler.compile_regex("|".join(re.escape(c) for c in f["choice"]))

    start = time.perf_counter()
    matchers = [xgr.GrammarMatcher(compile_one(f)) for f in formats]
    compile_ms = (time.perf_counter() - start) * 1000 / len(matchers)
    mask = xgr.allocate_token_bitmask(len(matchers), 49152)

    def fill(live: list[int]) -> None:
        for i in live:
            matchers[i].fill_next_token_bitmask(mask, i)

    def accept(i: int, token: int) -> bool:
        return matchers[i].accept_token(token)

    return {"compile_ms": compile_ms, **_replay(streams, fill, accept)}


def _replay(streams: list[list[int]], fill, accept) -> dict:
    """Steps through the streams together: the masks of every live one, then each accepts
    its next token. Returns the mask time per step."""
    samples = []
    refused: set[int] = set()  # streams a library would not follow to their end
    for step in range(max(map(len, streams))):
        live = [i for i, s in enumerate(streams) if step < len(s) and i not in refused]
        start = time.perf_counter()
        fill(live)
        samples.append((time.perf_counter() - start) * 1000)
        for i in live:
            if not accept(i, streams[i][step]):
                refused.add(i)
    return {"mask_ms_median": statistics.median(samples), "mask_ms_mean":
            statistics.fmean(samples), "steps": len(samples), "refused": len(refused)}


def main() -> None:
    formats, streams, tok = token_streams()
    rows = []
    for name, fn in (("llguidance", llguidance_run), ("xgrammar", xgrammar_run)):
        res = fn(formats, streams, tok)
        print(name, res, flush=True)
        rows.append([name, f"{res['compile_ms']:.2f}", f"{res['mask_ms_median']:.3f}",
                     f"{res['mask_ms_mean']:.3f}", res["steps"], res["refused"]])
    table = markdown_table(["library", "compile ms per format", "mask ms per step (median)",
                            "mask ms per step (mean)", "steps",
                            "streams refused before their end"], rows)
    notes = (f"The {len(formats)} formats of examples/structured.jsonl (JSON schemas, regexes, "
             "choices, JSON mode) on the SmolLM2 tokenizer (49,152 tokens), one thread each; a "
             "step computes the masks of every format still generating, replaying the tokens "
             "SmolLM2 wrote under them.")
    print(table)
    print(notes)
    record("Grammar libraries on our tokenizer (bench/grammar.py)", table, notes)


if __name__ == "__main__":
    main()
