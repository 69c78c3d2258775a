// Block conversions fp16/bf16 <-> float32 with explicit vector intrinsics, for the AVX2 (+F16C) and
// AVX-512 builds of the kernel TUs. GCC 12 keeps the per-element conversions of convert.h scalar inside
// the fused element loop (and does not vectorise `_Float16` <-> float either), so the half-precision
// fused_step converts blocks of each input into float32 buffers here, runs the float32 element loop on
// the buffers, and converts the outputs back.
//
// Every function gives the same bits as the scalar conversions of convert.h (round to nearest even
// independent of MXCSR, overflow -> inf, NaN -> sign | 0x7E00 for fp16 and 0x7FC0 for bf16); the tail
// of a block that does not fill a vector uses those scalar conversions.
#pragma once

#include <stdint.h>

#include "convert.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__F16C__)
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

// One vector of float32 lanes (GCC's vector extensions give it the arithmetic and comparison operators,
// so pydiff_math.h's element function runs on it unchanged), and the conversions of one vector.
#if PYDIFF_BLOCK_CONVERT == 512
using VecF = __m512;
#else
using VecF = __m256;
#endif
constexpr int kVecLanes = static_cast<int>(sizeof(VecF) / sizeof(float));
// kVecLanes values from src / to dst (no alignment needed).
template <int DT>
inline VecF load_vec(const uint16_t* src);
template <int DT>
inline void store_vec(VecF v, uint16_t* dst);
#if PYDIFF_BLOCK_CONVERT == 512
inline VecF vec_set1(float v) { return _mm512_set1_ps(v); }
inline VecF vec_loadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vec_storeu(float* p, VecF v) { _mm512_storeu_ps(p, v); }
#else
inline VecF vec_set1(float v) { return _mm256_set1_ps(v); }
inline VecF vec_loadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vec_storeu(float* p, VecF v) { _mm256_storeu_ps(p, v); }
#endif

// dst[i] = float(src[i]), i < n.
template <int DT>
inline void load_block(const uint16_t* src, float* dst, int64_t n);
// dst[i] = storage(src[i]), i < n.
template <int DT>
inline void store_block(const float* src, uint16_t* dst, int64_t n);

#if PYDIFF_BLOCK_CONVERT == 512

template <>
inline VecF load_vec<kFloat16>(const uint16_t* src) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

template <>
inline void store_vec<kFloat16>(VecF v, uint16_t* dst) {
  const __m256i sign = _mm256_set1_epi16(static_cast<short>(0x8000));
  const __m256i qnan = _mm256_set1_epi16(0x7E00);
  __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // vcvtps2ph keeps the top NaN payload bits; convert.h (and c10::Half) give sign | 0x7E00
  // (a branch, not a blend: NaN is rare, and the blend costs ~10% of an fp16 step)
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  if (__builtin_expect(nan != 0, 0)) h = _mm256_mask_blend_epi16(nan, h, _mm256_or_si256(_mm256_and_si256(h, sign), qnan));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
}

template <>
inline VecF load_vec<kBFloat16>(const uint16_t* src) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

template <>
inline void store_vec<kBFloat16>(VecF v, uint16_t* dst) {
  const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), qnan = _mm512_set1_epi32(0x7FC0);
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, bias), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), qnan);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(r));
}

#else  // 256

template <>
inline VecF load_vec<kFloat16>(const uint16_t* src) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}

template <>
inline void store_vec<kFloat16>(VecF v, uint16_t* dst) {
  const __m128i sign = _mm_set1_epi16(static_cast<short>(0x8000));
  const __m128i qnan = _mm_set1_epi16(0x7E00);
  __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // vcvtps2ph keeps the top NaN payload bits; convert.h (and c10::Half) give sign | 0x7E00
  const __m256i nan32 = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extracti128_si256(nan32, 1));
  h = _mm_blendv_epi8(h, _mm_or_si128(_mm_and_si128(h, sign), qnan), nan16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
}

template <>
inline VecF load_vec<kBFloat16>(const uint16_t* src) {
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

template <>
inline void store_vec<kBFloat16>(VecF v, uint16_t* dst) {
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), qnan = _mm256_set1_epi32(0x7FC0);
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), lsb), 16);
  r = _mm256_blendv_epi8(r, qnan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  // r <= 0xFFFF, so the unsigned-saturating pack is exact
  const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
}

#endif

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

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff

#endif  // PYDIFF_BLOCK_CONVERT
