"""What a pruned output head must keep (``TextTokenizer.base_token_ids``), for both kinds of
vocabulary llmq reads: SentencePiece with byte fallback spells any text with its 256 byte
pieces, a byte-level BPE with its 256 one-character tokens."""

from __future__ import annotations

from llmq.engine.model.tokenizer import TextTokenizer
from tests.engine.tiny import smollm2_tokenizer

_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6  # llama.cpp's token types


def sentencepiece_fields() -> dict:
    """A SentencePiece vocabulary as llama.cpp writes Gemma's: control tokens, byte pieces,
    one-character pieces of scripts the text below never uses, and merges."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<unused0>"]
    types = [_CONTROL, _CONTROL, _CONTROL, _UNKNOWN, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = ["▁", "a", "b", "c", "é", "ж", "語", "ab", "▁ab", "abc"]
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.scores": [0.0] * (len(tokens) - len(pieces))
            + [-float(i) for i in range(len(pieces))],
            "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1}


def test_a_sentencepiece_vocabulary_keeps_its_byte_pieces_and_end_tokens() -> None:
    tok = TextTokenizer.from_gguf_fields(sentencepiece_fields())
    kept = tok.base_token_ids()
    assert kept == sorted({1, 2, *range(5, 5 + 256)})
    # the pieces kept spell any text, in scripts the vocabulary has no piece for too
    text = "x ab ж ☃"
    spelled = [5 + b for b in text.encode()]
    assert set(spelled) <= set(kept)
    assert tok.decode(spelled) == text
    assert tok.decode(tok.encode(text)) == text


def test_a_byte_level_vocabulary_keeps_its_one_character_tokens_and_end_tokens() -> None:
    tok = smollm2_tokenizer()
    kept = tok.base_token_ids()
    ends = {*tok.eos_token_ids, tok.bos_token_id}
    characters = [i for i in kept if i not in ends]
    assert ends <= set(kept) and len(characters) > 200
    assert all(len(tok.token_text(i) or "") == 1 for i in characters)
    # and no other special token: those stay where calibration needs them
    assert len(kept) == len(characters) + len(ends)
