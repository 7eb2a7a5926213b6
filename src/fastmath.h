/*
 * exp and log without libm calls, so that loops over the whole vocabulary
 * vectorise (at -O3: see CMakeLists.txt). Both are accurate to about 2e-7
 * relative, far below what any signal or fusion rule can tell apart.
 */
#ifndef SELFMOD_FASTMATH_H
#define SELFMOD_FASTMATH_H

#include <stdint.h>
#include <string.h>

/*
 * Sums over the vocabulary are kept in SM_LANES independent partial sums,
 * element i always going to lane i % SM_LANES, and the lanes are added in a
 * fixed order. The compiler vectorises that without being allowed to
 * reorder float additions itself (which would make the result depend on
 * how a buffer happens to be aligned), so results are the same on every run.
 */
#define SM_LANES 16

static inline float sm_lane_sum(const float *lanes) {
    float s = 0.0f;
    for (int i = 0; i < SM_LANES; i++) s += lanes[i];
    return s;
}

/* Below this, exp(x) is treated as ~1e-38: never 0, so logs stay finite. */
#define SM_EXP_FLOOR (-87.0f)

/* exp(x) for x <= 0: x = n ln2 + r, |r| <= ln2/2, exp(r) by its degree-6
 * Taylor polynomial, 2^n written into the exponent bits. x below -87 (and
 * -inf) is clamped there. */
static inline float sm_exp_nonpositive(float x) {
    const float log2e = 1.44269504f, ln2_hi = 0.693145752f, ln2_lo = 1.42860677e-6f;
    x = x < SM_EXP_FLOOR ? SM_EXP_FLOOR : x;
    float n = __builtin_floorf(x * log2e + 0.5f);
    float r = x - n * ln2_hi - n * ln2_lo;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* ln(x) for finite x > 0 (Cephes' logf): x = m 2^e with m in
 * [sqrt(1/2), sqrt(2)), then a degree-9 polynomial in m - 1. */
static inline float sm_log_positive(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof bits);
    float e = (float)(((bits >> 23) & 0xff) - 126);
    bits = (bits & 0x007fffff) | 0x3f000000; /* m in [0.5, 1) */
    float m;
    memcpy(&m, &bits, sizeof m);
    int below = m < 0.707106781f;
    e -= (float)below;
    float f = below ? m + m - 1.0f : m - 1.0f;
    float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y += -2.12194440e-4f * e;
    y += -0.5f * z;
    return f + y + 0.693359375f * e;
}

#endif
