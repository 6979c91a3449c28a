"""llmq's GGUF reader gives what the ``gguf`` package's reader gives, field for field and
byte for byte, on the real SmolLM2 file (Q4_1, Q8_0 and F32 tensors) and on a file written
by ``gguf``'s own writer; a file that is not GGUF, is cut short or holds an unknown type code
is refused by name."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from llmq.engine.model.gguf_file import read_gguf
from llmq.variants.registry import builtin_model_path


def reference(path: Path) -> tuple[dict, GGUFReader]:
    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return fields, reader


def assert_same_as_gguf(path: Path, nested: tuple[str, ...] = ()) -> None:
    """``nested``: array-of-array fields, which ``gguf``'s reader flattens."""
    fields, tensors = read_gguf(path)
    expected, reader = reference(path)
    for key in nested:
        assert [x for inner in fields.pop(key) for x in inner] == expected.pop(key)
    assert fields == expected
    assert [t.name for t in tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(tensors, reader.tensors, strict=True):
        assert ours.tensor_type == theirs.tensor_type, ours.name
        assert ours.dims == tuple(theirs.shape.tolist()), ours.name
        assert ours.data.dtype == theirs.data.dtype and np.array_equal(ours.data, theirs.data)


def test_the_real_model_reads_as_gguf_reads_it() -> None:
    path = builtin_model_path("smollm2-135m")
    assert_same_as_gguf(path)
    fields, tensors = read_gguf(path)
    assert len(fields["tokenizer.ggml.tokens"]) == 49152
    assert {t.tensor_type.name for t in tensors} >= {"Q4_1", "F32"}


def test_every_value_type_and_an_alignment(tmp_path: Path) -> None:
    path = tmp_path / "all.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60_000)
    writer.add_int16("t.i16", -30_000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -7)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 2**40)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.strs", ["a", "", "ü"])
    writer.add_array("t.nested", [[1, 2], [3]])
    writer.add_custom_alignment(64)
    writer.add_tensor("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    writer.add_tensor("h", np.ones(5, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_same_as_gguf(path, nested=("t.nested",))
    fields, tensors = read_gguf(path)
    assert fields["t.nested"] == [[1, 2], [3]] and fields["t.str"] == "héllo"
    assert np.array_equal(tensors[0].data, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_not_gguf_or_cut_short_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "model.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(other)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.gguf: not a GGUF file"):
        read_gguf(tmp_path / "empty.gguf")
    whole = builtin_model_path("smollm2-135m").read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in (200_000, len(whole) - 1000):  # in the tokenizer's fields; in the last tensor
        cut.write_bytes(whole[:size])
        with pytest.raises(ValueError, match="cut.gguf: truncated"):
            read_gguf(cut)


def test_an_unknown_type_code_names_the_file(tmp_path: Path) -> None:
    whole = bytearray(builtin_model_path("smollm2-135m").read_bytes()[:4096])
    key_length = struct.unpack_from("<Q", whole, 24)[0]  # after magic, version and counts
    struct.pack_into("<I", whole, 32 + key_length, 99)  # the first field's value type
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(bytes(whole))
    with pytest.raises(ValueError, match="damaged.gguf: unknown GGUFValueType 99"):
        read_gguf(damaged)
