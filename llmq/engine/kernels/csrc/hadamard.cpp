// Every 64 consecutive floats of a row times the 64 x 64 Sylvester Hadamard matrix / 8: the
// rotation llmq's rotated int8 layers apply to their input before quantizing it per token
// (llmq/engine/kernels/rotated.py). As a matmul that is 64 multiply-adds per float; as the fast
// Walsh-Hadamard transform it is 6 butterfly stages on registers: the stages 32 and 16 (8 on
// AVX2) between registers, the rest inside each register with one permute and one
// multiply-add (the partner's value plus or minus one's own). Rows are split over threads.
// The second entry point also quantizes each rotated row to int8, as quantize_rows in
// int8.py does (scale = max |x| / 127, round half to even), so that the rotated floats
// never go to memory. Two more fuse the rotation into the producers of a rotated layer's
// input (llmq/engine/kernels/rotated.py, rotated_qkv and rotated_ffn): RMSNorm, and
// SwiGLU over the int32 outputs of the gate and up GEMMs, so that a decoder layer makes three
// calls instead of four and its inputs go from the producer's operands to int8 in one pass.
// Both leave the 1/8 of the transform out of the floats and put it into the row's scale
// (quantization per row does not see a common factor).

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int BLOCK = 64;

#if defined(__AVX512F__)
using V = __m512;
constexpr int W = 16;
inline V load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V scale(V a, float s) { return _mm512_mul_ps(a, _mm512_set1_ps(s)); }
// lanes whose index has bit h clear get +1, the others -1: x * sign + partner
inline V sign(int h) {
    alignas(64) float s[W];
    for (int l = 0; l < W; ++l) s[l] = (l & h) ? -1.f : 1.f;
    return _mm512_load_ps(s);
}
inline V partner(V a, int h) {
    switch (h) {
        case 8: return _mm512_shuffle_f32x4(a, a, 0x4e);
        case 4: return _mm512_shuffle_f32x4(a, a, 0xb1);
        case 2: return _mm512_permute_ps(a, 0x4e);
        default: return _mm512_permute_ps(a, 0xb1);
    }
}
inline V butterfly(V a, V s, int h) { return _mm512_fmadd_ps(a, s, partner(a, h)); }
inline V splat(float x) { return _mm512_set1_ps(x); }
inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V div(V a, V b) { return _mm512_div_ps(a, b); }
inline V load_i32(const int32_t* p) { return _mm512_cvtepi32_ps(_mm512_loadu_si512(p)); }
inline float sum(V a) { return _mm512_reduce_add_ps(a); }
inline V neg_abs(V a) { return _mm512_or_ps(a, _mm512_set1_ps(-0.f)); }
inline V floor(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline V pow2(V n) {  // 2^n for whole n in [-126, 127]
    const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23));
}
inline V max(V a, V b) { return _mm512_max_ps(a, b); }
inline V zero_below(V x, float limit, V r) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, splat(limit), _CMP_GE_OQ), r);
}
inline V where_nonnegative(V x, V a, V b) {  // a where x >= 0, else b
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ), b, a);
}
#elif defined(__AVX2__) && defined(__FMA__)
using V = __m256;
constexpr int W = 8;
inline V load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, V a) { _mm256_storeu_ps(p, a); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V scale(V a, float s) { return _mm256_mul_ps(a, _mm256_set1_ps(s)); }
inline V sign(int h) {
    alignas(32) float s[W];
    for (int l = 0; l < W; ++l) s[l] = (l & h) ? -1.f : 1.f;
    return _mm256_load_ps(s);
}
inline V partner(V a, int h) {
    switch (h) {
        case 4: return _mm256_permute2f128_ps(a, a, 0x01);
        case 2: return _mm256_permute_ps(a, 0x4e);
        default: return _mm256_permute_ps(a, 0xb1);
    }
}
inline V butterfly(V a, V s, int h) { return _mm256_fmadd_ps(a, s, partner(a, h)); }
inline V splat(float x) { return _mm256_set1_ps(x); }
inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V div(V a, V b) { return _mm256_div_ps(a, b); }
inline V load_i32(const int32_t* p) {
    return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline V neg_abs(V a) { return _mm256_or_ps(a, _mm256_set1_ps(-0.f)); }
inline V floor(V a) { return _mm256_floor_ps(a); }
inline V pow2(V n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
}
inline V max(V a, V b) { return _mm256_max_ps(a, b); }
inline V zero_below(V x, float limit, V r) {
    return _mm256_and_ps(r, _mm256_cmp_ps(x, splat(limit), _CMP_GE_OQ));
}
inline V where_nonnegative(V x, V a, V b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
}
#else
using V = float;
constexpr int W = 1;
inline V load(const float* p) { return *p; }
inline void store(float* p, V a) { *p = a; }
inline V add(V a, V b) { return a + b; }
inline V sub(V a, V b) { return a - b; }
inline V scale(V a, float s) { return a * s; }
inline V sign(int) { return 1.f; }
inline V butterfly(V a, V, int) { return a; }  // never called: no stage inside a register
inline V splat(float x) { return x; }
inline V mul(V a, V b) { return a * b; }
inline V fma(V a, V b, V c) { return a * b + c; }
inline V div(V a, V b) { return a / b; }
inline V load_i32(const int32_t* p) { return static_cast<float>(*p); }
inline float sum(V a) { return a; }
inline V neg_abs(V a) { return -std::fabs(a); }
inline V floor(V a) { return std::floor(a); }
inline V pow2(V n) { return std::ldexp(1.f, static_cast<int>(n)); }
inline V max(V a, V b) { return a > b ? a : b; }
inline V zero_below(V x, float limit, V r) { return x < limit ? 0.f : r; }
inline V where_nonnegative(V x, V a, V b) { return x >= 0.f ? a : b; }
#endif

#include "vector_exp.h"  // exp_nonpositive, as the attention kernel's softmax takes it

// g * sigmoid(g) with e = exp(-|g|) <= 1, so nothing overflows: 1 / (1 + e) for g >= 0,
// e / (1 + e) below
inline V silu(V g) {
    const V e = exp_nonpositive(neg_abs(g));
    return div(mul(g, where_nonnegative(g, splat(1.f), e)), add(splat(1.f), e));
}

constexpr int N = BLOCK / W;  // registers per block

// the unscaled transform (times 8) of a block held in registers
inline void transform(V* r, const V* signs) {
    for (int h = N / 2; h >= 1; h /= 2)  // between registers: stride h registers
        for (int i = 0; i < N; i += 2 * h)
            for (int j = i; j < i + h; ++j) {
                const V a = r[j], b = r[j + h];
                r[j] = add(a, b);
                r[j + h] = sub(a, b);
            }
    for (int s = 0, h = W / 2; h >= 1; ++s, h /= 2)  // inside registers: stride h lanes
        for (int i = 0; i < N; ++i) r[i] = butterfly(r[i], signs[s], h);
}

void one_block(const float* x, float* out, const V* signs) {
    V r[N];
    for (int i = 0; i < N; ++i) r[i] = load(x + i * W);
    transform(r, signs);
    for (int i = 0; i < N; ++i) store(out + i * W, scale(r[i], 0.125f));
}

// RMSNorm of one row times the norm's weight, rotated (times 8) into ``rotated``
void rms_norm_row(const float* x, const float* weight, float eps, int64_t cols, float* rotated,
                  const V* signs) {
    V squares = splat(0.f);
    for (int64_t c = 0; c < cols; c += W) squares = fma(load(x + c), load(x + c), squares);
    const V inv = splat(1.f / std::sqrt(sum(squares) / static_cast<float>(cols) + eps));
    for (int64_t c = 0; c < cols; c += BLOCK) {
        V r[N];
        for (int i = 0; i < N; ++i)
            r[i] = mul(mul(load(x + c + i * W), inv), load(weight + c + i * W));
        transform(r, signs);
        for (int i = 0; i < N; ++i) store(rotated + c + i * W, r[i]);
    }
}

// silu(gate) * up of one row from the int32 GEMM outputs and their scales (per column times
// the row's), rotated (times 8) into ``rotated``
void swiglu_row(const int32_t* gate, const int32_t* up, const float* gate_scale,
                const float* up_scale, float row_scale, int64_t cols, float* rotated,
                const V* signs) {
    const V rs = splat(row_scale);
    for (int64_t c = 0; c < cols; c += BLOCK) {
        V r[N];
        for (int i = 0; i < N; ++i) {
            const int64_t j = c + i * W;
            const V g = mul(mul(load_i32(gate + j), load(gate_scale + j)), rs);
            const V u = mul(mul(load_i32(up + j), load(up_scale + j)), rs);
            r[i] = mul(silu(g), u);
        }
        transform(r, signs);
        for (int i = 0; i < N; ++i) store(rotated + c + i * W, r[i]);
    }
}

// per-row symmetric int8 of n floats (a multiple of 64): q = round(x / scale) to nearest even,
// scale = max(|x|, 1e-12) / 127; x * (127 / max) stands for the division
void quantize_row(const float* x, int64_t n, int8_t* q, float* scale) {
    float top = 1e-12f;
    int64_t i = 0;
#if defined(__AVX512F__)
    __m512 tops = _mm512_set1_ps(top);
    for (; i < n; i += 16) tops = _mm512_max_ps(tops, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    top = _mm512_reduce_max_ps(tops);
#endif
    for (; i < n; ++i) top = std::fabs(x[i]) > top ? std::fabs(x[i]) : top;
    const float inv = 127.f / top;
    i = 0;
#if defined(__AVX512F__)
    const __m512 invs = _mm512_set1_ps(inv);
    for (; i < n; i += 16) {
        const __m512i codes = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), invs));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(codes));
    }
#endif
    for (; i < n; ++i) q[i] = static_cast<int8_t>(std::nearbyint(x[i] * inv));
    *scale = top / 127.f;
}

}  // namespace

extern "C" {

// x and out [rows, cols] float32 with row strides in elements (out may be x); cols a multiple
// of 64. Returns 0, or 1 for other widths.
int llmq_hadamard64(const float* x, float* out, int64_t rows, int64_t cols, int64_t x_stride,
                    int64_t out_stride, int threads) {
    if (cols % BLOCK) return 1;
    V signs[4];
    for (int s = 0, h = W / 2; h >= 1; ++s, h /= 2) signs[s] = sign(h);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; ++row)
        for (int64_t c = 0; c < cols; c += BLOCK)
            one_block(x + row * x_stride + c, out + row * out_stride + c, signs);
    return 0;
}

// x [rows, cols] float32 (row stride in elements), cols a multiple of 64; q [rows, cols]
// int8 and scale [rows] float32, contiguous. Returns 0, or 1 for other widths.
int llmq_hadamard64_quantize(const float* x, int8_t* q, float* scale, int64_t rows,
                             int64_t cols, int64_t x_stride, int threads) {
    if (cols % BLOCK) return 1;
    V signs[4];
    for (int s = 0, h = W / 2; h >= 1; ++s, h /= 2) signs[s] = sign(h);
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> rotated(cols);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            for (int64_t c = 0; c < cols; c += BLOCK)
                one_block(x + row * x_stride + c, rotated.data() + c, signs);
            quantize_row(rotated.data(), cols, q + row * cols, scale + row);
        }
    }
    return 0;
}

// quantize_rows(hadamard(rms_norm(x) * weight)) in one pass: x [rows, cols] float32 (row
// stride in elements), weight [cols]; q [rows, cols] int8 and scale [rows], contiguous.
// Returns 0, or 1 for widths that are not a multiple of 64.
int llmq_rms_norm_hadamard64_quantize(const float* x, const float* weight, float eps, int8_t* q,
                                      float* scale, int64_t rows, int64_t cols,
                                      int64_t x_stride, int threads) {
    if (cols % BLOCK) return 1;
    V signs[4];
    for (int s = 0, h = W / 2; h >= 1; ++s, h /= 2) signs[s] = sign(h);
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> rotated(cols);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            rms_norm_row(x + row * x_stride, weight, eps, cols, rotated.data(), signs);
            quantize_row(rotated.data(), cols, q + row * cols, scale + row);
            scale[row] *= 0.125f;
        }
    }
    return 0;
}

// quantize_rows(hadamard(silu(g) * u)) in one pass, g and u the dequantized int32 products
// gate [rows, cols] * gate_scale [cols] * row_scale [rows] (the same for up), all contiguous;
// q [rows, cols] int8 and scale [rows]. Returns 0, or 1 for widths that are not a multiple
// of 64.
int llmq_swiglu_hadamard64_quantize(const int32_t* gate, const int32_t* up,
                                    const float* gate_scale, const float* up_scale,
                                    const float* row_scale, int8_t* q, float* scale,
                                    int64_t rows, int64_t cols, int threads) {
    if (cols % BLOCK) return 1;
    V signs[4];
    for (int s = 0, h = W / 2; h >= 1; ++s, h /= 2) signs[s] = sign(h);
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> rotated(cols);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            swiglu_row(gate + row * cols, up + row * cols, gate_scale, up_scale, row_scale[row],
                       cols, rotated.data(), signs);
            quantize_row(rotated.data(), cols, q + row * cols, scale + row);
            scale[row] *= 0.125f;
        }
    }
    return 0;
}

}
