"""What this CPU is, in the words a benchmark table or a warning needs: its model and the
flags that decide which kernels are fast. Torch-free (benchmark parents import it)."""

from __future__ import annotations

from pathlib import Path

# the last two tell CPU generations apart that share all the others, and whose speeds differ
# (avx512_fp16: Intel's Sapphire Rapids on; avx512_vp2intersect: AMD's full-width AVX-512)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8", "amx_tile", "avx512_fp16", "avx512_vp2intersect")


def cpu_description() -> str:
    model, flags = "unknown CPU", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f in SIMD_FLAGS]
                break
    except OSError:
        pass
    return f"{model} ({' '.join(flags) or 'no AVX'})"
