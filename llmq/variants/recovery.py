"""What a pruned variant recovers on: the base's own sampled continuations of the calibration
prompts (never the held-out ones), for the closed-form re-fit (llmq.engine.compress.reconstruct) and
for distillation (llmq.engine.compress.distill), which this runs with a progress bar and a
checkpoint in LLMQ_CACHE_DIR, so that an interrupted build resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from llmq.contract import SamplingParams
from llmq.engine.compress.distill import (
    DistillReport,
    DistillSettings,
    Weights,
    checkpoint_step,
    distill,
)
from llmq.engine.config import EngineConfig, ModelConfig
from llmq.engine.engine import Engine
from llmq.engine.generation import GenerationRequest
from llmq.engine.host.devices import pick_device
from llmq.engine.model.decoder import LlamaModel
from llmq.engine.model.tokenizer import TextTokenizer

# reconstruction fits thousands of weights per layer: it gets more text than calibration,
# the base's own sampled continuations of the calibration prompts (several seeds each)
RECOVERY_SAMPLES, RECOVERY_NEW_TOKENS = 4, 128


def recovery_text(model: LlamaModel, tok: TextTokenizer, chats: list[list[dict[str, Any]]],
                  log: Callable[[str], None]) -> list[list[int]]:
    """Prompt + sampled continuation, as token ids, for every calibration prompt and seed."""
    params = [SamplingParams(max_tokens=RECOVERY_NEW_TOKENS, temperature=0.8,
                             seed=seed, ignore_eos=True) for seed in range(RECOVERY_SAMPLES)]
    requests = [GenerationRequest(**tok.chat_or_text(m), params=p) for p in params for m in chats]
    log(f"generating {len(requests)} x {RECOVERY_NEW_TOKENS} tokens of recovery text")
    engine = Engine(model, tok, EngineConfig(slots=min(64, len(requests)),
                                             slot_length=1024))
    outputs = engine.generate_here(requests)
    prompts = [tok.encode_chat_or_text(m) for _ in params for m in chats]
    return [ids + o.token_ids for ids, o in zip(prompts, outputs, strict=True)]


def fingerprint(*parts: object) -> str:
    """Names one distillation run: the same base, recipe and text give the same name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def distill_student(config: ModelConfig, weights: Weights, base_config: ModelConfig,
                    base_weights: Weights, text: list[list[int]], settings: DistillSettings,
                    run_id: str, cache_dir: str | None, log: Callable[[str], None]
                    ) -> tuple[Weights, DistillReport]:
    """Distils on the fastest device here, with a bar (on a terminal) or a log line every
    ``save_every`` steps (elsewhere), each with an ETA; checkpoints to ``cache_dir``."""
    device = pick_device("auto")
    teacher = {k: v.to(device) for k, v in base_weights.items()}
    checkpoint = Path(cache_dir) / "distill" / f"{run_id[:32]}.safetensors" if cache_dir \
        else None
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    log(f"distilling on {device.type}: {settings.steps} steps of {settings.batch} sequences"
        + (f", checkpoints in {checkpoint}" if checkpoint else ""))
    console = Console(stderr=True)
    resumed = checkpoint_step(checkpoint, run_id) if checkpoint else 0
    if resumed:
        log(f"resuming distillation at step {resumed} from {checkpoint}")
    started = time.monotonic()
    with Progress(TextColumn("distilling"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("KL {task.fields[kl]:.3f}"), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("distill", total=settings.steps, completed=resumed, kl=0.0)

        def on_step(done: int, total: int, kl: float) -> None:
            bar.update(task, completed=done, kl=kl)
            if not console.is_terminal and (done % settings.save_every == 0 or done == total):
                per_step = (time.monotonic() - started) / max(1, done - resumed)
                log(f"distilling: step {done}/{total}, KL {kl:.3f}, "
                    f"about {per_step * (total - done):.0f} s left")

        trained, report = distill(config, weights, base_config, teacher, text, settings,
                                  on_step, checkpoint, run_id)
    log(f"distilled: KL on its batches {report.first_kl:.3f} -> {report.last_kl:.3f} "
        f"({report.positions} positions, {time.monotonic() - started:.0f} s)")
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # done: what follows takes seconds, not minutes
    return trained, report

