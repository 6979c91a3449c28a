"""The engine: one model, one scheduler, one background thread running steps. Any thread may
submit requests (a Future comes back) or cancel them; they join the running batch at the next
step and leave it the step after they finish."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from llmq.contract import PRIORITY_RANKS, FinishReason

from .config import EngineConfig
from .constrained import Constraint, GrammarTokenizer, MaskWorker, apply_masks
from .generation import (
    ENGINE_CLOSED,
    STEP_FAILED,
    ErrorCause,
    GenerationRequest,
    GenerationResult,
    Timing,
)
from .host.devices import pick_device, pick_dtype
from .host.process import compile_enabled
from .host.threads import compute_threads
from .model.artifact import load_variant
from .model.decoder import LlamaModel
from .model.kv_cache import prompt_chunk_limit
from .model.loader import load_checkpoint
from .model.manifest import is_variant
from .model.tokenizer import TextTokenizer
from .penalties import TokenHistory, penalize
from .runner import ModelRunner, sampled_sequences
from .sampling import make_generator, sample
from .scheduler import Scheduler, SchedulerConfig
from .scheduler import Sequence as SeqState
from .stops import cut_at_stop, loop_cut

log = logging.getLogger(__name__)

@dataclass(eq=False)
class _Live:
    """The engine's state for one request in flight."""

    request: GenerationRequest
    future: Future[GenerationResult]
    timing: Timing
    generator: torch.Generator | None
    stream: Any
    on_token: Callable[[str, int], None] | None
    history: TokenHistory | None = None  # for requests with repetition penalties
    constraint: Constraint | None = None  # for requests with a structured response format
    text: str = ""
    steps: int = 0
    batch_sum: int = 0


