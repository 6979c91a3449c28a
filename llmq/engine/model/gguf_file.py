"""A GGUF file's metadata and tensors, read in one pass over a memory map.

The ``gguf`` package's ``GGUFReader`` builds a numpy view for every item of every array
field, so a vocabulary of tens of thousands of tokens and merges took it most of a model's
load, paid by every `llmq model import`, by every pipeline driver that reads the tokenizer
and by a worker's first start. This reader decodes the same fields with
``struct`` and ``numpy.frombuffer`` in a fraction of that; the format's constants and the
dequantization of tensor data still come from ``gguf``. Only little-endian files (what
llama.cpp writes) are read."""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape

MAGIC = b"GGUF"
_Code = TypeVar("_Code", bound=IntEnum)
DEFAULT_ALIGNMENT = 32
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_PLAIN_TENSORS = {  # stored as plain numbers rather than quantized blocks
    GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    dims: tuple[int, ...]  # innermost first, as GGUF lists them
    data: np.ndarray  # read-only view of the file: numbers, or uint8 rows of blocks


class _Cursor:
    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer, self.path, self.pos = buffer, path, 0

    def scalar(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        except struct.error:
            raise ValueError(f"{self.path}: truncated GGUF file (at byte {self.pos})") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.scalar("<Q")
        end = self.pos + size
        if end > len(self.buffer):
            raise ValueError(f"{self.path}: truncated GGUF file (at byte {self.pos})")
        text = self.buffer[self.pos:end].decode("utf-8")
        self.pos = end
        return text

    def enum(self, kind: type[_Code]) -> _Code:
        """The next uint32 as a member of ``kind``; a damaged file's unknown code names it."""
        code = self.scalar("<I")
        try:
            return kind(code)
        except ValueError:
            raise ValueError(f"{self.path}: unknown {kind.__name__} {code} (before byte "
                             f"{self.pos})") from None

    def value(self, kind: GGUFValueType) -> Any:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind != GGUFValueType.ARRAY:
            return self.scalar(_SCALAR_FORMATS[kind])
        item, count = self.enum(GGUFValueType), self.scalar("<Q")
        if item == GGUFValueType.STRING:
            return [self.string() for _ in range(count)]
        if item == GGUFValueType.ARRAY:
            return [self.value(GGUFValueType.ARRAY) for _ in range(count)]
        values = np.frombuffer(self.buffer, np.dtype(_SCALAR_FORMATS[item]), count, self.pos)
        self.pos += values.nbytes
        return values.tolist()


# rope factors llama.cpp stores as tensors (Phi-3's longrope, Llama 3's rope_freqs), by the
# config field each stands for: read into the config, not the weights
ROPE_FACTOR_TENSORS = {"rope_factors_short.weight": "short_factor",
                       "rope_factors_long.weight": "long_factor",
                       "rope_freqs.weight": "frequency_factors"}


def rope_factor_tensors(tensors: list[GGUFTensor]) -> dict[str, list[float]]:
    """The rope factors among ``tensors``, by config field (ROPE_FACTOR_TENSORS)."""
    return {ROPE_FACTOR_TENSORS[t.name]: np.asarray(t.data, dtype=np.float64).tolist()
            for t in tensors if t.name in ROPE_FACTOR_TENSORS}


def read_gguf(path: str | Path) -> tuple[dict[str, Any], list[GGUFTensor]]:
    """The file's key/value fields (as Python values, arrays as lists) and its tensors."""
    path = Path(path)
    with path.open("rb") as f:
        if path.stat().st_size < len(MAGIC):
            raise ValueError(f"{path}: not a GGUF file")
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buffer[:4] != MAGIC:
        raise ValueError(f"{path}: not a GGUF file")
    cursor = _Cursor(buffer, path)
    cursor.pos = 4
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} (big-endian or unknown) unsupported")
    tensor_count, field_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    fields: dict[str, Any] = {}
    for _ in range(field_count):
        key = cursor.string()
        fields[key] = cursor.value(cursor.enum(GGUFValueType))
    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
        infos.append((name, cursor.enum(GGMLQuantizationType), dims, cursor.scalar("<Q")))
    alignment = int(fields.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-cursor.pos // alignment) * alignment
    return fields, [_tensor(cursor, start, *info) for info in infos]


def _tensor(cursor: _Cursor, start: int, name: str, kind: GGMLQuantizationType,
            dims: tuple[int, ...], offset: int) -> GGUFTensor:
    shape = tuple(reversed(dims))
    elements = int(np.prod(dims))
    if kind in _PLAIN_TENSORS:
        dtype, count = np.dtype(_PLAIN_TENSORS[kind]), elements
    else:
        block, block_bytes = GGML_QUANT_SIZES[kind]
        dtype, count = np.dtype(np.uint8), elements * block_bytes // block
        shape = quant_shape_to_byte_shape(shape, kind)
    if start + offset + count * dtype.itemsize > len(cursor.buffer):
        raise ValueError(f"{cursor.path}: truncated GGUF file (tensor {name})")
    data = np.frombuffer(cursor.buffer, dtype, count, start + offset)
    return GGUFTensor(name, kind, dims, data.reshape(shape))
