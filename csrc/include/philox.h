// Philox4x32-10 counter-based RNG: the integer part of the pydiff noise (docs/ops.md).
//
// Shared by the C++ (csrc/cpu) and CUDA (csrc/cuda) kernels so that both produce bit-identical
// integers for the same (seed, offset, g). The normal transform (uniforms, polynomial
// log/cos, Box-Muller) is in pydiff_math.h. Header-only, no dependencies beyond <stdint.h>.
//
// Reference: Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.
#pragma once

#include "pydiff_hd.h"
#include "pydiff_stdint.h"

namespace pydiff {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Philox4x32 {
  uint32_t v[4];
};

PYDIFF_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

// The raw Philox4x32-10 block: counter (c0..c3), key (k0, k1).
PYDIFF_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                   uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxM0, c0, hi0, lo0);
    philox_mulhilo(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  Philox4x32 r;
  r.v[0] = c0;
  r.v[1] = c1;
  r.v[2] = c2;
  r.v[3] = c3;
  return r;
}

// The block of counter c: key = (seed lo, seed hi), ctr = (c lo, c hi, offset lo, offset hi). Its four words
// give the normals of elements 4c .. 4c + 3 (pydiff_math.h, docs/ops.md).
PYDIFF_HD Philox4x32 philox_block(uint64_t seed, uint64_t offset, uint64_t c) {
  return philox4x32_10(static_cast<uint32_t>(c), static_cast<uint32_t>(c >> 32), static_cast<uint32_t>(offset),
                       static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

}  // namespace pydiff
