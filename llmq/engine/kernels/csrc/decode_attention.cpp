// Attention over llmq's KV cache, one query position per row: a decode row, or a prompt row
// that sees its slot up to its own position.
//
// Every (row, KV head) pair is one task: its G query rows (the query heads that share the
// KV head) are scored against the slot's own cached keys only (per-row lengths, not the
// longest slot's), softmaxed, and summed over its values. Keys and values are read once, in
// the cache's storage (float32, float16 or bfloat16), converted to float32 as they are read,
// and every sum is in float32. Scores are taken W keys at a time (one vector of them per
// query row, lane_sums) and exponentiated W at a time: one horizontal sum and one scalar exp
// per key took a third of a prompt row's time. Prompt rows, consecutive positions of one
// slot, go W at a time instead (tile_task), sharing every key and value they read. Compiled
// at run time with -march=native (llmq/engine/kernels/native.py) for one model's head dimension and
// group size (-DLLMQ_HEAD_DIM, -DLLMQ_GROUP): AVX-512 where the CPU has it, else AVX2 with
// F16C and FMA, else plain C++.

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

#if defined(__AVX512F__)
using V = __m512;
constexpr int W = 16;
inline V load_f32(const float* p) { return _mm512_loadu_ps(p); }
inline V load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline V load_i8(const int8_t* p) {
    const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
}
inline V load_bf16(const uint16_t* p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline V zero() { return _mm512_setzero_ps(); }
inline V splat(float x) { return _mm512_set1_ps(x); }
inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline float sum(V a) { return _mm512_reduce_add_ps(a); }
inline void store(float* p, V a) { _mm512_storeu_ps(p, a); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V max(V a, V b) { return _mm512_max_ps(a, b); }
inline float max_lane(V a) { return _mm512_reduce_max_ps(a); }
inline V floor(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline V pow2(V n) {  // 2^n for whole n in [-126, 127]
    const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23));
}
inline V zero_below(V x, float limit, V r) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, splat(limit), _CMP_GE_OQ), r);
}
// out[j] = the sum of a[j]'s lanes, for W vectors: a transposing tree of 45 shuffles and adds
// where W horizontal sums would take about three times as many
inline V lane_sums(const V* a) {
    V pairs[8], quads[4];
    for (int j = 0; j < 8; ++j)  // per 128 bits: [a0+a2, b0+b2, a1+a3, b1+b3]
        pairs[j] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * j], a[2 * j + 1]),
                                 _mm512_unpackhi_ps(a[2 * j], a[2 * j + 1]));
    for (int j = 0; j < 4; ++j)  // per 128 bits: that lane's sums of four vectors, in order
        quads[j] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * j], pairs[2 * j + 1], 0x44),
                                 _mm512_shuffle_ps(pairs[2 * j], pairs[2 * j + 1], 0xee));
    const V ab = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88),
                               _mm512_shuffle_f32x4(quads[0], quads[1], 0xdd));
    const V cd = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88),
                               _mm512_shuffle_f32x4(quads[2], quads[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
}
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
using V = __m256;
constexpr int W = 8;
inline V load_f32(const float* p) { return _mm256_loadu_ps(p); }
inline V load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline V load_i8(const int8_t* p) {
    const __m128i codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(codes));
}
inline V load_bf16(const uint16_t* p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline V zero() { return _mm256_setzero_ps(); }
inline V splat(float x) { return _mm256_set1_ps(x); }
inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline float sum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
inline void store(float* p, V a) { _mm256_storeu_ps(p, a); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V max(V a, V b) { return _mm256_max_ps(a, b); }
inline float max_lane(V a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
inline V floor(V a) { return _mm256_floor_ps(a); }
inline V pow2(V n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
}
inline V zero_below(V x, float limit, V r) {
    return _mm256_and_ps(r, _mm256_cmp_ps(x, splat(limit), _CMP_GE_OQ));
}
inline V lane_sums(const V* a) {  // as the AVX-512 one, for 8 vectors
    V pairs[4], quads[2];
    for (int j = 0; j < 4; ++j)
        pairs[j] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * j], a[2 * j + 1]),
                                 _mm256_unpackhi_ps(a[2 * j], a[2 * j + 1]));
    for (int j = 0; j < 2; ++j)
        quads[j] = _mm256_add_ps(_mm256_shuffle_ps(pairs[2 * j], pairs[2 * j + 1], 0x44),
                                 _mm256_shuffle_ps(pairs[2 * j], pairs[2 * j + 1], 0xee));
    return _mm256_add_ps(_mm256_permute2f128_ps(quads[0], quads[1], 0x20),
                         _mm256_permute2f128_ps(quads[0], quads[1], 0x31));
}
#else
using V = float;
constexpr int W = 1;
inline V load_f32(const float* p) { return *p; }
inline V load_f16(const uint16_t* p) {
    const uint32_t h = *p, sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        float f = std::ldexp(static_cast<float>(man), -24);
        return sign ? -f : f;
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline V load_i8(const int8_t* p) { return static_cast<float>(*p); }
inline V load_bf16(const uint16_t* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline V zero() { return 0.f; }
inline V splat(float x) { return x; }
inline V fma(V a, V b, V c) { return a * b + c; }
inline float sum(V a) { return a; }
inline void store(float* p, V a) { *p = a; }
inline V add(V a, V b) { return a + b; }
inline V sub(V a, V b) { return a - b; }
inline V mul(V a, V b) { return a * b; }
inline V max(V a, V b) { return a > b ? a : b; }
inline float max_lane(V a) { return a; }
inline V floor(V a) { return std::floor(a); }
inline V pow2(V n) {
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline V zero_below(V x, float limit, V r) { return x < limit ? 0.f : r; }
inline V lane_sums(const V* a) { return a[0]; }
#endif

// float32 to the cache's storage exactly as PyTorch's to_cache (kv_cache.py) does it: float16
// saturates at +-65504 and, like bfloat16, rounds to nearest even; NaN stays NaN.
inline uint32_t bits_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
inline float float_of(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline uint16_t half_of(float f) {  // round to nearest even, as F16C's conversion
    uint32_t u = bits_of(f);
    const uint32_t sign = u & 0x80000000u;
    u ^= sign;
    uint32_t h;
    if (u >= (127u + 16u) << 23) {  // past float16's range: inf, or NaN
        h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (u < 113u << 23) {  // a float16 subnormal: the addition rounds it
        const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
        h = bits_of(float_of(u) + float_of(magic)) - magic;
    } else {
        const uint32_t odd = (u >> 13) & 1u;
        h = (u + ((15u - 127u) << 23) + 0xfffu + odd) >> 13;
    }
    return static_cast<uint16_t>(h | (sign >> 16));
}
inline uint16_t bfloat_of(float f) {  // round to nearest even, as c10::BFloat16
    const uint32_t u = bits_of(f);
    if (f != f) return 0x7fc0;
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
constexpr float HALF_MAX = 65504.f;
inline float saturated(float x) {  // NaN passes: max and min return it
    return x != x ? x : (x < -HALF_MAX ? -HALF_MAX : (x > HALF_MAX ? HALF_MAX : x));
}

// A cache dtype: its element T, how W of them load as float32 and how a row is written. A
// row of the cache is E elements, and for int8 also its float32 scale (EXTRA bytes after the
// codes: one scale per position and head, what kv_cache.to_cache writes); scale() is the factor
// every element of a row is multiplied by as it is read.
struct F32 {
    using T = float;
    static constexpr int EXTRA = 0;
    static float scale(const T*, int) { return 1.f; }
    static V load(const T* p) { return load_f32(p); }
    static void put(const float* src, T* dst, int n) { std::memcpy(dst, src, n * sizeof(T)); }
};
struct F16 {
    using T = uint16_t;
    static constexpr int EXTRA = 0;
    static float scale(const T*, int) { return 1.f; }
    static V load(const T* p) { return load_f16(p); }
    static void put(const float* src, T* dst, int n) {
        for (int i = 0; i < n; ++i) dst[i] = half_of(saturated(src[i]));
    }
};
struct BF16 {
    using T = uint16_t;
    static constexpr int EXTRA = 0;
    static float scale(const T*, int) { return 1.f; }
    static V load(const T* p) { return load_bf16(p); }
    static void put(const float* src, T* dst, int n) {
        for (int i = 0; i < n; ++i) dst[i] = bfloat_of(src[i]);
    }
};
// int8 codes of x / s, s = max |x| / 127 over the row (1 / 127 for a row of zeros), rounded
// to nearest even, as kv_cache.to_cache quantizes them
struct I8 {
    using T = int8_t;
    static constexpr int EXTRA = sizeof(float);
    static float scale(const T* row, int n) {
        float s;
        std::memcpy(&s, row + n, sizeof s);
        return s;
    }
    static V load(const T* p) { return load_i8(p); }
    static void put(const float* src, T* dst, int n) {
        float top = 0.f;
        for (int i = 0; i < n; ++i) top = std::fmax(top, std::fabs(src[i]));
        const float s = (top > 0.f ? top : 1.f) / 127.f;
        for (int i = 0; i < n; ++i) {
            const float c = std::nearbyint(src[i] / s);
            dst[i] = static_cast<int8_t>(c < -127.f ? -127.f : (c > 127.f ? 127.f : c));
        }
        std::memcpy(dst + n, &s, sizeof s);
    }
};

// Elements of one cached row (a position of a head): E, and for int8 the scale's bytes
template <class C, int E>
constexpr int64_t ROW = E + C::EXTRA / static_cast<int>(sizeof(typename C::T));

// W elements of a row as float32, times the row's scale s where the dtype has one
template <class C>
inline V load_scaled(const typename C::T* p, V s) {
    if constexpr (C::EXTRA > 0) return mul(C::load(p), s);
    return C::load(p);
}

// exp(x) for x <= 0 (-inf, the padding of a row of scores, gives 0)
#include "vector_exp.h"

// Rows of scores are whole vectors: the padding past length scores -inf, which weighs 0.
inline int64_t padded(int64_t length) { return (length + W - 1) / W * W; }

// Decode reads a sequence's keys and values from memory, not cache (the whole cache of a
// layer is larger than L3): requests issued ahead of use keep more reads in flight than the
// hardware prefetcher does while the cores compute. Prefetches never fault, so running past
// the slot's end is harmless.
constexpr int64_t PREFETCH_AHEAD = 4 * W;  // keys
template <class T>
inline void prefetch_rows(const T* p, int64_t count) {
    const char* bytes = reinterpret_cast<const char*>(p);
    for (int64_t b = 0; b < count * static_cast<int64_t>(sizeof(T)); b += 64)
        __builtin_prefetch(bytes + b);
}

// Scores of G query rows against count consecutive cached keys: scores[g * stride + l]
template <class C, int E, int G>
inline void score_run(const V (&qv)[G][E / W], const typename C::T* keys,
                      const typename C::T* values, int64_t count, float* scores,
                      int64_t stride) {
    constexpr int N = E / W;
    // W keys at a time: their float32 copy, then per query row W dot products summed across
    // lanes together (lane_sums), so one store writes W scores
    constexpr int64_t RS = ROW<C, E>;
    alignas(64) float block[W * E];
    prefetch_rows(keys, PREFETCH_AHEAD * RS);
    int64_t l = 0;
    for (; W > 1 && l + W <= count; l += W) {
        prefetch_rows(keys + (l + PREFETCH_AHEAD) * RS, W * RS);
        prefetch_rows(values + l * RS, W * RS);  // read after the softmax: in cache by then
        const float* kb = block;
        if constexpr (std::is_same_v<C, F32>) {
            kb = keys + l * E;
        } else {
            for (int j = 0; j < W; ++j) {
                const typename C::T* row = keys + (l + j) * RS;
                const V s = splat(C::scale(row, E));
                for (int i = 0; i < N; ++i)
                    store(block + j * E + i * W, load_scaled<C>(row + i * W, s));
            }
        }
        for (int g = 0; g < G; ++g) {
            V acc[W];
            for (int j = 0; j < W; ++j) {
                V a = zero();
                for (int i = 0; i < N; ++i) a = fma(qv[g][i], load_f32(kb + j * E + i * W), a);
                acc[j] = a;
            }
            store(scores + g * stride + l, lane_sums(acc));
        }
    }
    for (; l < count; ++l) {
        const typename C::T* row = keys + l * RS;
        const V s = splat(C::scale(row, E));
        V k[N];
        for (int i = 0; i < N; ++i) k[i] = load_scaled<C>(row + i * W, s);
        for (int g = 0; g < G; ++g) {
            V acc = zero();
            for (int i = 0; i < N; ++i) acc = fma(qv[g][i], k[i], acc);
            scores[g * stride + l] = sum(acc);
        }
    }
}

// o[g] += the sum of count consecutive cached values, weighted by weights[g * stride + l]
template <class C, int E, int G>
inline void sum_run(const typename C::T* values, int64_t count, const float* weights,
                    int64_t stride, V (&o)[G][E / W]) {
    constexpr int N = E / W;
    constexpr int64_t RS = ROW<C, E>;
    for (int64_t l = 0; l < count; ++l) {
        const typename C::T* row = values + l * RS;
        const float s = C::scale(row, E);
        V v[N];
        for (int i = 0; i < N; ++i) v[i] = C::load(row + i * W);
        for (int g = 0; g < G; ++g) {
            const V p = splat(weights[g * stride + l] * s);
            for (int i = 0; i < N; ++i) o[g][i] = fma(p, v[i], o[g][i]);
        }
    }
}

// q [G, E] (scaled); keys/values [ring, E]: the row sees positions [first, first + length),
// position p at p % ring (length <= ring, so they are at most two runs of the ring); scores
// [G, padded(length)], out [G, E]
template <class C, int E, int G>
void one_task(const float* q, float q_scale, const typename C::T* keys,
              const typename C::T* values, int64_t first, int64_t length, int64_t ring,
              float* scores, float* out) {
    constexpr int N = E / W;
    constexpr int64_t RS = ROW<C, E>;
    const int64_t stride = padded(length);
    const int64_t start = first % ring;
    const int64_t head = length < ring - start ? length : ring - start;  // before the wrap
    V qv[G][N];
    for (int g = 0; g < G; ++g)
        for (int i = 0; i < N; ++i) qv[g][i] = mul(load_f32(q + g * E + i * W), splat(q_scale));
    score_run<C, E, G>(qv, keys + start * RS, values + start * RS, head, scores, stride);
    if (length > head) score_run<C, E, G>(qv, keys, values, length - head, scores + head, stride);
    for (int g = 0; g < G; ++g) {
        float* s = scores + g * stride;
        for (int64_t l = length; l < stride; ++l) s[l] = -INFINITY;
        V top = load_f32(s);
        for (int64_t l = W; l < stride; l += W) top = max(top, load_f32(s + l));
        const V shift = splat(max_lane(top));
        V total = zero();
        for (int64_t l = 0; l < stride; l += W) {
            const V e = exp_nonpositive(sub(load_f32(s + l), shift));
            store(s + l, e);
            total = add(total, e);
        }
        const V inv = splat(1.f / sum(total));
        for (int64_t l = 0; l < stride; l += W) store(s + l, mul(load_f32(s + l), inv));
    }
    V o[G][N];
    for (int g = 0; g < G; ++g)
        for (int i = 0; i < N; ++i) o[g][i] = zero();
    sum_run<C, E, G>(values + start * RS, head, scores, stride, o);
    if (length > head) sum_run<C, E, G>(values, length - head, scores + head, stride, o);
    for (int g = 0; g < G; ++g)
        for (int i = 0; i < N; ++i) store(out + g * E + i * W, o[g][i]);
}

// A tile of prompt rows: n <= W consecutive positions of one slot (row r sees the slot's
// first len0 + r positions, or with a window only the last window of them; position p at
// p % ring), so its n * G query rows share every key and value they read.
// Flash attention with the query rows across the lanes of MV = G vectors (row-major q is
// transposed once per tile into qt [E][W * G]): W keys' scores are sums of E products of a
// broadcast key element and a vector of query rows, with no horizontal sums; a running max
// and sum per query row rescale the output accumulators ot [E][W * G] once per W keys.
// One row at a time (one_task) converted and summed every key once per row, a slower way to
// attend prompt rows (bench/kernels.py).
template <class C, int E, int G>
void tile_task(const float* q, int64_t q_row_stride, float q_scale, const typename C::T* keys,
               const typename C::T* values, int64_t len0, int n, int64_t ring,
               int64_t window, float* out, int64_t out_row_stride, float* space) {
    constexpr int M = W * G;  // query rows of a full tile, G vectors of W
    constexpr int64_t RS = ROW<C, E>;
    constexpr int JB = W >= 16 ? 4 : W >= 2 ? 2 : 1;  // keys scored together (JB * G sums)
    constexpr int EB = W >= 16 ? 8 : W >= 2 ? 4 : 1;  // output elements summed together
    float* qt = space;  // 2 * E * M floats: up to 256 KB (E 256, G 8), not for the stack
    float* ot = space + E * M;
    alignas(64) float kf[W * E];
    alignas(64) float vf[W * E];
    alignas(64) float p[W * M];  // scores, then weights, of W keys: p[j * M + m]
    alignas(64) float limit[M];  // positions a query row sees: [lower, limit)
    alignas(64) float lower[M];
    for (int m = 0; m < M; ++m) {
        const int r = m / G;
        limit[m] = static_cast<float>(r < n ? len0 + r : len0);  // padding rows: as row 0
        lower[m] = window > 0 ? limit[m] - static_cast<float>(window) : 0.f;
        for (int e = 0; e < E; ++e)
            qt[e * M + m] = r < n ? q[r * q_row_stride + (m % G) * E + e] * q_scale : 0.f;
    }
    for (int i = 0; i < E * M; ++i) ot[i] = 0.f;
    V run_max[G], run_sum[G];
    for (int v = 0; v < G; ++v) {
        run_max[v] = splat(-INFINITY);
        run_sum[v] = zero();
    }
    const int64_t total = len0 + n - 1;  // keys the last row sees
    // from the first row's first position: each row then sees a key of the first block, so
    // no running max starts at -inf twice
    const int64_t from = window > 0 && len0 > window ? len0 - window : 0;
    for (int64_t l0 = from; l0 < total; l0 += W) {
        const int nb = static_cast<int>(total - l0 < W ? total - l0 : W);
        for (int j = 0; j < W; ++j) {
            const typename C::T* k_row = keys + ((l0 + j) % ring) * RS;
            const typename C::T* v_row = values + ((l0 + j) % ring) * RS;
            const V ks = splat(j < nb ? C::scale(k_row, E) : 0.f);
            const V vs = splat(j < nb ? C::scale(v_row, E) : 0.f);
            for (int i = 0; i < E / W; ++i) {
                store(kf + j * E + i * W, j < nb ? load_scaled<C>(k_row + i * W, ks) : zero());
                store(vf + j * E + i * W, j < nb ? load_scaled<C>(v_row + i * W, vs) : zero());
            }
        }
        for (int j = 0; j < W; j += JB) {
            V acc[JB][G];
            for (int b = 0; b < JB; ++b)
                for (int v = 0; v < G; ++v) acc[b][v] = zero();
            for (int e = 0; e < E; ++e) {
                V qv[G];
                for (int v = 0; v < G; ++v) qv[v] = load_f32(qt + e * M + v * W);
                for (int b = 0; b < JB; ++b) {
                    const V k = splat(kf[(j + b) * E + e]);
                    for (int v = 0; v < G; ++v) acc[b][v] = fma(k, qv[v], acc[b][v]);
                }
            }
            for (int b = 0; b < JB; ++b)
                for (int v = 0; v < G; ++v) store(p + (j + b) * M + v * W, acc[b][v]);
        }
        if (l0 + W > len0 || window > 0)  // some row's last (or first) key is in this block
            for (int j = 0; j < W; ++j) {
                const float at = static_cast<float>(l0 + j);
                for (int m = 0; m < M; ++m)
                    if (at >= limit[m] || at < lower[m]) p[j * M + m] = -INFINITY;
            }
        V scale[G];
        for (int v = 0; v < G; ++v) {
            V top = run_max[v];
            for (int j = 0; j < nb; ++j) top = max(top, load_f32(p + j * M + v * W));
            scale[v] = exp_nonpositive(sub(run_max[v], top));  // 0 on the first block
            run_max[v] = top;
            V block_sum = zero();
            for (int j = 0; j < W; ++j) {
                const V w = exp_nonpositive(sub(load_f32(p + j * M + v * W), top));
                store(p + j * M + v * W, w);
                block_sum = add(block_sum, w);
            }
            run_sum[v] = fma(run_sum[v], scale[v], block_sum);
        }
        for (int e = 0; e < E; e += EB) {
            V acc[EB][G];
            for (int b = 0; b < EB; ++b)
                for (int v = 0; v < G; ++v)
                    acc[b][v] = mul(load_f32(ot + (e + b) * M + v * W), scale[v]);
            for (int j = 0; j < nb; ++j) {
                V w[G];
                for (int v = 0; v < G; ++v) w[v] = load_f32(p + j * M + v * W);
                for (int b = 0; b < EB; ++b) {
                    const V x = splat(vf[j * E + e + b]);
                    for (int v = 0; v < G; ++v) acc[b][v] = fma(w[v], x, acc[b][v]);
                }
            }
            for (int b = 0; b < EB; ++b)
                for (int v = 0; v < G; ++v) store(ot + (e + b) * M + v * W, acc[b][v]);
        }
    }
    alignas(64) float inv[M];
    for (int v = 0; v < G; ++v) store(inv + v * W, run_sum[v]);
    for (int m = 0; m < n * G; ++m) {
        const float s = 1.f / inv[m];
        float* o = out + (m / G) * out_row_stride + (m % G) * E;
        for (int e = 0; e < E; ++e) o[e] = ot[e * M + m] * s;
    }
}

struct Call {
    const float* q;
    const void* k_cache;
    const void* v_cache;
    const int64_t* slots;
    const int64_t* lengths;
    float* out;
    int64_t rows;
    int K;
    int64_t slot_stride, head_stride;
    int threads;
    float q_scale;  // q's rows are multiplied by it as they are read
    int64_t ring;  // positions a slot keeps: position p at p % ring
    int64_t window;  // positions a row sees, its own included (0: all)
    // the step's own keys and values [rows * K, E] float32, written first to cache_rows [rows
    // * K] (rows of the layer's cache viewed as [S * K * L, R]); null when already written
    const float* k_new;
    const float* v_new;
    const int64_t* cache_rows;
};

// A task: one KV head of a tile of rows, [first, first + count) of the call's rows, where a
// tile is either one row (a decode row, or any row where W is 1) or up to W consecutive
// prompt rows of one slot (tile_task).
struct Task {
    int64_t first;
    int count;
    int head;
};

template <class C, int E, int G>
void run(const Call& c) {
    using T = typename C::T;
    const T* kc = static_cast<const T*>(c.k_cache);
    const T* vc = static_cast<const T*>(c.v_cache);
    constexpr int64_t RS = ROW<C, E>;
    std::vector<Task> tasks;
    tasks.reserve(c.rows * c.K);
    for (int64_t row = 0; row < c.rows;) {
        int count = 1;
        while (W > 1 && count < W && row + count < c.rows &&
               c.slots[row + count] == c.slots[row] &&
               c.lengths[row + count] == c.lengths[row] + count)
            ++count;
        for (int head = 0; head < c.K; ++head) tasks.push_back({row, count, head});
        row += count;
    }
    const int64_t n_tasks = static_cast<int64_t>(tasks.size());
    const int64_t row_stride = static_cast<int64_t>(c.K) * G * E;
#pragma omp parallel num_threads(c.threads)
    {
        if (c.k_new != nullptr) {  // every row's keys before any row attends: prompt rows see
            T* kw = const_cast<T*>(kc);  // the keys of the step's earlier positions
            T* vw = const_cast<T*>(vc);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < c.rows * c.K; ++i) {
                C::put(c.k_new + i * E, kw + c.cache_rows[i] * RS, E);
                C::put(c.v_new + i * E, vw + c.cache_rows[i] * RS, E);
            }
        }
        std::vector<float> scores;
        std::vector<float> tile_space(W > 1 ? 2 * E * W * G + 16 : 0);
        // whole cache lines: a vector load across two lines cost tiles a fifth of their time
        float* tile = reinterpret_cast<float*>(
            (reinterpret_cast<uintptr_t>(tile_space.data()) + 63) & ~uintptr_t{63});
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tasks; ++t) {
            const Task& task = tasks[t];
            const int64_t length = c.lengths[task.first];
            const int64_t base = c.slots[task.first] * c.slot_stride + task.head * c.head_stride;
            const int64_t at = task.first * row_stride + task.head * G * E;
            if constexpr (W > 1) {
                if (task.count > 1) {
                    tile_task<C, E, G>(c.q + at, row_stride, c.q_scale, kc + base,
                                       vc + base, length, task.count, c.ring, c.window,
                                       c.out + at, row_stride, tile);
                    continue;
                }
            }
            const int64_t first = c.window > 0 && length > c.window ? length - c.window : 0;
            const int64_t seen = length - first;
            if (static_cast<int64_t>(scores.size()) < G * padded(seen))
                scores.resize(G * padded(seen));
            one_task<C, E, G>(c.q + at, c.q_scale, kc + base, vc + base, first, seen, c.ring,
                              scores.data(), c.out + at);
        }
    }
}

template <class C>
int build_for(const Call& c, int G, int E) {
    if (G != LLMQ_GROUP || E != LLMQ_HEAD_DIM) return 1;
    run<C, LLMQ_HEAD_DIM, LLMQ_GROUP>(c);
    return 0;
}

}  // namespace

extern "C" {

// q [rows, K, G, E] float32, multiplied by q_scale as it is read; caches [S, K, P, R] in
// dtype (0 float32, 1 float16, 2 bfloat16, 3 int8 with R = E + 4: codes and their float32
// scale) with the given strides in elements, positions contiguous, position p at p % ring
// (ring = P); slots and lengths [rows]: a row sees its slot's positions below its length, or
// with a window > 0 the last window of them (the caller keeps a ring at least as long as the
// positions any row sees, and a step's writes clear of them); out [rows, K, G, E] float32. With k_new, v_new and cache_rows (else null), the step's keys
// and values [rows * K, E] are first written into the caches (each [S, K, L, R] contiguous,
// as its own [S * K * L, R] rows), converted as to_cache does. Returns 0, or 1 for a head
// dimension or group size other than the build's (LLMQ_HEAD_DIM, LLMQ_GROUP) or an unknown
// dtype.
int llmq_decode_attention(const float* q, const void* k_cache, const void* v_cache,
                          const int64_t* slots, const int64_t* lengths, float* out,
                          int64_t rows, int K, int G, int E, int dtype,
                          int64_t slot_stride, int64_t head_stride, int threads, float q_scale,
                          int64_t ring, int64_t window, const float* k_new, const float* v_new,
                          const int64_t* cache_rows) {
    const Call c{q, k_cache, v_cache, slots, lengths, out, rows, K, slot_stride, head_stride,
                 threads, q_scale, ring, window, k_new, v_new, cache_rows};
    switch (dtype) {
        case 0: return build_for<F32>(c, G, E);
        case 1: return build_for<F16>(c, G, E);
        case 2: return build_for<BF16>(c, G, E);
        case 3: return build_for<I8>(c, G, E);
    }
    return 1;
}

}