class Engine:
    def __init__(self, model: LlamaModel, tokenizer: TextTokenizer,
                 config: EngineConfig | None = None, name: str = "model") -> None:
        self.config = config or EngineConfig()
        if compile_enabled():
            model.choose_paths(self.config.fuse_layers, self.config.threads)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        slot_length = min(self.config.slot_length, model.config.max_position_embeddings)
        # windowed layers keep a ring of their window and a chunk (kv_cache.positions_kept)
        chunk = prompt_chunk_limit(model.config, slot_length)
        if chunk is not None:
            chunk = min(chunk, self.config.step_tokens)
        self.scheduler = Scheduler(SchedulerConfig(
            slots=self.config.slots, slot_length=slot_length,
            step_tokens=self.config.step_tokens, chunk_tokens=chunk,
            prefix_cache_entries=self.config.prefix_cache_entries,
            urgent_rank=PRIORITY_RANKS["interactive"],
            urgent_step_tokens=self.config.interactive_step_tokens,
        ))
        self.runner = ModelRunner(model, self.config.slots, slot_length,
                                  chunk or self.config.step_tokens)
        self.eos_ids = frozenset(model.config.eos_token_ids) | frozenset(tokenizer.eos_token_ids)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._by_id: dict[str, SeqState] = {}
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self.steps = 0
        self._progress = time.monotonic()  # last step, or last time the engine was idle
        self._last_step_wall: datetime | None = None
        self._masks: MaskWorker | None = None  # built with the first constrained request

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, config: EngineConfig | None = None,
             name: str | None = None, verify: bool = False,
             cache_dir: str | Path | None = None) -> Engine:
        """An engine for the checkpoint or variant artifact at ``path`` (names are resolved
        by llmq.variants.registry, not here); ``verify`` checks an artifact's files against
        its manifest's hashes first; ``cache_dir`` keeps GGUF files unpacked (loader.py)."""
        config = config or EngineConfig()
        device = pick_device(config.device)
        path = Path(path)
        if is_variant(path):  # an optimized artifact: built exactly as saved
            net, tokenizer, _ = load_variant(path, device, check=verify)
        else:
            ckpt = load_checkpoint(path, cache_dir)
            net = LlamaModel.from_hf_weights(ckpt.config, ckpt.weights,
                                             dtype=pick_dtype(config.dtype, device),
                                             device=device)
            tokenizer = ckpt.tokenizer
        return cls(net, tokenizer, config, name=name or str(path))

    # --- public API (any thread) ----------------------------------------------------------

    def submit(self, request: GenerationRequest,
               on_token: Callable[[str, int], None] | None = None) -> Future[GenerationResult]:
        future: Future[GenerationResult] = Future()
        self._inbox.put(("add", (request, future, on_token, time.time())))
        self._ensure_thread()
        self._wake.set()
        return future

    def cancel(self, request_id: str) -> None:
        """Stops a request: a waiting one at once, a running one at the next step."""
        self._inbox.put(("cancel", request_id))
        self._wake.set()

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def generate_here(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Runs ``requests`` to completion on the calling thread, without the engine thread:
        for offline work that already runs on a compute thread (see threads.py). Not to be
        mixed with ``submit`` on the same engine."""
        if self._thread is not None:
            raise RuntimeError("the engine thread is running: use generate()")
        futures = []
        for request in requests:
            future: Future[GenerationResult] = Future()
            self._add(request, future, None, time.time())
            futures.append(future)
        while self.scheduler.has_work:
            self.step()
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stops the loop; requests still in flight end with ENGINE_CLOSED."""
        with self._thread_lock:
            self._stop.set()
            self._wake.set()
            if self._thread is not None:
                self._thread.join()
                self._thread = None
        self.model.wait_for_paths()  # a compile still running ends with the process's work
        if self._masks is not None:
            self._masks.close()

    def mask_worker(self) -> MaskWorker:
        """What structured output needs: our tokenizer as llguidance sees it (built once,
        when the first constrained request arrives) and the thread that computes masks."""
        if self._masks is None:
            self._masks = MaskWorker(GrammarTokenizer(
                self.tokenizer, self.model.config.vocab_size, sorted(self.eos_ids)))
        return self._masks

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            return self.tokenizer.encode_chat(request.messages, self.config.chat_date)
        if request.prompt is None:
            raise ValueError("a request needs a prompt or messages")
        return self.tokenizer.encode(request.prompt)

    # --- the loop -------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        """Starts the loop, or starts it again if it died (it should not: see ``_loop``).
        Feeders submit from many threads at once: exactly one loop may ever run, so the
        check and the start happen under a lock."""
        with self._thread_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._thread is not None:
                log.error("the engine thread had stopped: starting it again")
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="llmq-engine", daemon=True)
            self._thread.start()

    @property
    def last_step_at(self) -> datetime | None:
        """When the last step ended (UTC), for heartbeats."""
        return self._last_step_wall

    def stalled(self, seconds: float) -> bool:
        """True when requests are waiting or running but no step has ended for ``seconds``:
        the loop is wedged (or dead), and this process should be replaced."""
        busy = bool(self._by_id) or not self._inbox.empty()
        return busy and time.monotonic() - self._progress > seconds

    def _loop(self) -> None:
        torch.set_num_threads(self.config.threads or compute_threads())
        while not self._stop.is_set():
            self._drain_inbox()
            if not self.scheduler.has_work:
                self._progress = time.monotonic()
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as exc:  # a bug or OOM: fail what is in flight, keep serving
                log.exception("engine step failed")
                # a step that failed half-way may have planned a prefix it never kept
                self.scheduler.forget_prefixes()
                self.runner.forget_prefixes()
                for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
                    self._finish(seq, FinishReason.ERROR, f"{STEP_FAILED}: {exc}",
                                 ErrorCause.STEP)
            self._progress = time.monotonic()
            self._last_step_wall = datetime.now(UTC).replace(tzinfo=None)
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self._finish(seq, FinishReason.CANCELLED, ENGINE_CLOSED, ErrorCause.CLOSED)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                try:
                    self._add(*item)
                except Exception as exc:  # never let one request stop the loop
                    log.exception("could not add a request")
                    request, future = item[0], item[1]
                    if not future.done():
                        future.set_result(GenerationResult(
                            request.request_id, "", FinishReason.ERROR, 0, 0,
                            Timing(submitted_at=item[3], finished_at=time.time()),
                            error=f"could not start this request: {exc}",
                            cause=ErrorCause.REQUEST))
            elif kind == "cancel":
                seq = self._by_id.get(item)
                if seq is not None:
                    self._finish(seq, FinishReason.CANCELLED, None)

    def _add(self, request: GenerationRequest, future: Future[GenerationResult],
             on_token: Callable[[str, int], None] | None, submitted: float) -> None:
        timing = Timing(submitted_at=submitted)
        try:
            prompt = self.encode(request)
            reason = self.scheduler.check_fits(len(prompt), request.params.max_tokens)
            if reason:
                raise ValueError(reason)
            gen = None if request.params.greedy else make_generator(request.params.seed,
                                                                    self.model.device)
            constraint = (Constraint(self.mask_worker().tokenizer, request.params)
                          if request.params.response_format.type != "text" else None)
        except Exception as exc:
            timing.finished_at = time.time()
            future.set_result(GenerationResult(request.request_id, "", FinishReason.ERROR, 0, 0,
                                               timing, error=str(exc),
                                               cause=ErrorCause.REQUEST))
            return
        history = TokenHistory(prompt, request.params) if request.params.penalized else None
        live = _Live(request, future, timing, gen, self.tokenizer.decode_stream(), on_token,
                     history, constraint)
        seq = SeqState(request.request_id, prompt, request.params.max_tokens, payload=live,
                       rank=request.rank)
        self._by_id[request.request_id] = seq
        self.scheduler.add(seq)

    def step(self) -> None:
        """One scheduling step: plan, run the model, sample, hand out tokens."""
        plan = self.scheduler.schedule()
        now = time.time()
        active = {id(w.seq): w.seq for w in (*plan.decode, *plan.prefill)}
        for seq in active.values():
            live: _Live = seq.payload
            if live.timing.started_at is None:
                live.timing.started_at = now
            live.steps += 1
            live.batch_sum += len(active)
        wanted = sampled_sequences(plan)
        constraints = [s.payload.constraint for s in wanted]
        masks = self._masks.start(constraints) if self._masks and any(constraints) else None
        _, logits = self.runner.execute(plan)
        logits = penalize(logits, [s.payload.history for s in wanted])
        if masks is not None:
            logits = apply_masks(logits, masks.result(), constraints)
        params = [s.payload.request.params for s in wanted]
        tokens = sample(logits, params, [s.payload.generator for s in wanted])
        self.scheduler.update(plan, {id(s): t for s, t in zip(wanted, tokens, strict=True)})
        self.steps += 1
        for seq, token in zip(wanted, tokens, strict=True):
            self._on_token(seq, token)

    def _on_token(self, seq: SeqState, token: int) -> None:
        live: _Live = seq.payload
        params = live.request.params
        if live.timing.first_token_at is None:
            live.timing.first_token_at = time.time()
        if live.history is not None:
            live.history.add(token)
        if live.constraint is not None:
            try:
                live.constraint.advance(token)
            except ValueError as exc:
                self._finish(seq, FinishReason.ERROR, str(exc), ErrorCause.REQUEST)
                return
        if token in self.eos_ids and not params.ignore_eos:
            self._finish(seq, FinishReason.STOP, None)
            return
        piece = self.tokenizer.stream_step(live.stream, token)
        if piece:
            live.text += piece
            cut = cut_at_stop(live.text, len(piece), params.stop) if params.stop else None
            if cut is not None:
                live.text = live.text[:cut]
                self._finish(seq, FinishReason.STOP, None)
                return
            if params.detects_loops and self._cut_loop(seq, live, piece):
                self._finish(seq, FinishReason.REPETITION, None)
                return
            if live.constraint is not None and live.constraint.done:
                self._finish(seq, FinishReason.STOP, None)
                return
            if live.on_token is not None:
                live.on_token(piece, token)
        if len(seq.output) >= seq.max_tokens:
            self._finish(seq, FinishReason.LENGTH, None)

    def _cut_loop(self, seq: SeqState, live: _Live, piece: str) -> bool:
        """True when the output has started to loop; its text is then cut back to before the
        repetition (the token ids stay whole: they were generated and are counted)."""
        cut = loop_cut(seq.output, live.text, piece, self.tokenizer.decode)
        if cut is None:
            return False
        live.text = live.text[:cut].rstrip()
        return True

    def _finish(self, seq: SeqState, reason: FinishReason, error: str | None,
                cause: ErrorCause | None = None) -> None:
        live: _Live = seq.payload
        self.scheduler.finish(seq)
        self._by_id.pop(seq.request_id, None)
        timing = live.timing
        timing.finished_at = time.time()
        if live.steps:
            timing.batch_size = live.batch_sum / live.steps
        live.future.set_result(GenerationResult(
            request_id=seq.request_id, text=live.text, finish_reason=reason,
            prompt_tokens=len(seq.prompt), completion_tokens=len(seq.output), timing=timing,
            error=error, token_ids=list(seq.output), cause=cause, cached_tokens=seq.cached,
        ))
