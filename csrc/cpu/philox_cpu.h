// Block generation of Philox normals on the CPU.
//
// The Philox integer rounds and the Box-Muller transform run in one loop that the compiler
// vectorises: log and cos are branch-free float32 polynomial implementations (Cephes logf/cosf
// algorithms, < 1 ulp from the correctly rounded result on the ranges used here) instead of libm calls,
// which would keep the loop scalar. docs/ops.md allows float32 libm rounding differences between
// backends; these functions also make the CPU noise identical on every machine and libc.
#pragma once

#include <stdint.h>
#include <string.h>

#include "ops_cpu.h"
#include "philox.h"

namespace pydiff {
namespace cpu {

static inline float pd_bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline uint32_t pd_float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

// Natural log for normal positive finite x (here u1 in [2^-25, 1]); Cephes logf.
static inline float poly_logf(float x) {
  const uint32_t ux = pd_float_to_bits(x);
  int32_t e = static_cast<int32_t>(ux >> 23) - 126;  // x = m * 2^e, m in [0.5, 1)
  float m = pd_bits_to_float((ux & 0x007FFFFFu) | 0x3F000000u);
  const bool small = m < 0.707106781186547524f;  // sqrt(1/2)
  e = small ? e - 1 : e;
  m = small ? (m + m) - 1.0f : m - 1.0f;  // exact (Sterbenz)
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + -2.12194440e-4f * fe;
  y = y - 0.5f * z;
  float r = m + y;
  r = r + 0.693359375f * fe;
  return r;
}

// cos(a) for a in [0, 8]; Cephes cosf (range reduction by pi/4 in three parts).
static inline float poly_cosf(float a) {
  int32_t j = static_cast<int32_t>(a * 1.27323954473516f);  // a * 4/pi, a >= 0
  j = (j + 1) & ~1;                                          // even octant
  const float y = static_cast<float>(j);
  const float r = ((a - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const int32_t q = j & 7;                                   // 0, 2, 4, 6
  const float zz = r * r;
  float c = 2.443315711809948e-5f;
  c = c * zz - 1.388731625493765e-3f;
  c = c * zz + 4.166664568298827e-2f;
  c = c * zz * zz;
  c = c - 0.5f * zz;
  c = c + 1.0f;
  float s = -1.9515295891e-4f;
  s = s * zz + 8.3321608736e-3f;
  s = s * zz - 1.6666654611e-1f;
  s = s * zz * r;
  s = s + r;
  // cos(r + q*pi/4): q=0: cos r, q=2: -sin r, q=4: -cos r, q=6: sin r
  const float v = (q & 2) ? s : c;
  const bool neg = q == 2 || q == 4;
  return neg ? -v : v;
}

// z[k] = philox_normal(seed, offset, g0 + k) for k < n (up to float32 rounding of log/cos).
static inline void philox_normal_block_inline(uint64_t seed, uint64_t offset, uint64_t g0, int64_t n, float* z) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t g = g0 + static_cast<uint64_t>(k);
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), c2, c3, k0, k1);
    const float u1 = philox_uniform(r.v[0]);
    const float u2 = philox_uniform(r.v[1]);
    z[k] = __builtin_sqrtf(-2.0f * poly_logf(u1)) * poly_cosf(kTwoPiF * u2);
  }
}

// The same, compiled for several x86-64 levels with runtime dispatch (philox_cpu.cpp): the 32x32->64
// multiplies of Philox are 2-3x faster with AVX2/AVX-512 than with the SSE2 baseline. The clones give
// bit-identical results (no FMA contraction, only correctly rounded operations).
void philox_normal_block(uint64_t seed, uint64_t offset, uint64_t g0, int64_t n, float* z);

}  // namespace cpu
}  // namespace pydiff
