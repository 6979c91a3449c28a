"""Tokenizer and chat template, built from what the checkpoint ships (GGUF metadata or
tokenizer.json), so that prompts are encoded exactly as the model was trained on them."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.decoders import DecodeStream

from .chat_template import compile_template, pinned_clock, render

# llama.cpp's token types: 3 is a control token, 4 a user-defined one; both are atomic.
_GGUF_CONTROL = 3
# end-of-turn tokens of the chat formats: Llama 3, ChatML (Qwen, SmolLM2), Phi-3, Gemma
_END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
_GGUF_SPECIAL_TYPES = (_GGUF_CONTROL, 4)
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # SentencePiece's byte-fallback pieces

# Pre-tokenizers by llama.cpp's ``tokenizer.ggml.pre`` name.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's: Llama 3's with single digits
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact")
_REGEX_SPLIT_PRE = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT,
                    "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
_BYTE_LEVEL_PRE = ("gpt2", "default", "")
# what a GGUF file's tokenizer may be (checked at import: families.check_gguf_fields)
GGUF_TOKENIZER_MODELS = ("gpt2", "llama")  # byte-level BPE, SentencePiece
GGUF_PRE_TOKENIZERS = (*_DIGIT_SPLIT_PRE, *_REGEX_SPLIT_PRE, *_BYTE_LEVEL_PRE)


def _gguf_pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in _REGEX_SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(
                    pattern=_tokenizers_regex(_REGEX_SPLIT_PRE[name]), behavior="isolated",
                    invert=False
                ),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if name in _BYTE_LEVEL_PRE:
        return byte_level
    raise ValueError(f"unsupported GGUF pre-tokenizer {name!r}")


def _tokenizers_regex(pattern: str) -> Any:
    from tokenizers import Regex

    return Regex(pattern)


class TextTokenizer:
    """Encodes prompts, renders chat messages and decodes streamed tokens."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        add_bos: bool = False,
    ) -> None:
        self._tok = tokenizer
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos = add_bos
        self._template = compile_template(chat_template) if chat_template else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def base_token_ids(self) -> list[int]:
        """The tokens any text can be spelled with and those that end a sequence: what a
        pruned output head must always keep. A SentencePiece vocabulary with byte fallback
        (Gemma, Llama 2) spells anything with its 256 ``<0xNN>`` pieces, not with its
        one-character tokens (19,227 in Gemma 3's, mostly scripts a calibration text never
        uses); a byte-level one (GPT-2's, SmolLM2's, Llama 3's) with its 256 one-character
        tokens. Other special tokens (Gemma's 6,242 ``<unusedN>``) stay only where the
        calibration text or the base model's predictions need them."""
        vocab = self._tok.get_vocab(with_added_tokens=False)
        if getattr(self._tok.model, "byte_fallback", False):
            ids = {i for text, i in vocab.items() if _BYTE_PIECE.fullmatch(text)}
        else:
            ids = {i for text, i in vocab.items() if len(text) == 1}
        ids.update(self.eos_token_ids)
        if self.bos_token_id is not None:
            ids.add(self.bos_token_id)
        return sorted(ids)

    def hf_json(self) -> str:
        """The tokenizer as Hugging Face's tokenizer.json text (what llguidance reads)."""
        return self._tok.to_str()

    def token_text(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def decode_stream(self) -> DecodeStream:
        """A streaming decoder that only yields whole UTF-8 characters."""
        return DecodeStream(skip_special_tokens=True)

    def stream_step(self, stream: DecodeStream, token_id: int) -> str:
        return stream.step(self._tok, token_id) or ""

    def render_chat(self, messages: Sequence[dict[str, Any]], today: date | None = None) -> str:
        """The prompt text of ``messages``; ``today`` pins the date a template's
        ``strftime_now`` gives (Llama 3's system header), else the clock's."""
        if self._template is None:
            raise ValueError("this model ships no chat template; send a plain prompt instead")
        bos = self.token_text(self.bos_token_id) if self.bos_token_id is not None else ""
        eos = self.token_text(self.eos_token_ids[0]) if self.eos_token_ids else ""
        pinned = {"strftime_now": pinned_clock(today)} if today is not None else {}
        return render(self._template, list(messages), add_generation_prompt=True,
                      bos_token=bos, eos_token=eos, **pinned)

    def chat_or_text(self, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The request fields that put ``messages`` to this model: the messages themselves
        where it has a chat template, else their text as a plain prompt (a base model's file
        with no template, such as Gemma 3 270M's GGUF, is calibrated and evaluated on the
        same texts as a completion)."""
        if self._template is not None:
            return {"messages": list(messages)}
        return {"prompt": "\n\n".join(str(m.get("content") or "") for m in messages)}

    def encode_chat_or_text(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The token ids of ``chat_or_text``'s request."""
        fields = self.chat_or_text(messages)
        return self.encode_chat(messages) if "messages" in fields else self.encode(
            fields["prompt"])

    def encode_chat(self, messages: Sequence[dict[str, Any]], today: date | None = None
                    ) -> list[int]:
        # Templates write their own BOS where the model wants one.
        return self.encode(self.render_chat(messages, today), add_bos=False)

    def save_hf_files(self, folder: Path) -> None:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json``, which ``from_hf_files``
        (and Hugging Face) read back: how a variant artifact carries its tokenizer."""
        self._tok.save(str(folder / "tokenizer.json"))
        bos = self.token_text(self.bos_token_id) if self.bos_token_id is not None else None
        eos = self.token_text(self.eos_token_ids[0]) if self.eos_token_ids else None
        config = {"chat_template": self.chat_template, "add_bos_token": self.add_bos,
                  "bos_token": bos, "eos_token": eos}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))

    @classmethod
    def from_gguf_fields(cls, fields: dict[str, Any]) -> TextTokenizer:
        model = fields.get("tokenizer.ggml.model")
        tokens: list[str] = fields["tokenizer.ggml.tokens"]
        types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if model == "gpt2":
            merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
            vocab = {t: i for i, t in enumerate(tokens)}
            tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
            tok.pre_tokenizer = _gguf_pre_tokenizer(fields.get("tokenizer.ggml.pre", "default"))
            tok.decoder = decoders.ByteLevel()
        elif model == "llama":
            tok = _sentencepiece_bpe(tokens, fields["tokenizer.ggml.scores"], types,
                                     bool(fields.get("tokenizer.ggml.add_space_prefix", True)))
        else:
            raise ValueError(f"unsupported GGUF tokenizer model {model!r} (BPE 'gpt2' and "
                             f"SentencePiece 'llama' are read)")
        # both kinds are atomic; control tokens are left out of decoded text, user-defined
        # ones are text (Gemma's runs of spaces and newlines), as llama.cpp renders them
        tok.add_tokens([AddedToken(t, special=ty == _GGUF_CONTROL, normalized=False)
                        for t, ty in zip(tokens, types, strict=True)
                        if ty in _GGUF_SPECIAL_TYPES])
        eos = fields.get("tokenizer.ggml.eos_token_id")
        eot = fields.get("tokenizer.ggml.eot_token_id")
        # a chat turn ends at the family's end-of-turn token as well, which GGUF files name
        # only by its text (llama.cpp counts them among its end-of-generation tokens too)
        turns = [i for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
                 if ty == _GGUF_CONTROL and t in _END_OF_TURN]
        eos_ids = tuple(dict.fromkeys(i for i in (eos, eot, *turns) if i is not None))
        return cls(
            tok,
            fields.get("tokenizer.chat_template"),
            fields.get("tokenizer.ggml.bos_token_id"),
            eos_ids,
            add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        )

    @classmethod
    def from_hf_files(
        cls,
        tokenizer_json: str,
        tokenizer_config: dict[str, Any],
        eos_token_ids: Sequence[int],
        bos_token_id: int | None,
    ) -> TextTokenizer:
        tok = Tokenizer.from_file(tokenizer_json)
        return cls(
            tok,
            tokenizer_config.get("chat_template"),
            bos_token_id,
            eos_token_ids,
            add_bos=bool(tokenizer_config.get("add_bos_token", False)),
        )


def _sentencepiece_bpe(tokens: list[str], scores: list[float], types: list[int],
                       add_space_prefix: bool) -> Tokenizer:
    """A SentencePiece BPE vocabulary as llama.cpp stores it (pieces, scores, types; no
    merges) as the BPE model Hugging Face builds of it: a pair merges in the order of the
    score of the piece it makes (tokenizers' SentencePieceExtractor), spaces as ``▁``, unknown
    bytes as ``<0xNN>`` pieces (Gemma, Llama 2)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        if kind != 1 or len(piece) < 2:  # only normal pieces are made by merging
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = next((t for t, k in zip(tokens, types, strict=True) if k == 2), None)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges],
                               unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return tok


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Only the tokenizer of a checkpoint (a GGUF file or a Hugging Face folder): for chunking
    and counting tokens without loading weights or torch."""
    path = Path(path)
    if path.is_dir():
        cfg = json.loads((path / "config.json").read_text())
        tok_cfg_file = path / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_file.read_text()) if tok_cfg_file.is_file() else {}
        template = path / "chat_template.jinja"
        if "chat_template" not in tok_cfg and template.is_file():
            tok_cfg["chat_template"] = template.read_text()
        eos = cfg.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        return TextTokenizer.from_hf_files(str(path / "tokenizer.json"), tok_cfg, eos_ids,
                                           cfg.get("bos_token_id"))
    from .gguf_file import read_gguf

    return TextTokenizer.from_gguf_fields(read_gguf(path)[0])
