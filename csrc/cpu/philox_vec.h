// The Philox normals of pydiff_math.h (philox_normal4 / philox_normal_z) on whole vectors, for the CPU kernel
// TUs: 16 counters (64 normals) per step with AVX-512, 8 (32) with AVX2, the scalar functions otherwise.
// philox_normal_fill(key, ctr, g0, n, z) writes z[i] = philox_normal_z(key, ctr, g0 + i) for i < n, bit for bit.
//
// Why explicit intrinsics: the scalar function inside an `omp simd` loop vectorises with the 32x32->64
// products of the Philox rounds emulated on 64-bit lanes (GCC 12, avx512 level: no 512-bit vpmuludq at all),
// 5.1 ns per element on one thread, slower than torch.randn. Here each product is one vpmuludq on 64-bit
// lanes, and the four words of 16 counters are packed into 32-bit lanes once, after the rounds. Box-Muller
// then gives a counter's four normals as lanes of four vectors (cos and sin of each word pair), which a
// 4 x 16 transpose (in-lane unpacks, then 128-bit lane shuffles) puts in element order. One AVX-512 core:
// 0.79 ns per normal (a block per element, as the layout was: 2.15 ns); AVX2 1.75 (4.57); scalar 4.2 (12.4).
//
// Same bits as the scalar code: the integer words are exact; the float part performs the same IEEE
// operations as poly_logf / poly_sincosf / philox_uniform in the same order, with the same float32 constants
// (every literal below is copied from pydiff_math.h), and separately rounded: the kernel TUs are compiled
// with -ffp-contract=off at every level (CMakeLists.txt), so GCC contracts neither the scalar code nor the
// vector + / * of these intrinsics into FMAs (the scalar and vector object code of the avx2 and avx512
// levels holds no vfmadd in these functions). Truncation (cvttps), int -> float (exact here), sqrt, the
// selects and the sign flips (xor of the sign bit, as the scalar negation) are exact or correctly rounded
// alike in both. tests/ops/test_philox_vec.py checks the bits against a float32 evaluation of the formula at
// every ISA level; a group of counters that the range cuts is drawn whole into a buffer.
#pragma once

#include <stdint.h>

#include <type_traits>

#include "pydiff_math.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// GCC 12's AVX-512 intrinsics start from an "undefined" register, which -Wmaybe-uninitialized reports at
// every inlined use (a false positive, fixed in GCC 13); as in convert_block.h.
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#ifndef PYDIFF_ISA_NS
#error "philox_vec.h is for the kernel TUs (compiled with -DPYDIFF_ISA_NS=<namespace>)"
#endif

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {

// Work decomposition of the loops that draw normals (philox_normal; fused_step with Philox noise; not sumsq,
// whose chunks fix its order of summation): a normal costs ~3x a fused_step element (0.79 vs 0.23 ns on one
// AVX-512 thread), so tasks of kPhiloxTask elements (~4 us) are long enough for OpenMP, and two threads then
// split a 1x4x64x64 draw, one kChunk (ops_cpu.h) of elements.
constexpr int64_t kPhiloxTask = 4096;
constexpr int64_t kPhiloxParallelMin = 2 * kPhiloxTask;
// The z buffer of the element loops that read Philox z like a noise tensor (philox_normal_block): 512 floats
// (2 KiB) stay in L1 next to the data.
constexpr int64_t kPhiloxBlock = 512;

// Counters of the elements g (g >> 2, g taken mod 2^64) lie below 2^62: a vector of consecutive counters
// wraps there, as the scalar counter of element g + i does.
constexpr uint64_t kPhiloxCtrMask = (uint64_t(1) << 62) - 1;

// The key words of each of the 10 rounds and the first round's product of the (uniform) counter word 2,
// computed once per fill instead of per vector.
struct PhiloxVecKey {
  uint32_t k0[10], k1[10];
  uint32_t c2, c3;      // offset lo, hi
  uint32_t hi1, lo1;    // round 0: kPhiloxM1 * c2
  PhiloxVecKey(uint64_t key, uint64_t ctr) {
    uint32_t a = static_cast<uint32_t>(key), b = static_cast<uint32_t>(key >> 32);
    for (int r = 0; r < 10; ++r) {
      k0[r] = a;
      k1[r] = b;
      a += kPhiloxW0;
      b += kPhiloxW1;
    }
    c2 = static_cast<uint32_t>(ctr);
    c3 = static_cast<uint32_t>(ctr >> 32);
    philox_mulhilo(kPhiloxM1, c2, hi1, lo1);
  }
};

#if defined(__AVX512F__)
constexpr int kPhiloxLanes = 16;

inline __m512 philox_uniform16(__m512i r) {
  return _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(r, 8)), _mm512_set1_ps(0.5f)),
                       _mm512_set1_ps(5.9604644775390625e-08f));
}

// poly_logf on 16 lanes.
inline __m512 poly_logf16(__m512 x) {
  const __m512i ux = _mm512_castps_si512(x);
  __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(ux, 23), _mm512_set1_epi32(126));
  __m512 m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(ux, _mm512_set1_epi32(0x007FFFFF)),
                                                 _mm512_set1_epi32(0x3F000000)));
  const __mmask16 small = _mm512_cmp_ps_mask(m, _mm512_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm512_mask_sub_epi32(e, small, e, _mm512_set1_epi32(1));
  const __m512 one = _mm512_set1_ps(1.0f);
  m = _mm512_mask_blend_ps(small, _mm512_sub_ps(m, one), _mm512_sub_ps(_mm512_add_ps(m, m), one));
  const __m512 z = _mm512_mul_ps(m, m);
  __m512 y = _mm512_set1_ps(7.0376836292e-2f);
  y = _mm512_sub_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(1.1514610310e-1f));
  y = _mm512_add_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(1.1676998740e-1f));
  y = _mm512_sub_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(1.2420140846e-1f));
  y = _mm512_add_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(1.4249322787e-1f));
  y = _mm512_sub_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(1.6668057665e-1f));
  y = _mm512_add_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(2.0000714765e-1f));
  y = _mm512_sub_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(2.4999993993e-1f));
  y = _mm512_add_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(3.3333331174e-1f));
  y = _mm512_mul_ps(_mm512_mul_ps(y, m), z);
  const __m512 fe = _mm512_cvtepi32_ps(e);
  y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_set1_ps(-2.12194440e-4f), fe));
  y = _mm512_sub_ps(y, _mm512_mul_ps(_mm512_set1_ps(0.5f), z));
  __m512 r = _mm512_add_ps(m, y);
  r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_set1_ps(0.693359375f), fe));
  return r;
}

// poly_sincosf on 16 lanes (a in [0, 8]).
inline void poly_sincosf16(__m512 a, __m512& sin_a, __m512& cos_a) {
  __m512i j = _mm512_cvttps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(1.27323954473516f)));
  j = _mm512_and_si512(_mm512_add_epi32(j, _mm512_set1_epi32(1)), _mm512_set1_epi32(~1));
  const __m512 y = _mm512_cvtepi32_ps(j);
  const __m512 r = _mm512_sub_ps(
      _mm512_sub_ps(_mm512_sub_ps(a, _mm512_mul_ps(y, _mm512_set1_ps(0.78515625f))),
                    _mm512_mul_ps(y, _mm512_set1_ps(2.4187564849853515625e-4f))),
      _mm512_mul_ps(y, _mm512_set1_ps(3.77489497744594108e-8f)));
  const __m512 zz = _mm512_mul_ps(r, r);
  __m512 c = _mm512_set1_ps(2.443315711809948e-5f);
  c = _mm512_sub_ps(_mm512_mul_ps(c, zz), _mm512_set1_ps(1.388731625493765e-3f));
  c = _mm512_add_ps(_mm512_mul_ps(c, zz), _mm512_set1_ps(4.166664568298827e-2f));
  c = _mm512_mul_ps(_mm512_mul_ps(c, zz), zz);
  c = _mm512_sub_ps(c, _mm512_mul_ps(_mm512_set1_ps(0.5f), zz));
  c = _mm512_add_ps(c, _mm512_set1_ps(1.0f));
  __m512 s = _mm512_set1_ps(-1.9515295891e-4f);
  s = _mm512_add_ps(_mm512_mul_ps(s, zz), _mm512_set1_ps(8.3321608736e-3f));
  s = _mm512_sub_ps(_mm512_mul_ps(s, zz), _mm512_set1_ps(1.6666654611e-1f));
  s = _mm512_mul_ps(_mm512_mul_ps(s, zz), r);
  s = _mm512_add_ps(s, r);
  // q = j & 7 in {0, 2, 4, 6}: the polynomials swap where q & 2; cos is negated for q = 2, 4, i.e. where
  // (j + 2) & 4, sin for q = 4, 6, i.e. where j & 4 (the sign bit set by xor, as the scalar negation)
  const __mmask16 swap = _mm512_test_epi32_mask(j, _mm512_set1_epi32(2));
  const __m512i vc = _mm512_castps_si512(_mm512_mask_blend_ps(swap, c, s));
  const __m512i vs = _mm512_castps_si512(_mm512_mask_blend_ps(swap, s, c));
  const __m512i four = _mm512_set1_epi32(4);
  const __m512i sign_c = _mm512_slli_epi32(_mm512_and_si512(_mm512_add_epi32(j, _mm512_set1_epi32(2)), four), 29);
  const __m512i sign_s = _mm512_slli_epi32(_mm512_and_si512(j, four), 29);
  cos_a = _mm512_castsi512_ps(_mm512_xor_si512(vc, sign_c));
  sin_a = _mm512_castsi512_ps(_mm512_xor_si512(vs, sign_s));
}

// The four Philox words of 8 counters, one per 64-bit lane (the counter of each lane given, < 2^62): each
// 32-bit word sits in the low half of its lane, so one vpmuludq gives hi:lo of a product in place and only
// the hi word needs a shift; the high halves of the other words carry junk that nothing reads (vpmuludq
// ignores them, and the result keeps only the low halves). 6 operations per round for 8 counters, against
// 8 with the words packed 16 to a register (two vpmuludq on the even and odd lanes, then shifts and
// blends to interleave hi and lo).
inline void philox_words_x8(const PhiloxVecKey& k, __m512i g, __m512i r[4]) {
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0);
  const __m512i m1 = _mm512_set1_epi64(kPhiloxM1);
  // round 0: c2, c3 are the same in every lane, so kPhiloxM1 * c2 is the scalar product of the key setup
  __m512i p0 = _mm512_mul_epu32(g, m0);
  __m512i c0 = _mm512_xor_si512(_mm512_srli_epi64(g, 32), _mm512_set1_epi32(static_cast<int>(k.hi1 ^ k.k0[0])));
  __m512i c1 = _mm512_set1_epi32(static_cast<int>(k.lo1));
  __m512i c2 = _mm512_xor_si512(_mm512_srli_epi64(p0, 32), _mm512_set1_epi32(static_cast<int>(k.c3 ^ k.k1[0])));
  __m512i c3 = p0;
  for (int i = 1; i < 10; ++i) {
    p0 = _mm512_mul_epu32(c0, m0);
    const __m512i p1 = _mm512_mul_epu32(c2, m1);
    c0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), c1, _mm512_set1_epi32(static_cast<int>(k.k0[i])),
                                   0x96);  // a ^ b ^ c
    c2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), c3, _mm512_set1_epi32(static_cast<int>(k.k1[i])),
                                   0x96);
    c1 = p1;
    c3 = p0;
  }
  r[0] = c0;
  r[1] = c1;
  r[2] = c2;
  r[3] = c3;
}

