// Scalar <-> storage conversions for the CPU kernels. float16/bfloat16 are handled by bit
// manipulation only (no F16C, no compiler extensions), branch-free so that loops vectorise;
// stores round to nearest even, NaN stays NaN, overflow gives inf (like c10::Half / c10::BFloat16).
#pragma once

#include <stdint.h>
#include <string.h>

#include "pydiff_abi.h"
#include "pydiff_hd.h"

namespace pydiff {
namespace cpu {

static inline float f32_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

// IEEE half -> float (M. Dukhan's FP16 library, the algorithm c10::Half uses).
static inline float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = 0x1.0p-112f;
  const float normalized = f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denormalized_cutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < denormalized_cutoff ? f32_to_bits(denormalized) : f32_to_bits(normalized));
  return f32_from_bits(result);
}

// float -> IEEE half, round to nearest even.
static inline uint16_t float_to_half(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  const uint32_t w = f32_to_bits(f);
  const float abs_f = f32_from_bits(w & 0x7FFFFFFFu);
  float base = (abs_f * scale_to_inf) * scale_to_zero;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_to_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float bf16_to_float(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

// float -> bfloat16, round to nearest even; NaN -> canonical quiet NaN 0x7FC0 (as c10::BFloat16).
static inline uint16_t float_to_bf16(float f) {
  const uint32_t u = f32_to_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(is_nan ? 0x7FC0u : rounded);
}

// Traits: storage type S, compute type T, load/store (the Conv policy of pydiff_math.h's fused_step_at).
// always_inline: the kernel TUs are compiled once per ISA level, and an out-of-line copy of an inline
// member (a weak symbol) could be shared between levels by the linker.
template <int DT>
struct Traits;

template <>
struct Traits<kFloat32> {
  using S = float;
  using T = float;
  PYDIFF_HD static T load(S v) { return v; }
  PYDIFF_HD static S store(T v) { return v; }
};
template <>
struct Traits<kFloat64> {
  using S = double;
  using T = double;
  PYDIFF_HD static T load(S v) { return v; }
  PYDIFF_HD static S store(T v) { return v; }
};
template <>
struct Traits<kFloat16> {
  using S = uint16_t;
  using T = float;
  PYDIFF_HD static T load(S v) { return half_to_float(v); }
  PYDIFF_HD static S store(T v) { return float_to_half(v); }
};
template <>
struct Traits<kBFloat16> {
  using S = uint16_t;
  using T = float;
  PYDIFF_HD static T load(S v) { return bf16_to_float(v); }
  PYDIFF_HD static S store(T v) { return float_to_bf16(v); }
};

}  // namespace cpu
}  // namespace pydiff
