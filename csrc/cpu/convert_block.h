// Vector conversions fp16/bf16 <-> float32 with explicit intrinsics, for the AVX2 (+F16C) and AVX-512
// builds of the kernel TUs. GCC 12 keeps the per-element conversions of convert.h scalar inside the
// fused element loop (and does not vectorise `_Float16` <-> float either), so the half-precision
// fused_step converts whole vectors here (fused_run_vec) or blocks into float32 buffers (load_block /
// store_block, for the configurations whose element function exists as scalar code only).
//
// Every function gives the same bits as the scalar conversions of convert.h (round to nearest even
// independent of MXCSR, overflow -> inf, NaN -> sign | 0x7E00 for fp16 and 0x7FC0 for bf16; the fp16
// raw stores with canonical_nan after them); the tail of a block that does not fill a vector uses those
// scalar conversions.
#pragma once

#include <stdint.h>

#include "convert.h"

// PYDIFF_HALF_VEC_256 (set by a TU before it includes this): 256-bit vectors at the avx512 level too.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__F16C__) && !defined(PYDIFF_HALF_VEC_256)
#define PYDIFF_BLOCK_CONVERT 512
#elif defined(__AVX2__) && defined(__F16C__)
#define PYDIFF_BLOCK_CONVERT 256
#endif

#if defined(PYDIFF_BLOCK_CONVERT)
#include <immintrin.h>

// GCC 12's AVX-512 intrinsics start from an "undefined" register (`__m512 __Y = __Y;`), which
// -Wmaybe-uninitialized reports at every inlined use (a false positive, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {
// The vector width names an inline namespace: a TU of one level may use 256-bit vectors while the other
// TUs of that level use 512-bit ones (PYDIFF_HALF_VEC_256), and their inline functions (vec_set1, load_vec,
// ...) must then be different symbols, not one definition the linker picks.
#if PYDIFF_BLOCK_CONVERT == 512
inline namespace vec512 {
#else
inline namespace vec256 {
#endif

// One vector of float32 lanes, a plain GCC vector type: its arithmetic and comparison operators let
// pydiff_math.h's element function run on it unchanged, and unlike __m256/__m512 it carries no
// may_alias / alignment attributes, which GCC drops (-Wignored-attributes) when it is a template
// argument (Row<VecF>). The intrinsics take and give it through same-size vector casts.
#if PYDIFF_BLOCK_CONVERT == 512
typedef float VecF __attribute__((vector_size(64)));
#else
typedef float VecF __attribute__((vector_size(32)));
#endif
constexpr int kVecLanes = static_cast<int>(sizeof(VecF) / sizeof(float));

// kVecLanes values from src / to dst (no alignment needed), the bits of convert.h.
template <int DT>
inline VecF load_vec(const uint16_t* src);
template <int DT>
inline void store_vec(VecF v, uint16_t* dst);
// store_vec(w, dw) and store_vec(o, do_) with one test for both of the rare lanes (NaN; for bf16 with
// vcvtneps2bf16 also denormals) that need a second conversion: the test and fix-up are a branch, not a
// blend, and one per pair, not per vector (each test and branch cost ~8% of an fp16 step).
template <int DT>
inline void store_vec2(VecF w, uint16_t* dw, VecF o, uint16_t* do_);

// fp16 stores of the fused_step vector loop (fused_step_impl.h) leave the NaN payload of vcvtps2ph and
// fix it after the task: store_vec_raw converts and stores v, the loop folds its outputs into one vector that
// is NaN once any output is (store_group below), vec_any_nan says whether it is, and canonical_nan rewrites
// the NaN halves of a range to convert.h's sign | 0x7E00. The fp16 DDIM step (8x4x128x128, one thread,
// AVX-512): 121 us with a test and branch per pair, 115 us tracking the max of the stored |out| bits (two
// integer operations per vector), 99.6 us (with the Unit rows of fused_step_impl.h) with a running sum,
// ~95 us with no NaN handling at all (before store_group's four vectors per iteration).
inline void store_vec_raw_f16(VecF v, uint16_t* dst);
inline void canonical_nan_f16(uint16_t* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if ((p[i] & 0x7FFF) > 0x7C00) p[i] = static_cast<uint16_t>((p[i] & 0x8000) | 0x7E00);
}

#if PYDIFF_BLOCK_CONVERT == 512
inline VecF vec_set1(float v) { return (VecF)_mm512_set1_ps(v); }
inline bool vec_any_nan(VecF v) { return _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q) != 0; }
inline VecF vec_loadu(const float* p) { return (VecF)_mm512_loadu_ps(p); }
inline void vec_storeu(float* p, VecF v) { _mm512_storeu_ps(p, (__m512)v); }
#else
inline VecF vec_set1(float v) { return (VecF)_mm256_set1_ps(v); }
inline bool vec_any_nan(VecF v) { return _mm256_movemask_ps(_mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q)) != 0; }
inline VecF vec_loadu(const float* p) { return (VecF)_mm256_loadu_ps(p); }
inline void vec_storeu(float* p, VecF v) { _mm256_storeu_ps(p, (__m256)v); }
#endif

// dst[i] = float(src[i]), i < n.
template <int DT>
inline void load_block(const uint16_t* src, float* dst, int64_t n);
// dst[i] = storage(src[i]), i < n.
template <int DT>
inline void store_block(const float* src, uint16_t* dst, int64_t n);

#if PYDIFF_BLOCK_CONVERT == 512

inline __m256i ph_from_ps(__m512 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// vcvtps2ph keeps the top NaN payload bits; convert.h (and c10::Half) give sign | 0x7E00
inline __m256i ph_fix_nan(__m512 v, __m256i h) {
  const __m256i sign = _mm256_set1_epi16(static_cast<short>(0x8000));
  const __m256i qnan = _mm256_set1_epi16(0x7E00);
  return _mm256_mask_blend_epi16(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), h,
                                 _mm256_or_si256(_mm256_and_si256(h, sign), qnan));
}

template <>
inline VecF load_vec<kFloat16>(const uint16_t* src) {
  return (VecF)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

template <>
inline void store_vec<kFloat16>(VecF v_, uint16_t* dst) {
  const __m512 v = (__m512)v_;
  __m256i h = ph_from_ps(v);
  if (__builtin_expect(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0, 0)) h = ph_fix_nan(v, h);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
}

inline void store_vec_raw_f16(VecF v, uint16_t* dst) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), ph_from_ps((__m512)v));
}

template <>
inline VecF load_vec<kBFloat16>(const uint16_t* src) {
  // word i to the high half of lane i, zeros below: one vpermw with zero-masking instead of vpmovzxwd and
  // vpslld (the bf16 DDIM step, 8x4x128x128, one thread, vcvtneps2bf16 stores: 107.5 -> 99.6 us)
  const __m512i idx = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0,
                                       3, 0, 2, 0, 1, 0, 0, 0);
  const __m512i u = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return (VecF)_mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, idx, u));
}

// convert.h's float_to_bf16 with integer operations: round to nearest even, NaN -> 0x7FC0.
inline __m256i bf16_from_ps_exact(__m512 v) {
  const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), qnan = _mm512_set1_epi32(0x7FC0);
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, bias), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), qnan);
  return _mm512_cvtepi32_epi16(r);
}

#if defined(__AVX512BF16__)
// vcvtneps2bf16 (fused_step_bf16_avx512bf16.cpp, run where CPUID reports AVX512-BF16) rounds to
// nearest even like float_to_bf16 but flushes denormal inputs to signed zero and keeps NaN payload
// bits; vfpclassps flags those lanes (QNaN 0x01, SNaN 0x80, denormal 0x20), and the integer path
// converts their vectors. The bf16 DDIM step (8x4x128x128, one thread): 161 us with the integer
// conversion, 119 us so.
constexpr int kBf16Special = 0x01 | 0x80 | 0x20;
inline __m256i bf16_from_ps_fast(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
inline bool bf16_special2(__m512 w, __m512 o) {
  return (_mm512_fpclass_ps_mask(w, kBf16Special) | _mm512_fpclass_ps_mask(o, kBf16Special)) != 0;
}
#else
// the rounding of bf16_from_ps_exact without its NaN select, for vectors without NaN
inline __m256i bf16_from_ps_fast(__m512 v) {
  const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, bias), lsb), 16));
}
inline bool bf16_special2(__m512 w, __m512 o) { return _mm512_cmp_ps_mask(w, o, _CMP_UNORD_Q) != 0; }
#endif

template <>
inline void store_vec<kBFloat16>(VecF v, uint16_t* dst) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bf16_from_ps_exact((__m512)v));
}