// The 64 normals of the 16 counters c .. c + 15 (mod 2^62), i.e. of elements 4c .. 4c + 63, in element order
// in z[0..3].
inline void philox_normal64(const PhiloxVecKey& k, uint64_t c, __m512 z[4]) {
  // a holds c + {0, 1, 4, 5, 8, 9, 12, 13}, b c + {2, 3, 6, 7, ...}: vshufps of their low halves then gives
  // each word of the 16 counters in counter order (per 128-bit lane: a.q0, a.q1, b.q0, b.q1)
  const __m512i base = _mm512_set1_epi64(static_cast<long long>(c));
  const __m512i wrap = _mm512_set1_epi64(static_cast<long long>(kPhiloxCtrMask));
  const __m512i ga = _mm512_and_si512(_mm512_add_epi64(base, _mm512_setr_epi64(0, 1, 4, 5, 8, 9, 12, 13)), wrap);
  const __m512i gb = _mm512_and_si512(_mm512_add_epi64(base, _mm512_setr_epi64(2, 3, 6, 7, 10, 11, 14, 15)), wrap);
  __m512i a[4], b[4], w[4];
  philox_words_x8(k, ga, a);
  philox_words_x8(k, gb, b);
  for (int i = 0; i < 4; ++i)
    w[i] = _mm512_castps_si512(
        _mm512_shuffle_ps(_mm512_castsi512_ps(a[i]), _mm512_castsi512_ps(b[i]), _MM_SHUFFLE(2, 0, 2, 0)));
  const __m512 m2 = _mm512_set1_ps(-2.0f), two_pi = _mm512_set1_ps(kTwoPiF);
  const __m512 rad0 = _mm512_sqrt_ps(_mm512_mul_ps(m2, poly_logf16(philox_uniform16(w[0]))));
  const __m512 rad1 = _mm512_sqrt_ps(_mm512_mul_ps(m2, poly_logf16(philox_uniform16(w[2]))));
  __m512 s0, c0, s1, c1;
  poly_sincosf16(_mm512_mul_ps(two_pi, philox_uniform16(w[1])), s0, c0);
  poly_sincosf16(_mm512_mul_ps(two_pi, philox_uniform16(w[3])), s1, c1);
  // lane l of A, B, C, D holds element 4(c + l) + 0, 1, 2, 3: a 4 x 16 transpose. Unpacks within 128-bit lanes
  // leave in u_k's lane L the four normals of counter 4L + k; a 4 x 4 transpose of the 128-bit lanes follows.
  const __m512 A = _mm512_mul_ps(rad0, c0), B = _mm512_mul_ps(rad0, s0);
  const __m512 C = _mm512_mul_ps(rad1, c1), D = _mm512_mul_ps(rad1, s1);
  const __m512d t0 = _mm512_castps_pd(_mm512_unpacklo_ps(A, B)), t1 = _mm512_castps_pd(_mm512_unpackhi_ps(A, B));
  const __m512d t2 = _mm512_castps_pd(_mm512_unpacklo_ps(C, D)), t3 = _mm512_castps_pd(_mm512_unpackhi_ps(C, D));
  const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
  const __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
  const __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
  const __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0));  // u0.L0 u0.L1 u1.L0 u1.L1
  const __m512 v1 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512 v2 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512 v3 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
  z[0] = _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(2, 0, 2, 0));  // counters 0..3
  z[1] = _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));  // 4..7
  z[2] = _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(2, 0, 2, 0));  // 8..11
  z[3] = _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(3, 1, 3, 1));  // 12..15
}

#elif defined(__AVX2__)
constexpr int kPhiloxLanes = 8;

inline __m256 philox_uniform8(__m256i r) {
  return _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(r, 8)), _mm256_set1_ps(0.5f)),
                       _mm256_set1_ps(5.9604644775390625e-08f));
}

