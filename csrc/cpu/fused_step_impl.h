// fused_step on the CPU (docs/ops.md), for the dtype PYDIFF_DT: OpenMP over (sample, chunk) tasks; per
// task the coefficient row (index rule of pydiff_math.h) is loaded once, then one `#pragma omp simd` loop
// runs pydiff_math.h's fused_step_at with the configuration's compile-time flags, so each loop is
// straight-line arithmetic that vectorises (the Philox rounds and the polynomial log/cos included).
// `omp simd` asserts what the contract guarantees: out may be x and w_out may be m, m2 or a history
// tensor (identical storage), and every element is read before it is written, so the iterations are
// independent despite the aliasing.
#pragma once

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

}  // namespace

template <>
void fused_step_dt<PYDIFF_DT>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  dispatch_step_flags(a, [&](auto flags) { fused_run<PYDIFF_DT, decltype(flags)>(a, key, ctr, nt); });
}

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff
