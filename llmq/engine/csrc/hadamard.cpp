// Every 64 consecutive floats of a row times the 64 x 64 Sylvester Hadamard matrix / 8: the
// rotation llmq's rotated int8 layers apply to their input before quantizing it per token
// (llmq/engine/rotation.py). As a matmul that is 64 multiply-adds per float; as the fast
// Walsh-Hadamard transform it is 6 butterfly stages on registers: the stages 32 and 16 (8 on
// AVX2) between registers, the rest inside each register with one permute and one
// multiply-add (the partner's value plus or minus one's own). Rows are split over threads.
// The second entry point also quantizes each rotated row to int8, as quantize_rows in
// int8_kernels.py does (scale = max |x| / 127, round half to even), so that the rotated floats
// never go to memory.

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
#endif

constexpr int N = BLOCK / W;  // registers per block

void one_block(const float* x, float* out, const V* signs) {
    V r[N];
    for (int i = 0; i < N; ++i) r[i] = load(x + i * W);
    for (int h = N / 2; h >= 1; h /= 2)  // between registers: stride h registers
        for (int i = 0; i < N; i += 2 * h)
            for (int j = i; j < i + h; ++j) {
                const V a = r[j], b = r[j + h];
                r[j] = add(a, b);
                r[j + h] = sub(a, b);
            }
    for (int s = 0, h = W / 2; h >= 1; ++s, h /= 2)  // inside registers: stride h lanes
        for (int i = 0; i < N; ++i) r[i] = butterfly(r[i], signs[s], h);
    for (int i = 0; i < N; ++i) store(out + i * W, scale(r[i], 0.125f));
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

}
