// torch_normal_fill: the float32 standard normals torch.randn(n, generator=g) draws on the CPU, from the
// byte tensor g.get_state(), advancing that state exactly as torch.randn would (pydiff/ops/torch_normal.py).
//
// What torch does for a contiguous float32 tensor of n >= 16 elements (ATen's normal_fill):
// * every element gets a uniform u = (mt() & 0xFFFFFF) * 2^-24 from the generator's mt19937 (Matsumoto &
//   Nishimura 1998), the 32-bit tempered output of the engine's left/next counters;
// * Box-Muller (Box & Muller 1958) in place over each block of 16: for j < 8, with u1 = 1 - d[j] in (0, 1]
//   and u2 = d[j+8], r = sqrt(-2 ln u1), theta = 2 pi u2, d[j] = r cos theta, d[j+8] = r sin theta;
// * if n % 16 != 0, the last 16 outputs are recomputed from 16 further uniforms.
// ln, cos and sin are float32 polynomials here (the Cephes ones, below); torch uses libm or its own vector
// code depending on its CPU capability, so the two agree to a few ulp, not to the bit: over 10^7 draws the
// largest difference from torch 2.13's (AVX512 capability) was 2.4e-7 at the avx512 and avx2 levels, 3.6e-7
// at the baseline level, for values up to ~5.7. The generator state is reproduced bit for bit.
//
// This file is compiled twice (CMakeLists.txt), like fused_step_backward.cpp:
// * once per ISA level with -DPYDIFF_ISA_NS: the twist, the tempering and the Box-Muller loops;
// * once without it, into the module: the entry point, which reads and writes the state bytes and runs the
//   loops of the active level (cpu::active_isa()).
#include <stdint.h>
#include <string.h>

#include "ops_cpu.h"
#include "pydiff_math.h"

namespace pydiff {
namespace cpu {

// The 32-bit Mersenne twister's state as the engine keeps it: the next word to temper is s[next]; the
// engine twists when a draw finds left == 1 (it decrements left first, and twists at 0).
struct Mt19937 {
  uint32_t s[624];
  int32_t left;
  int32_t next;
};

#if defined(PYDIFF_ISA_NS)

namespace PYDIFF_ISA_NS {
namespace {

constexpr int kN = 624, kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

PYDIFF_HD uint32_t mt_twist(uint32_t u, uint32_t v) {
  return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((0u - (v & 1u)) & kMatrixA);
}

// The engine's next_state(): s[i] = s[i+M] ^ twist(s[i], s[i+1]), indices mod N, in place in increasing i.
// The first 227 words read only words not yet rewritten; the next 396 read s[i-227], rewritten 227 steps
// earlier: both loops are data-parallel for any vector width below 227.
void mt_next_state(uint32_t* s) {
  for (int i = 0; i < kN - kM; ++i) s[i] = s[i + kM] ^ mt_twist(s[i], s[i + 1]);
  for (int i = kN - kM; i < kN - 1; ++i) s[i] = s[i + kM - kN] ^ mt_twist(s[i], s[i + 1]);
  s[kN - 1] = s[kM - 1] ^ mt_twist(s[kN - 1], s[0]);
}

PYDIFF_HD float mt_uniform(uint32_t y) {
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return static_cast<float>(y & 0xFFFFFFu) * 5.9604644775390625e-08f;  // exact: 24 bits times 2^-24
}

// k uniforms into o, as k successive torch uniform_real_distribution<float>(0, 1) draws.
void mt_uniforms(Mt19937& g, float* o, int64_t k) {
  while (k > 0) {
    if (g.left == 1) {  // the draw that finds left == 1 twists and then reads s[0]
      mt_next_state(g.s);
      g.left = kN + 1;
      g.next = 0;
    }
    const int64_t take = min64(k, static_cast<int64_t>(g.left - 1));
    const uint32_t* src = g.s + g.next;
#pragma omp simd
    for (int64_t j = 0; j < take; ++j) o[j] = mt_uniform(src[j]);
    g.left -= static_cast<int32_t>(take);
    g.next += static_cast<int32_t>(take);
    o += take;
    k -= take;
  }
}

// a * b + c: one fused multiply-add where the level has FMA (the avx2 and avx512 builds; the Horner steps
// below then cost one operation instead of two: 74 -> 61 us for the Box-Muller blocks of 98304 values), else a
// product and a sum. Either is within the few ulp this op promises; the levels may differ in the last bit.
PYDIFF_HD float madd(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

struct FusedMulAdd {
  PYDIFF_HD float operator()(float a, float b, float c) const { return madd(a, b, c); }
};

// ln x for x in [2^-24, 1]: pydiff_math.h's Cephes polynomial, its multiply-adds through madd.
PYDIFF_HD float logf_u1(float x) { return poly_logf_with(x, FusedMulAdd()); }

// sin and cos of a in [0, 2 pi]: the Cephes sinf/cosf polynomials after reduction by pi/4 in three parts
// (the reduction of pydiff_math.h's poly_sincosf), the octant handled by selects so that the loop vectorises.
PYDIFF_HD void poly_sincosf(float a, float& sn, float& cs) {
  int32_t j = static_cast<int32_t>(a * 1.27323954473516f);  // a * 4/pi, a >= 0
  j = (j + 1) & ~1;                                          // even octant
  const float y = static_cast<float>(j);
  const float r = ((a - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const int32_t q = j & 7;  // 0, 2, 4, 6: a = r + q pi/4 (mod 2 pi)
  const float zz = r * r;
  float c = 2.443315711809948e-5f;
  c = madd(c, zz, -1.388731625493765e-3f);
  c = madd(c, zz, 4.166664568298827e-2f);
  c = c * zz * zz;
  c = madd(-0.5f, zz, c);
  c = c + 1.0f;
  float s = -1.9515295891e-4f;
  s = madd(s, zz, 8.3321608736e-3f);
  s = madd(s, zz, -1.6666654611e-1f);
  s = madd(s * zz, r, r);
  // q=0: (sin, cos) = (s, c); q=2: (c, -s); q=4: (-s, -c); q=6: (-c, s)
  const bool swap = (q & 2) != 0;
  const float sv = swap ? c : s, cv = swap ? s : c;
  sn = (q == 4 || q == 6) ? -sv : sv;
  cs = (q == 2 || q == 4) ? -cv : cv;
}

// One Box-Muller block of 16 in place (torch's NormalFill16 with mean 0, std 1).
PYDIFF_HD void box_muller16(float* d) {
#pragma omp simd
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - d[j];  // [0, 1) -> (0, 1]
    const float u2 = d[j + 8];
    const float radius = sqrt_f(-2.0f * logf_u1(u1));
    // theta = float32(2 pi) * u2 in float32, as torch 2.13's vector builds form it: against torch.randn
    // (AVX512 capability) the worst error at 98304 draws is 3.4e-7 with this product and 1.9e-6 with the
    // double product 2 pi * u2 of ATen's scalar loop (one ulp of theta, times r)
    const float theta = kTwoPiF * u2;
    float sn, cs;
    poly_sincosf(theta, sn, cs);
    d[j] = radius * cs;
    d[j + 8] = radius * sn;
  }
}

#if defined(__AVX512F__)
// Two blocks at once on 16 lanes (512-bit vectors): the j < 8 halves of both blocks gathered into u1, the
// j >= 8 halves into u2. 64 -> 58 us for the blocks of 98304 values (on this AMD CPU a 512-bit operation
// issues as two 256-bit halves, so the gain is the loop's fixed cost, not the arithmetic).
void box_muller32(float* d) {
  float u1[16], u2[16];
  for (int j = 0; j < 8; ++j) {
    u1[j] = d[j];
    u1[j + 8] = d[j + 16];
    u2[j] = d[j + 8];
    u2[j + 8] = d[j + 24];
  }
#pragma omp simd
  for (int j = 0; j < 16; ++j) {
    const float radius = sqrt_f(-2.0f * logf_u1(1.0f - u1[j]));
    float sn, cs;
    poly_sincosf(kTwoPiF * u2[j], sn, cs);
    u1[j] = radius * cs;
    u2[j] = radius * sn;
  }
  for (int j = 0; j < 8; ++j) {
    d[j] = u1[j];
    d[j + 16] = u1[j + 8];
    d[j + 8] = u2[j];
    d[j + 24] = u2[j + 8];
  }
}
#endif

// The Box-Muller blocks of d[0, 16 nb).
void box_muller_blocks(float* d, int64_t nb) {
  int64_t b = 0;
#if defined(__AVX512F__)
  for (; b + 2 <= nb; b += 2) box_muller32(d + 16 * b);
#endif
  for (; b < nb; ++b) box_muller16(d + 16 * b);
}

// Uniforms for a stretch of this many outputs, then their Box-Muller blocks, while they are in L1/L2
// (a multiple of 16, so that the blocks stay aligned to the tensor's start as torch's are).
constexpr int64_t kStretch = 4096;

}  // namespace

void torch_normal_fill_kernel(float* out, int64_t n, Mt19937& g, int nt) {
  const int64_t full = n & ~static_cast<int64_t>(15);
  if (nt > 1 && n >= kParallelMin) {
    // The engine's stream is serial, but it is the small part (~11 of 72 us at 98304 values on one thread):
    // all uniforms first, then the Box-Muller blocks on nt threads (2 threads, loaded machine: 73 -> 57 us).
    mt_uniforms(g, out, n);
    constexpr int64_t kBlocks = kStretch / 16;
    const int64_t nb = full / 16, stretches = (nb + kBlocks - 1) / kBlocks;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t s = 0; s < stretches; ++s)
      box_muller_blocks(out + 16 * s * kBlocks, min64(nb - s * kBlocks, kBlocks));
  } else {
    for (int64_t i0 = 0; i0 < n; i0 += kStretch) {
      const int64_t i1 = min64(n, i0 + kStretch);
      mt_uniforms(g, out + i0, i1 - i0);
      box_muller_blocks(out + i0, (min64(i1, full) - i0) / 16);
    }
  }
  if (n != full) {  // the last 16 again, from 16 further uniforms
    mt_uniforms(g, out + n - 16, 16);
    box_muller16(out + n - 16);
  }
}

}  // namespace PYDIFF_ISA_NS

#else  // the module's entry point

namespace isa_baseline {
void torch_normal_fill_kernel(float* out, int64_t n, Mt19937& g, int nt);
}
#if defined(PYDIFF_HAVE_AVX2)
namespace isa_avx2 {
void torch_normal_fill_kernel(float* out, int64_t n, Mt19937& g, int nt);
}
#endif
#if defined(PYDIFF_HAVE_AVX512)
namespace isa_avx512 {
void torch_normal_fill_kernel(float* out, int64_t n, Mt19937& g, int nt);
}
#endif

namespace {

// The byte layout of CPUGeneratorImpl::get_state() (its legacy POD, little-endian): the initial seed (u64),
// left (i32), seeded (i32), next (u64), the 624 state words (one u64 each), then the normal caches, which
// this op neither reads nor writes.
constexpr int64_t kOffLeft = 8, kOffSeeded = 12, kOffNext = 16, kOffState = 24;
constexpr int64_t kStateEnd = kOffState + 624 * 8;

}  // namespace

// 0 on success; -1 when state_bytes is too short, -2 when the state is not one the engine accepts (torch's
// is_valid, plus next + left <= 625 so that no read passes the 624 words), -3 when 0 < n < 16 (torch draws
// those one at a time from its double normal cache). Nothing is written on failure.
int torch_normal_fill(float* out, int64_t n, uint8_t* state, int64_t state_bytes, int num_threads) {
  if (state_bytes < kStateEnd) return -1;
  if (n < 0 || (n > 0 && n < 16)) return -3;  // torch draws fewer than 16 another way
  Mt19937 g;
  int32_t seeded;
  uint64_t next, word;
  memcpy(&g.left, state + kOffLeft, 4);
  memcpy(&seeded, state + kOffSeeded, 4);
  memcpy(&next, state + kOffNext, 8);
  if (!seeded || g.left < 1 || g.left > 624 || next > 624 || next + static_cast<uint64_t>(g.left) > 625) return -2;
  g.next = static_cast<int32_t>(next);
  for (int i = 0; i < 624; ++i) {
    memcpy(&word, state + kOffState + 8 * i, 8);
    g.s[i] = static_cast<uint32_t>(word);
  }
  if (n > 0) {
    const int nt = resolve_threads(num_threads);
    const std::string isa = active_isa();
#if defined(PYDIFF_HAVE_AVX512)
    if (isa == "avx512")
      isa_avx512::torch_normal_fill_kernel(out, n, g, nt);
    else
#endif
#if defined(PYDIFF_HAVE_AVX2)
        if (isa == "avx2")
      isa_avx2::torch_normal_fill_kernel(out, n, g, nt);
    else
#endif
      isa_baseline::torch_normal_fill_kernel(out, n, g, nt);
  }
  next = static_cast<uint64_t>(g.next);
  memcpy(state + kOffLeft, &g.left, 4);
  memcpy(state + kOffNext, &next, 8);
  for (int i = 0; i < 624; ++i) {
    word = g.s[i];
    memcpy(state + kOffState + 8 * i, &word, 8);
  }
  return 0;
}

#endif

}  // namespace cpu
}  // namespace pydiff
