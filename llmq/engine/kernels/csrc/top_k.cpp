// The indices of the k largest entries of every row of a float32 matrix, largest first, for
// small k: llmq's greedy choice (k = 1) and the int8 head's candidates (k = 4) over a
// 49,152-token vocabulary. PyTorch's argmax and topk are slow at these shapes on CPU; one pass
// that compares each vector of a row against the k-th best so far reads the row once at
// memory speed. Ties go to the lower index, as with argmax; NaN is
// never chosen.

#include <immintrin.h>

#include <cstdint>

namespace {

constexpr int MAX_K = 16;

struct Best {
    float value[MAX_K];
    int64_t index[MAX_K];
    int size = 0;
    int k;

    explicit Best(int k_) : k(k_) {}

    float threshold() const { return size < k ? -__builtin_inff() : value[k - 1]; }

    // keeps (v, i) if it beats the k-th best; equal values keep the earlier index first
    void offer(float v, int64_t i) {
        if (size == k && !(v > value[k - 1])) return;
        if (size < k && !(v >= -__builtin_inff())) return;  // NaN
        int at = size < k ? size++ : k - 1;
        while (at > 0 && v > value[at - 1]) {
            value[at] = value[at - 1];
            index[at] = index[at - 1];
            --at;
        }
        value[at] = v;
        index[at] = i;
    }
};

void one_row(const float* x, int64_t cols, int k, int64_t* out) {
    Best best(k);
    int64_t j = 0;
    for (; j < cols && best.size < k; ++j) best.offer(x[j], j);
#if defined(__AVX512F__)
    for (; j + 16 <= cols; j += 16) {
        __mmask16 above = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + j),
                                             _mm512_set1_ps(best.threshold()), _CMP_GT_OQ);
        while (above) {
            const int lane = __builtin_ctz(above);
            best.offer(x[j + lane], j + lane);
            above &= above - 1;
        }
    }
#elif defined(__AVX__)
    for (; j + 8 <= cols; j += 8) {
        int above = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j),
                                                     _mm256_set1_ps(best.threshold()),
                                                     _CMP_GT_OQ));
        while (above) {
            const int lane = __builtin_ctz(above);
            best.offer(x[j + lane], j + lane);
            above &= above - 1;
        }
    }
#endif
    for (; j < cols; ++j) best.offer(x[j], j);
    for (int i = 0; i < k; ++i) out[i] = i < best.size ? best.index[i] : 0;
}

}  // namespace

extern "C" {

// x [rows, cols] with row stride ``stride`` (elements); out [rows, k]. Returns 0, or 1 for a
// k outside 1..16.
int llmq_top_k_rows(const float* x, int64_t rows, int64_t cols, int64_t stride, int k,
                    int64_t* out, int threads) {
    if (k < 1 || k > MAX_K) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) one_row(x + r * stride, cols, k, out + r * k);
    return 0;
}

}
