// fused_step on the CPU (docs/ops.md), for the dtype PYDIFF_DT: OpenMP over (sample, chunk) tasks; per
// task the coefficient row (index rule of pydiff_math.h) is loaded once, then one `#pragma omp simd` loop
// runs pydiff_math.h's fused_step_at with the configuration's compile-time flags, so each loop is
// straight-line arithmetic that vectorises. Philox noise is drawn first, per block, by the explicit vector
// generator of philox_vec.h (the vectoriser emulates its 32x32->64 products on 64-bit lanes).
// `omp simd` asserts what the contract guarantees: out may be x and w_out may be m, m2 or a history
// tensor (identical storage), and every element is read before it is written, so the iterations are
// independent despite the aliasing.
//
// fp16/bf16 in the AVX2 and AVX-512 builds (convert_block.h): without var, the element function runs on
// whole vectors converted in registers (fused_run_vec; Philox z from a float32 block buffer as above); with
// var, per task, blocks of kBlockElems elements of every input are converted to float32 stack buffers, the
// same element function runs on the buffers, and out / w_out are converted back (fused_run_blocked); the
// whole block is read before any of it is written, so the aliasing above stays safe. The baseline build
// converts per element (convert.h). bf16 at the avx512 level runs a second compilation of this file with
// vcvtneps2bf16 / vcvtne2ps2bf16 where the CPU has AVX512-BF16 (fused_step_bf16_avx512bf16.cpp).
#pragma once

#include <limits>
#include <type_traits>

#include "convert_block.h"
#include "kernel_common.h"
#include "philox_vec.h"

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {
namespace {

// F with the static clip left out (StepFlags::NOCLIP of pydiff_math.h).
template <class F>
struct NoClip : F {
  static constexpr bool NOCLIP = true;
};
// F with the products by P and O left out (StepFlags::UNIT): the row has P = 1 and O = 1, as every
// eps-prediction DDIM / DDPM row does, and 1*v is v bit for bit.
template <class F>
struct Unit : F {
  static constexpr bool UNIT = true;
};

// body(NoClip<F>{}) when the task's row has CLIP = +inf (the default: no clip) and F has no threshold,
// else body(F{}). The clamp is 8 of the ~20 vector operations of a DDIM element, and with cache-resident
// data the step is bound by those operations, not by memory: leaving it out took the fp32 DDIM step
// (8x4x128x128, one thread, AVX-512) from 156 to 99 us, fp16 from 194 to 133 us.
// With UNIT_OK, a NoClip row with P = O = 1 runs Unit<NoClip<F>>. Only the half-precision vector loop asks
// for it: there the step is bound by its vector operations (the conversions add four per 16 elements),
// and leaving out two of the ten products and sums took the fp16 DDIM step (same size, one thread) from
// 113.7 to 102.2 us; the fp32 step is bound by memory at that size (96 us either way), so fp32 and fp64
// do not pay for the extra instantiations.
template <class F, bool UNIT_OK = false, typename T, class Body>
inline void with_clip(const Row<T>& r, Body&& body) {
  if constexpr (!F::THR) {
    if (r.c[kCLIP] == std::numeric_limits<T>::infinity()) {
      if constexpr (UNIT_OK) {
        if (r.c[kP] == T(1) && r.c[kO] == T(1)) {
          body(Unit<NoClip<F>>{});
          return;
        }
      }
      body(NoClip<F>{});
      return;
    }
  }
  body(F{});
}

// Philox noise: per task, blocks of kPhiloxBlock z are drawn with the vector generator (philox_vec.h) into
// a buffer, and the element loop reads z from it as from a noise tensor: F as the tensor-noise configuration
// (fused_step_value only asks whether there is noise), on pointers advanced to the block's first element.
// fp64 widens the float32 z to double in the buffer (exact), the conversion fused_step_at makes.

template <class F>
struct ZBuffer : F {
  static constexpr int NOISE = kNoiseTensor;
};

template <typename S>
StepPtrs<S> step_ptrs_from(const StepPtrs<S>& p, int64_t g, const S* z) {
  auto at = [g](auto* q) { return q ? q + g : q; };
  StepPtrs<S> r;
  r.x = at(p.x);
  r.m = at(p.m);
  r.m2 = at(p.m2);
  r.var = at(p.var);
  for (int k = 0; k < kKMax; ++k) r.h[k] = at(p.h[k]);
  r.noise = z;
  r.out = at(p.out);
  r.w_out = at(p.w_out);
  return r;
}

// The tasks of one fused_step launch (kernel_common.h's for_each_task): with Philox noise the smaller tasks of
// philox_vec.h (kPhiloxTask), else kChunk elements. body(b, g0, g1).
template <class F, class Body>
inline void for_each_step_task(const FusedStepArgs& a, int nt, Body&& body) {
  constexpr bool philox = F::NOISE == kNoisePhilox;
  for_each_task(a.B, a.N, philox ? kPhiloxTask : kChunk, philox ? kPhiloxParallelMin : kParallelMin, nt,
                [&](int64_t, int64_t b, int64_t g0, int64_t g1) { body(b, g0, g1); });
}

template <int DT, class F>
void fused_run(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const StepPtrs<S> p = step_ptrs<S>(a);
  const T* thr = static_cast<const T*>(a.threshold);
  for_each_step_task<F>(a, nt, [&](int64_t b, int64_t g0, int64_t g1) {
    const StepPtrs<S> q = p;  // task-local copies: the vectoriser sees loop-invariant pointers and row
    const Row<T> r = args_row<T>(a, b);
    const T s = F::THR ? thr[b] : T(0);
    with_clip<F>(r, [&](auto flags) {
      using G = decltype(flags);
      // (S != T: fp16 / bf16 at the baseline level, where the generator is the scalar function anyway and
      // a storage-typed buffer would round z: those keep philox_normal_z per element)
      if constexpr (F::NOISE == kNoisePhilox && std::is_same<S, T>::value) {
        alignas(64) float zf[kPhiloxBlock];
        alignas(64) S zs[std::is_same<S, float>::value ? 1 : kPhiloxBlock];
        for (int64_t gb = g0; gb < g1; gb += kPhiloxBlock) {
          const int64_t n = imin(kPhiloxBlock, g1 - gb);
          const S* z = philox_normal_block(key, ctr, static_cast<uint64_t>(gb), n, zf, zs);
          const StepPtrs<S> qb = step_ptrs_from(q, gb, z);
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) fused_step_at<ZBuffer<G>, T, Tr>(qb, i, r, s, key, ctr);
        }
      } else {
#pragma omp simd
        for (int64_t g = g0; g < g1; ++g) fused_step_at<G, T, Tr>(q, g, r, s, key, ctr);
      }
    });
  });
}

#if defined(PYDIFF_BLOCK_CONVERT)
// Elements per block: the buffers (up to 6 history + 6 other inputs/outputs, 2 KiB each) stay in L1.
constexpr int64_t kBlockElems = 512;

template <int DT, class F>
void fused_run_blocked(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using T = float;
  const StepPtrs<uint16_t> p = step_ptrs<uint16_t>(a);
  const T* thr = static_cast<const T*>(a.threshold);
  for_each_step_task<F>(a, nt, [&](int64_t b, int64_t g0, int64_t g1) {
    constexpr int KB = F::K > 0 ? F::K : 1;  // (in the lambda: see fused_step_backward.cpp)
    const Row<T> r = args_row<T>(a, b);
    const T s = F::THR ? thr[b] : T(0);
    alignas(64) T bx[kBlockElems], bm[kBlockElems], bm2[F::M2 ? kBlockElems : 1], bv[F::VAR ? kBlockElems : 1];
    alignas(64) T bz[F::NOISE != kNoNoise ? kBlockElems : 1], bh[KB][F::K > 0 ? kBlockElems : 1];
    alignas(64) T bo[kBlockElems], bw[F::WOUT ? kBlockElems : 1];
    for (int64_t gb = g0; gb < g1; gb += kBlockElems) {
      const int64_t n = imin(kBlockElems, g1 - gb);
      load_block<DT>(p.x + gb, bx, n);
      load_block<DT>(p.m + gb, bm, n);
      if (F::M2) load_block<DT>(p.m2 + gb, bm2, n);
      if (F::VAR) load_block<DT>(p.var + gb, bv, n);
      if (F::NOISE == kNoiseTensor) load_block<DT>(p.noise + gb, bz, n);
      if (F::NOISE == kNoisePhilox) philox_normal_fill(key, ctr, static_cast<uint64_t>(gb), n, bz);
      PYDIFF_UNROLL
      for (int k = 0; k < F::K; ++k) load_block<DT>(p.h[k] + gb, bh[k], n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        T h[KB];
        PYDIFF_UNROLL
        for (int k = 0; k < F::K; ++k) h[k] = bh[k][i];
        const T z = F::NOISE != kNoNoise ? bz[i] : T(0);
        T w;
        bo[i] = fused_step_value<F>(r, s, bx[i], bm[i], F::M2 ? bm2[i] : T(0), F::VAR ? bv[i] : T(0), h, z, w);
        if (F::WOUT) bw[i] = w;
      }
      if (F::WOUT) store_block<DT>(bw, p.w_out + gb, n);
      store_block<DT>(bo, p.out + gb, n);
    }
  });
}

// fp16/bf16 without var: the element function runs on whole vectors (VecF, kVecLanes floats) converted in
// registers, so no float32 copy of a block is written and read back; kGroupVecs vectors per iteration
// (convert_block.h's store_group), all of a group's inputs loaded before its outputs are stored (the aliasing
// rule above). The tail of a range takes single vectors with the checked stores, then the scalar path, which
// rounds alike (same operations, same conversions bit for bit). Philox noise: per block of kPhiloxBlock
// elements, z is drawn into a float32 buffer (as in fused_run) and read from there as a vector; the scalar
// tail draws its own z per element, the same bits (philox_vec.h). Against fused_run_blocked, which also
// copies x, m, out and w_out through float32 buffers: the Philox DDIM step (8x4x128x128, two threads) 904 ->
// 808 us for fp16, 906 -> 806 for bf16 (fp32: 797 in the same run). var needs exp per lane, which exists
// as scalar code only: it keeps fused_run_blocked.
template <int DT, class F>
void fused_run_vec(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using Tr = Traits<DT>;
  using T = float;
  constexpr bool kPhilox = F::NOISE == kNoisePhilox;
  StepPtrs<uint16_t> p = step_ptrs<uint16_t>(a);
  p.var = nullptr;
  const T* thr = static_cast<const T*>(a.threshold);
  for_each_step_task<F>(a, nt, [&](int64_t b, int64_t g0, int64_t g1) {
    constexpr int KB = F::K > 0 ? F::K : 1;  // (in the lambda: see fused_step_backward.cpp)
    const StepPtrs<uint16_t> q = p;
    const Row<T> r = args_row<T>(a, b);
    const T s = F::THR ? thr[b] : T(0);
    Row<VecF> rv;
    for (int k = 0; k < kNCoef; ++k) rv.c[k] = vec_set1(r.c[k]);
    const VecF sv = vec_set1(s), zero = vec_set1(0.0f);
    with_clip<F, true>(r, [&](auto flags) {
      using G = decltype(flags);
      alignas(64) float zf[kPhilox ? kPhiloxBlock : 1];  // Philox: z of element e is zf[e - zbase]
      int64_t zbase = 0;
      // the loads and the element function of one vector at element e (inputs only: nothing is stored here)
      auto value_at = [&](int64_t e, VecF& w) {
        const VecF x = load_vec<DT>(q.x + e);
        const VecF m = load_vec<DT>(q.m + e);
        const VecF m2 = F::M2 ? load_vec<DT>(q.m2 + e) : zero;
        VecF h[KB];
        PYDIFF_UNROLL
        for (int k = 0; k < F::K; ++k) h[k] = load_vec<DT>(q.h[k] + e);
        VecF z = zero;
        if constexpr (F::NOISE == kNoiseTensor) z = load_vec<DT>(q.noise + e);
        if constexpr (kPhilox) z = vec_loadu(zf + (e - zbase));
        return fused_step_value<G>(rv, sv, x, m, m2, zero, h, z, w);
      };
      VecF nan = zero;  // NaN once an output is (an inf - inf or 0 * inf only costs a needless fix-up)
      // groups, then single vectors with the checked stores, then elements
      auto run_range = [&](int64_t g, const int64_t end) {
        constexpr int64_t kGroup = kGroupVecs * kVecLanes;
        for (; g + kGroup <= end; g += kGroup) {
          VecF o[kGroupVecs], w[kGroupVecs];
          PYDIFF_UNROLL
          for (int u = 0; u < kGroupVecs; ++u) o[u] = value_at(g + u * kVecLanes, w[u]);
          store_group<DT, F::WOUT>(w, q.w_out + g, o, q.out + g, nan);
        }
        for (; g + kVecLanes <= end; g += kVecLanes) {
          VecF w;
          const VecF o = value_at(g, w);
          if constexpr (DT == kFloat16) {
            if (F::WOUT) store_vec<DT>(w, q.w_out + g);
            store_vec<DT>(o, q.out + g);
          } else if (F::WOUT) {
            store_vec2<DT>(w, q.w_out + g, o, q.out + g);
          } else {
            store_vec<DT>(o, q.out + g);
          }
        }
        for (; g < end; ++g) fused_step_at<G, T, Tr>(q, g, r, s, key, ctr);
      };
      if constexpr (kPhilox) {
        for (int64_t gb = g0; gb < g1; gb += kPhiloxBlock) {
          const int64_t n = imin(kPhiloxBlock, g1 - gb);
          philox_normal_fill(key, ctr, static_cast<uint64_t>(gb), n, zf);
          zbase = gb;
          run_range(gb, gb + n);
        }
      } else {
        run_range(g0, g1);
      }
      // the checked stores and the scalar path already wrote canonical NaNs, which this leaves as they are
      if (group_defers_nan<DT>() && __builtin_expect(vec_any_nan(nan), 0)) {
        canonical_nan<DT>(q.out + g0, g1 - g0);
        if (F::WOUT) canonical_nan<DT>(q.w_out + g0, g1 - g0);
      }
    });
  });
}
#endif

template <int DT>
void fused_dispatch(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
#if defined(PYDIFF_BLOCK_CONVERT)
  if constexpr (DT == kFloat16 || DT == kBFloat16) {
    dispatch_step_flags(a, [&](auto flags) {
      using F = decltype(flags);
      if constexpr (F::VAR)
        fused_run_blocked<DT, F>(a, key, ctr, nt);
      else
        fused_run_vec<DT, F>(a, key, ctr, nt);
    });
  } else
#endif
  {
    dispatch_step_flags(a, [&](auto flags) { fused_run<DT, decltype(flags)>(a, key, ctr, nt); });
  }
}

}  // namespace

#if defined(PYDIFF_BF16_NATIVE_TU)
void fused_step_bf16_native(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  fused_dispatch<kBFloat16>(a, key, ctr, nt);
}
#else
template <>
void fused_step_dt<PYDIFF_DT>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
#if defined(PYDIFF_HAVE_AVX512BF16_TU)
  if constexpr (PYDIFF_DT == kBFloat16) {
    if (bf16_native_enabled()) {
      isa_avx512bf16::fused_step_bf16_native(a, key, ctr, nt);
      return;
    }
  }
#endif
  fused_dispatch<PYDIFF_DT>(a, key, ctr, nt);
}
#endif

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff
