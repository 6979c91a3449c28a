// exp(x) for x <= 0, W lanes at once, as 2^(x log2 e): a degree-6 polynomial for the fraction
// and the exponent bits for the integer part (relative error about 2e-7); below -87 it returns
// 0, as float32's exp does (and so for -inf). Shared by decode_attention.cpp (its softmax) and
// hadamard.cpp (SiLU): included inside their anonymous namespaces after each has defined, for
// its ISA, the vector type V and splat, mul, sub, fma, max, floor, pow2 and zero_below.
// native.py's build hash covers this file.
constexpr float EXP2_FRACTION[] = {1.535336188319500e-4f, 1.339887440266574e-3f,
                                   9.618437357674640e-3f, 5.550332471162809e-2f,
                                   2.402264791363012e-1f, 6.931472028550421e-1f, 1.0f};
inline V exp_nonpositive(V x) {
    const V y = max(mul(x, splat(1.44269504088896341f)), splat(-126.f));
    const V n = floor(y);
    const V f = sub(y, n);
    V p = splat(EXP2_FRACTION[0]);
    for (int i = 1; i < 7; ++i) p = fma(p, f, splat(EXP2_FRACTION[i]));
    return zero_below(x, -87.f, mul(p, pow2(n)));
}