template <>
inline void store_vec2<kBFloat16>(VecF w_, uint16_t* dw, VecF o_, uint16_t* do_) {
  const __m512 w = (__m512)w_, o = (__m512)o_;
  __m256i hw, ho;
  if (__builtin_expect(bf16_special2(w, o), 0)) {
    hw = bf16_from_ps_exact(w);
    ho = bf16_from_ps_exact(o);
  } else {
    hw = bf16_from_ps_fast(w);
    ho = bf16_from_ps_fast(o);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dw), hw);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(do_), ho);
}

#else  // 256

inline __m128i ph_from_ps(__m256 v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// vcvtps2ph keeps the top NaN payload bits; convert.h (and c10::Half) give sign | 0x7E00
inline __m128i ph_fix_nan(__m256 v, __m128i h) {
  const __m128i sign = _mm_set1_epi16(static_cast<short>(0x8000));
  const __m128i qnan = _mm_set1_epi16(0x7E00);
  const __m256i nan32 = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extracti128_si256(nan32, 1));
  return _mm_blendv_epi8(h, _mm_or_si128(_mm_and_si128(h, sign), qnan), nan16);
}

template <>
inline VecF load_vec<kFloat16>(const uint16_t* src) {
  return (VecF)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}

template <>
inline void store_vec<kFloat16>(VecF v_, uint16_t* dst) {
  const __m256 v = (__m256)v_;
  __m128i h = ph_from_ps(v);
  if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0, 0)) h = ph_fix_nan(v, h);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
}

inline void store_vec_raw_f16(VecF v, uint16_t* dst) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), ph_from_ps((__m256)v));
}

template <>
inline VecF load_vec<kBFloat16>(const uint16_t* src) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  return (VecF)_mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

// convert.h's float_to_bf16 with integer operations: round to nearest even, NaN -> 0x7FC0 when nan.
inline __m128i bf16_from_ps(__m256 v, bool nan) {
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), qnan = _mm256_set1_epi32(0x7FC0);
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), lsb), 16);
  if (nan) r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // r <= 0xFFFF, so the unsigned-saturating pack is exact
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

template <>
inline void store_vec<kBFloat16>(VecF v, uint16_t* dst) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), bf16_from_ps((__m256)v, true));
}

template <>
inline void store_vec2<kBFloat16>(VecF w_, uint16_t* dw, VecF o_, uint16_t* do_) {
  const __m256 w = (__m256)w_, o = (__m256)o_;
#if defined(__AVX512BF16__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
  // the 256-bit form of the avx512 level's vcvtneps2bf16 path (PYDIFF_HALF_VEC_256 above), same test
  constexpr int kSpecial = 0x01 | 0x80 | 0x20;  // QNaN, SNaN, denormal
  if (__builtin_expect((_mm256_fpclass_ps_mask(w, kSpecial) | _mm256_fpclass_ps_mask(o, kSpecial)) != 0, 0)) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dw), bf16_from_ps(w, true));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(do_), bf16_from_ps(o, true));
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dw), (__m128i)_mm256_cvtneps_pbh(w));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(do_), (__m128i)_mm256_cvtneps_pbh(o));
  }
#else
  const bool nan = _mm256_movemask_ps(_mm256_cmp_ps(w, o, _CMP_UNORD_Q)) != 0;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dw), bf16_from_ps(w, __builtin_expect(nan, 0)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(do_), bf16_from_ps(o, nan));
#endif
}

#endif

// ------------------------------------------------------------------------------------------ group stores
// The fused_step vector loop (fused_run_vec of fused_step_impl.h) computes kGroupVecs vectors, then stores them
// with store_group: out (and w_out when WOUT) of kGroupVecs * kVecLanes consecutive elements. Four vectors per
// iteration, and the NaN check one FMA per pair of output vectors (fma(o0, o1, nan) is NaN once o0 or o1 is):
// the fp16 DDIM step (8x4x128x128, one thread, 256-bit vectors, C++ harness of the vector loop) 90.2 -> 81.5 us,
// the bf16 step (two vcvtne2ps2bf16 pairs per iteration, below) 98.1 -> 84.0 us; fp32 87 us in the same run.
constexpr int kGroupVecs = 4;
// (PYDIFF_HD: always inlined; GCC otherwise keeps store_group out of line in most of the ~80 loop
// instantiations of a TU and passes the vectors through memory: the fp16 step 51 -> 73 us)
inline VecF vec_fma(VecF a, VecF b, VecF c);
#if PYDIFF_BLOCK_CONVERT == 512
inline VecF vec_fma(VecF a, VecF b, VecF c) { return (VecF)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); }
#else
inline VecF vec_fma(VecF a, VecF b, VecF c) { return (VecF)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#endif

// Whether store_group<DT> leaves NaN outputs with a raw payload, for canonical_nan<DT> after the task: the
// loop then tracks `nan` (any NaN output makes it NaN; a NaN w_out always makes its out NaN too, out being
// O * (... + B0 * w)).
template <int DT>
constexpr bool group_defers_nan();
// Rewrites the NaN halves of p[0, n) to convert.h's canonical NaN.
template <int DT>
inline void canonical_nan(uint16_t* p, int64_t n);

template <>
constexpr bool group_defers_nan<kFloat16>() {
  return true;
}
template <>
inline void canonical_nan<kFloat16>(uint16_t* p, int64_t n) {
  canonical_nan_f16(p, n);
}

template <int DT, bool WOUT>
PYDIFF_HD void store_group(const VecF* w, uint16_t* dw, const VecF* o, uint16_t* do_, VecF& nan);

template <int DT, bool WOUT>
PYDIFF_HD void store_group_f16(const VecF* w, uint16_t* dw, const VecF* o, uint16_t* do_, VecF& nan) {
#pragma GCC unroll 4
  for (int u = 0; u < kGroupVecs; ++u) {
    if (WOUT) store_vec_raw_f16(w[u], dw + u * kVecLanes);
    store_vec_raw_f16(o[u], do_ + u * kVecLanes);
  }
#pragma GCC unroll 4
  for (int u = 0; u < kGroupVecs; u += 2) nan = vec_fma(o[u], o[u + 1], nan);
}

#if PYDIFF_BLOCK_CONVERT == 512 && defined(__AVX512BF16__)
// bf16 with AVX512-BF16: vcvtne2ps2bf16 converts two vectors into one (2 cycles for 32 elements here, the
// same as vcvtneps2bf16 for 16). It rounds to nearest even like float_to_bf16 but flushes denormal inputs to
// signed zero and keeps NaN payload bits. So the check is on the converted words, one vptestnmw per 32: an
// exponent field of zero (a zero, or a flushed denormal) sends the pair's vectors through the integer
// rounding (bf16_from_ps_exact; exact zeros take it needlessly and give the same bits), and NaN words are
// rewritten after the task (canonical_nan). Against vfpclassps on every float32 vector: 92.2 -> 84.0 us.
template <>
constexpr bool group_defers_nan<kBFloat16>() {
  return true;
}
template <>
inline void canonical_nan<kBFloat16>(uint16_t* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if ((p[i] & 0x7FFF) > 0x7F80) p[i] = 0x7FC0;
}
PYDIFF_HD void store_pair_bf16(VecF lo, VecF hi, uint16_t* dst, __m512i h) {
  if (__builtin_expect(_mm512_testn_epi16_mask(h, _mm512_set1_epi16(0x7F80)) != 0, 0)) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bf16_from_ps_exact((__m512)lo));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), bf16_from_ps_exact((__m512)hi));
  } else {
    _mm512_storeu_si512(dst, h);
  }
}
template <int DT, bool WOUT>
PYDIFF_HD void store_group_bf16(const VecF* w, uint16_t* dw, const VecF* o, uint16_t* do_, VecF& nan) {
#pragma GCC unroll 4
  for (int u = 0; u < kGroupVecs; u += 2) {
    const __m512i ho = (__m512i)_mm512_cvtne2ps_pbh((__m512)o[u + 1], (__m512)o[u]);
    if (WOUT) {
      const __m512i hw = (__m512i)_mm512_cvtne2ps_pbh((__m512)w[u + 1], (__m512)w[u]);
      store_pair_bf16(w[u], w[u + 1], dw + u * kVecLanes, hw);
    }
    store_pair_bf16(o[u], o[u + 1], do_ + u * kVecLanes, ho);
    nan = vec_fma(o[u], o[u + 1], nan);
  }
}
#else
// bf16 by integer rounding (exact). One NaN test per group, on two FMAs of its outputs (NaN once any output
// is; a NaN w_out makes its out NaN too; inf * 0 or inf - inf only send a group the careful way needlessly):
// groups without NaN round without the per-vector NaN select, and on AVX2 two vectors' words are packed into
// one 256-bit store (vpackusdw + vpermq); groups with NaN go per vector with the select (store_vec/store_vec2).
// The bf16 DDIM step at the avx2 level (8x4x128x128, one thread, no w_out, two runs against the previous code):
// 145..147 -> 125..134 us (fp32 83..87); with w_out 173..177 -> 158..163.
template <>
constexpr bool group_defers_nan<kBFloat16>() {
  return false;
}
template <>
inline void canonical_nan<kBFloat16>(uint16_t*, int64_t) {}
#if PYDIFF_BLOCK_CONVERT == 512
inline void store_pair_bf16_nonan(VecF lo, VecF hi, uint16_t* dst) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bf16_from_ps_fast((__m512)lo));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), bf16_from_ps_fast((__m512)hi));
}
inline bool group_has_nan(VecF t) { return _mm512_cmp_ps_mask((__m512)t, (__m512)t, _CMP_UNORD_Q) != 0; }
#else
// the rounding of bf16_from_ps without its NaN select, two vectors into one store of 16 words
inline void store_pair_bf16_nonan(VecF lo, VecF hi, uint16_t* dst) {
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
  const __m256i a = _mm256_castps_si256((__m256)lo), b = _mm256_castps_si256((__m256)hi);
  const __m256i ra = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(a, bias),
                                                        _mm256_and_si256(_mm256_srli_epi32(a, 16), one)), 16);
  const __m256i rb = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, bias),
                                                        _mm256_and_si256(_mm256_srli_epi32(b, 16), one)), 16);
  // words <= 0xFFFF: the unsigned-saturating pack is exact; it interleaves the 128-bit lanes (a0 b0 a1 b1),
  // vpermq restores a0 a1 b0 b1
  const __m256i h = _mm256_permute4x64_epi64(_mm256_packus_epi32(ra, rb), _MM_SHUFFLE(3, 1, 2, 0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
}
inline bool group_has_nan(VecF t) {
  return _mm256_movemask_ps(_mm256_cmp_ps((__m256)t, (__m256)t, _CMP_UNORD_Q)) != 0;
}
#endif
template <int DT, bool WOUT>
PYDIFF_HD void store_group_bf16(const VecF* w, uint16_t* dw, const VecF* o, uint16_t* do_, VecF&) {
  static_assert(kGroupVecs == 4, "the NaN test below covers four output vectors");
  if (__builtin_expect(group_has_nan(vec_fma(vec_fma(o[0], o[1], o[2]), o[3], o[0])), 0)) {
#pragma GCC unroll 4
    for (int u = 0; u < kGroupVecs; ++u) {
      if (WOUT)
        store_vec2<kBFloat16>(w[u], dw + u * kVecLanes, o[u], do_ + u * kVecLanes);
      else
        store_vec<kBFloat16>(o[u], do_ + u * kVecLanes);
    }
    return;
  }
#pragma GCC unroll 4
  for (int u = 0; u < kGroupVecs; u += 2) {
    if (WOUT) store_pair_bf16_nonan(w[u], w[u + 1], dw + u * kVecLanes);
    store_pair_bf16_nonan(o[u], o[u + 1], do_ + u * kVecLanes);
  }
}
#endif

template <int DT, bool WOUT>
PYDIFF_HD void store_group(const VecF* w, uint16_t* dw, const VecF* o, uint16_t* do_, VecF& nan) {
  if constexpr (DT == kFloat16)
    store_group_f16<DT, WOUT>(w, dw, o, do_, nan);
  else
    store_group_bf16<DT, WOUT>(w, dw, o, do_, nan);
}

template <int DT>
inline void load_block(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kVecLanes <= n; i += kVecLanes) vec_storeu(dst + i, load_vec<DT>(src + i));
  for (; i < n; ++i) dst[i] = Traits<DT>::load(src[i]);
}

template <int DT>
inline void store_block(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + kVecLanes <= n; i += kVecLanes) store_vec<DT>(vec_loadu(src + i), dst + i);
  for (; i < n; ++i) dst[i] = Traits<DT>::store(src[i]);
}

}  // namespace vec512 / vec256
}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff

#endif  // PYDIFF_BLOCK_CONVERT