inline __m256 poly_logf8(__m256 x) {
  const __m256i ux = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(ux, 23), _mm256_set1_epi32(126));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(ux, _mm256_set1_epi32(0x007FFFFF)),
                                                 _mm256_set1_epi32(0x3F000000)));
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_add_epi32(e, _mm256_castps_si256(small));  // all-ones lanes are -1
  const __m256 one = _mm256_set1_ps(1.0f);
  m = _mm256_blendv_ps(_mm256_sub_ps(m, one), _mm256_sub_ps(_mm256_add_ps(m, m), one), small);
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_sub_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(1.1514610310e-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_sub_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(1.2420140846e-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_sub_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(1.6668057665e-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_sub_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(2.4999993993e-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(3.3333331174e-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
  const __m256 fe = _mm256_cvtepi32_ps(e);
  y = _mm256_add_ps(y, _mm256_mul_ps(_mm256_set1_ps(-2.12194440e-4f), fe));
  y = _mm256_sub_ps(y, _mm256_mul_ps(_mm256_set1_ps(0.5f), z));
  __m256 r = _mm256_add_ps(m, y);
  r = _mm256_add_ps(r, _mm256_mul_ps(_mm256_set1_ps(0.693359375f), fe));
  return r;
}

inline void poly_sincosf8(__m256 a, __m256& sin_a, __m256& cos_a) {
  __m256i j = _mm256_cvttps_epi32(_mm256_mul_ps(a, _mm256_set1_ps(1.27323954473516f)));
  j = _mm256_and_si256(_mm256_add_epi32(j, _mm256_set1_epi32(1)), _mm256_set1_epi32(~1));
  const __m256 y = _mm256_cvtepi32_ps(j);
  const __m256 r = _mm256_sub_ps(
      _mm256_sub_ps(_mm256_sub_ps(a, _mm256_mul_ps(y, _mm256_set1_ps(0.78515625f))),
                    _mm256_mul_ps(y, _mm256_set1_ps(2.4187564849853515625e-4f))),
      _mm256_mul_ps(y, _mm256_set1_ps(3.77489497744594108e-8f)));
  const __m256 zz = _mm256_mul_ps(r, r);
  __m256 c = _mm256_set1_ps(2.443315711809948e-5f);
  c = _mm256_sub_ps(_mm256_mul_ps(c, zz), _mm256_set1_ps(1.388731625493765e-3f));
  c = _mm256_add_ps(_mm256_mul_ps(c, zz), _mm256_set1_ps(4.166664568298827e-2f));
  c = _mm256_mul_ps(_mm256_mul_ps(c, zz), zz);
  c = _mm256_sub_ps(c, _mm256_mul_ps(_mm256_set1_ps(0.5f), zz));
  c = _mm256_add_ps(c, _mm256_set1_ps(1.0f));
  __m256 s = _mm256_set1_ps(-1.9515295891e-4f);
  s = _mm256_add_ps(_mm256_mul_ps(s, zz), _mm256_set1_ps(8.3321608736e-3f));
  s = _mm256_sub_ps(_mm256_mul_ps(s, zz), _mm256_set1_ps(1.6666654611e-1f));
  s = _mm256_mul_ps(_mm256_mul_ps(s, zz), r);
  s = _mm256_add_ps(s, r);
  const __m256 swap = _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(j, _mm256_set1_epi32(2)), _mm256_set1_epi32(2)));
  const __m256i vc = _mm256_castps_si256(_mm256_blendv_ps(c, s, swap));
  const __m256i vs = _mm256_castps_si256(_mm256_blendv_ps(s, c, swap));
  const __m256i four = _mm256_set1_epi32(4);
  const __m256i sign_c = _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(j, _mm256_set1_epi32(2)), four), 29);
  const __m256i sign_s = _mm256_slli_epi32(_mm256_and_si256(j, four), 29);
  cos_a = _mm256_castsi256_ps(_mm256_xor_si256(vc, sign_c));
  sin_a = _mm256_castsi256_ps(_mm256_xor_si256(vs, sign_s));
}

// As philox_words_x8 above, 4 counters per register.
inline void philox_words_x4(const PhiloxVecKey& k, __m256i g, __m256i r[4]) {
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0);
  const __m256i m1 = _mm256_set1_epi64x(kPhiloxM1);
  __m256i p0 = _mm256_mul_epu32(g, m0);
  __m256i c0 = _mm256_xor_si256(_mm256_srli_epi64(g, 32), _mm256_set1_epi32(static_cast<int>(k.hi1 ^ k.k0[0])));
  __m256i c1 = _mm256_set1_epi32(static_cast<int>(k.lo1));
  __m256i c2 = _mm256_xor_si256(_mm256_srli_epi64(p0, 32), _mm256_set1_epi32(static_cast<int>(k.c3 ^ k.k1[0])));
  __m256i c3 = p0;
  for (int i = 1; i < 10; ++i) {
    p0 = _mm256_mul_epu32(c0, m0);
    const __m256i p1 = _mm256_mul_epu32(c2, m1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1),
                          _mm256_set1_epi32(static_cast<int>(k.k0[i])));
    c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3),
                          _mm256_set1_epi32(static_cast<int>(k.k1[i])));
    c1 = p1;
    c3 = p0;
  }
  r[0] = c0;
  r[1] = c1;
  r[2] = c2;
  r[3] = c3;
}

// The 32 normals of the 8 counters c .. c + 7 (mod 2^62), elements 4c .. 4c + 31, in element order in z[0..3].
inline void philox_normal32(const PhiloxVecKey& k, uint64_t c, __m256 z[4]) {
  const __m256i base = _mm256_set1_epi64x(static_cast<long long>(c));
  const __m256i wrap = _mm256_set1_epi64x(static_cast<long long>(kPhiloxCtrMask));
  const __m256i ga = _mm256_and_si256(_mm256_add_epi64(base, _mm256_setr_epi64x(0, 1, 4, 5)), wrap);
  const __m256i gb = _mm256_and_si256(_mm256_add_epi64(base, _mm256_setr_epi64x(2, 3, 6, 7)), wrap);
  __m256i a[4], b[4], w[4];
  philox_words_x4(k, ga, a);
  philox_words_x4(k, gb, b);
  for (int i = 0; i < 4; ++i)
    w[i] = _mm256_castps_si256(
        _mm256_shuffle_ps(_mm256_castsi256_ps(a[i]), _mm256_castsi256_ps(b[i]), _MM_SHUFFLE(2, 0, 2, 0)));
  const __m256 m2 = _mm256_set1_ps(-2.0f), two_pi = _mm256_set1_ps(kTwoPiF);
  const __m256 rad0 = _mm256_sqrt_ps(_mm256_mul_ps(m2, poly_logf8(philox_uniform8(w[0]))));
  const __m256 rad1 = _mm256_sqrt_ps(_mm256_mul_ps(m2, poly_logf8(philox_uniform8(w[2]))));
  __m256 s0, c0, s1, c1;
  poly_sincosf8(_mm256_mul_ps(two_pi, philox_uniform8(w[1])), s0, c0);
  poly_sincosf8(_mm256_mul_ps(two_pi, philox_uniform8(w[3])), s1, c1);
  // as philox_normal64: u_k's 128-bit lane L holds counter 4L + k, then the two lanes are regrouped
  const __m256 A = _mm256_mul_ps(rad0, c0), B = _mm256_mul_ps(rad0, s0);
  const __m256 C = _mm256_mul_ps(rad1, c1), D = _mm256_mul_ps(rad1, s1);
  const __m256d t0 = _mm256_castps_pd(_mm256_unpacklo_ps(A, B)), t1 = _mm256_castps_pd(_mm256_unpackhi_ps(A, B));
  const __m256d t2 = _mm256_castps_pd(_mm256_unpacklo_ps(C, D)), t3 = _mm256_castps_pd(_mm256_unpackhi_ps(C, D));
  const __m256 u0 = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));
  const __m256 u1 = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
  const __m256 u2 = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));
  const __m256 u3 = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
  z[0] = _mm256_permute2f128_ps(u0, u1, 0x20);  // counters 0, 1
  z[1] = _mm256_permute2f128_ps(u2, u3, 0x20);  // 2, 3
  z[2] = _mm256_permute2f128_ps(u0, u1, 0x31);  // 4, 5
  z[3] = _mm256_permute2f128_ps(u2, u3, 0x31);  // 6, 7
}

#else
constexpr int kPhiloxLanes = 1;
#endif

// z[i] = philox_normal_z(key, ctr, g0 + i) for i < n (g0 + i mod 2^64, as the scalar counter). The vector
// levels draw whole groups of kPhiloxLanes counters (4 * kPhiloxLanes elements from a multiple of 4); a group
// that the range cuts (at an unaligned g0, or at its end) goes through a buffer.
inline void philox_normal_fill(uint64_t key, uint64_t ctr, uint64_t g0, int64_t n, float* z) {
  if (n <= 0) return;
#if defined(__AVX512F__) || defined(__AVX2__)
  constexpr int64_t kGroup = 4 * kPhiloxLanes;
  const PhiloxVecKey k(key, ctr);
  const uint64_t c0 = g0 >> 2;
  for (int64_t i = -static_cast<int64_t>(g0 & 3), j = 0; i < n; i += kGroup, j += kPhiloxLanes) {
    const uint64_t c = (c0 + static_cast<uint64_t>(j)) & kPhiloxCtrMask;
#if defined(__AVX512F__)
    __m512 v[4];
    philox_normal64(k, c, v);
    if (i >= 0 && i + kGroup <= n) {
      for (int u = 0; u < 4; ++u) _mm512_storeu_ps(z + i + 16 * u, v[u]);
      continue;
    }
    alignas(64) float t[kGroup];
    for (int u = 0; u < 4; ++u) _mm512_store_ps(t + 16 * u, v[u]);
#else
    __m256 v[4];
    philox_normal32(k, c, v);
    if (i >= 0 && i + kGroup <= n) {
      for (int u = 0; u < 4; ++u) _mm256_storeu_ps(z + i + 8 * u, v[u]);
      continue;
    }
    alignas(32) float t[kGroup];
    for (int u = 0; u < 4; ++u) _mm256_store_ps(t + 8 * u, v[u]);
#endif
    const int64_t lo = i < 0 ? -i : 0, hi = n - i < kGroup ? n - i : kGroup;
    for (int64_t l = lo; l < hi; ++l) z[i + l] = t[l];
  }
#else
  // whole blocks where the range holds them, single elements at its ends
  int64_t i = 0;
  for (; i < n && ((g0 + static_cast<uint64_t>(i)) & 3) != 0; ++i)
    z[i] = philox_normal_z(key, ctr, g0 + static_cast<uint64_t>(i));
  for (; i + 4 <= n; i += 4) philox_normal4(key, ctr, (g0 + static_cast<uint64_t>(i)) >> 2, z + i);
  for (; i < n; ++i) z[i] = philox_normal_z(key, ctr, g0 + static_cast<uint64_t>(i));
#endif
}

// The same z as compute type T (float or double) for the element loops that read z like a noise tensor:
// zf itself for float, widened into zt for double (exact). Both buffers hold n values.
template <typename T>
inline const T* philox_normal_block(uint64_t key, uint64_t ctr, uint64_t g0, int64_t n, float* zf, T* zt) {
  philox_normal_fill(key, ctr, g0, n, zf);
  if constexpr (std::is_same<T, float>::value) {
    return zf;
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) zt[i] = static_cast<T>(zf[i]);
    return zt;
  }
}

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff
