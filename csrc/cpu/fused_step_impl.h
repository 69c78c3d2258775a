// fused_step on the CPU (docs/ops.md), for the dtype PYDIFF_DT: OpenMP over (sample, chunk) tasks; per
// task the coefficient row (index rule of pydiff_math.h) is loaded once, then one `#pragma omp simd` loop
// runs pydiff_math.h's fused_step_at with the configuration's compile-time flags, so each loop is
// straight-line arithmetic that vectorises (the Philox rounds and the polynomial log/cos included).
// `omp simd` asserts what the contract guarantees: out may be x and w_out may be m, m2 or a history
// tensor (identical storage), and every element is read before it is written, so the iterations are
// independent despite the aliasing.
//
// fp16/bf16 in the AVX2 and AVX-512 builds (convert_block.h): per task, blocks of kBlockElems elements of
// every input are converted to float32 stack buffers with vector intrinsics, the same element function
// runs on the buffers, and out / w_out are converted back; the whole block is read before any of it is
// written, so the aliasing above stays safe. The baseline build converts per element (convert.h).
#pragma once

#include "convert_block.h"
#include "kernel_common.h"

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {
namespace {

template <int DT, class F>
void fused_run(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  StepPtrs<S> p;
  p.x = static_cast<const S*>(a.x);
  p.m = static_cast<const S*>(a.m);
  p.m2 = static_cast<const S*>(a.m2);
  p.var = static_cast<const S*>(a.var);
  for (int k = 0; k < kKMax; ++k) p.h[k] = static_cast<const S*>(a.hist[k]);
  p.noise = static_cast<const S*>(a.noise);
  p.out = static_cast<S*>(a.out);
  p.w_out = static_cast<S*>(a.w_out);
  const T* coef = static_cast<const T*>(a.coef);
  const T* thr = static_cast<const T*>(a.threshold);
  const int64_t B = a.B, N = a.N, R = a.R;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t tasks = B * chunks;
  const int64_t* index = a.index;
  const int64_t index_stride = a.index_stride, row_stride = a.row_stride;

#pragma omp parallel for schedule(static) num_threads(nt) if (B * N >= kParallelMin && nt > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / chunks;
    const int64_t c0 = (t - b * chunks) * kChunk;
    const int64_t g0 = b * N + c0;
    const int64_t g1 = g0 + imin(kChunk, N - c0);
    const StepPtrs<S> q = p;  // task-local copies: the vectoriser sees loop-invariant pointers and row
    const Row<T> r = load_row(coef, R, index, index_stride, row_stride, b);
    const T s = F::THR ? thr[b] : T(0);
#pragma omp simd
    for (int64_t g = g0; g < g1; ++g) fused_step_at<F, T, Tr>(q, g, r, s, key, ctr);
  }
}

#if defined(PYDIFF_BLOCK_CONVERT)
// Elements per block: the buffers (up to 6 history + 6 other inputs/outputs, 2 KiB each) stay in L1.
constexpr int64_t kBlockElems = 512;

template <int DT, class F>
void fused_run_blocked(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using T = float;
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  const uint16_t* m = static_cast<const uint16_t*>(a.m);
  const uint16_t* m2 = static_cast<const uint16_t*>(a.m2);
  const uint16_t* var = static_cast<const uint16_t*>(a.var);
  const uint16_t* noise = static_cast<const uint16_t*>(a.noise);
  const uint16_t* hist[kKMax];
  for (int k = 0; k < kKMax; ++k) hist[k] = static_cast<const uint16_t*>(a.hist[k]);
  uint16_t* out = static_cast<uint16_t*>(a.out);
  uint16_t* w_out = static_cast<uint16_t*>(a.w_out);
  const T* coef = static_cast<const T*>(a.coef);
  const T* thr = static_cast<const T*>(a.threshold);
  const int64_t B = a.B, N = a.N, R = a.R;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t tasks = B * chunks;
  const int64_t* index = a.index;
  const int64_t index_stride = a.index_stride, row_stride = a.row_stride;
  constexpr int KB = F::K > 0 ? F::K : 1;

#pragma omp parallel for schedule(static) num_threads(nt) if (B * N >= kParallelMin && nt > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / chunks;
    const int64_t c0 = (t - b * chunks) * kChunk;
    const int64_t g0 = b * N + c0;
    const int64_t g1 = g0 + imin(kChunk, N - c0);
    const Row<T> r = load_row(coef, R, index, index_stride, row_stride, b);
    const T s = F::THR ? thr[b] : T(0);
    alignas(64) T bx[kBlockElems], bm[kBlockElems], bm2[F::M2 ? kBlockElems : 1], bv[F::VAR ? kBlockElems : 1];
    alignas(64) T bz[F::NOISE == kNoiseTensor ? kBlockElems : 1], bh[KB][F::K > 0 ? kBlockElems : 1];
    alignas(64) T bo[kBlockElems], bw[F::WOUT ? kBlockElems : 1];
    for (int64_t gb = g0; gb < g1; gb += kBlockElems) {
      const int64_t n = imin(kBlockElems, g1 - gb);
      load_block<DT>(x + gb, bx, n);
      load_block<DT>(m + gb, bm, n);
      if (F::M2) load_block<DT>(m2 + gb, bm2, n);
      if (F::VAR) load_block<DT>(var + gb, bv, n);
      if (F::NOISE == kNoiseTensor) load_block<DT>(noise + gb, bz, n);
      PYDIFF_UNROLL
      for (int k = 0; k < F::K; ++k) load_block<DT>(hist[k] + gb, bh[k], n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        T h[KB];
        PYDIFF_UNROLL
        for (int k = 0; k < F::K; ++k) h[k] = bh[k][i];
        T z = T(0);
        if (F::NOISE == kNoiseTensor) z = bz[i];
        if (F::NOISE == kNoisePhilox) z = philox_normal_z(key, ctr, static_cast<uint64_t>(gb + i));
        T w;
        bo[i] = fused_step_value<F>(r, s, bx[i], bm[i], F::M2 ? bm2[i] : T(0), F::VAR ? bv[i] : T(0), h, z, w);
        if (F::WOUT) bw[i] = w;
      }
      if (F::WOUT) store_block<DT>(bw, w_out + gb, n);
      store_block<DT>(bo, out + gb, n);
    }
  }
}
#endif

template <int DT>
void fused_dispatch(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
#if defined(PYDIFF_BLOCK_CONVERT)
  if constexpr (DT == kFloat16 || DT == kBFloat16) {
    dispatch_step_flags(a, [&](auto flags) { fused_run_blocked<DT, decltype(flags)>(a, key, ctr, nt); });
  } else
#endif
  {
    dispatch_step_flags(a, [&](auto flags) { fused_run<DT, decltype(flags)>(a, key, ctr, nt); });
  }
}

}  // namespace

template <>
void fused_step_dt<PYDIFF_DT>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  fused_dispatch<PYDIFF_DT>(a, key, ctr, nt);
}

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff
