// fused_step on CUDA (docs/ops.md) for the storage type PYDIFF_CUDA_S: 2-D grid (blocks along the sample)
// x (samples, grid-striding when B > 65535), grid-stride along the sample, 64-bit indices. Per (block,
// sample) the coefficient row is loaded once (pydiff_math.h's index rule: an out-of-range row is all NaN,
// so the sample's outputs are NaN and coef is never read outside its rows); the Philox key and counter
// offset are read from the rng tensor in device memory when one is given (no host sync, graph-replayable).
// Each thread then runs pydiff_math.h's fused_step_at for its elements: it reads every input of element g
// before writing out[g] / w_out[g], so out == x and w_out == m / m2 / h_k are safe. The optional inputs
// are compile-time flags (one kernel per configuration): no per-element run-time branches.
#pragma once

#include "common.cuh"

namespace pydiff {
namespace cuda {

template <typename S, class F>
__global__ void __launch_bounds__(kThreads) fused_step_kernel(const FusedStepArgs a) {
  StepPtrs<S> p;
  p.x = static_cast<const S*>(a.x);
  p.m = static_cast<const S*>(a.m);
  p.m2 = static_cast<const S*>(a.m2);
  p.var = static_cast<const S*>(a.var);
#pragma unroll
  for (int k = 0; k < kKMax; ++k) p.h[k] = static_cast<const S*>(a.hist[k]);
  p.noise = static_cast<const S*>(a.noise);
  p.out = static_cast<S*>(a.out);
  p.w_out = static_cast<S*>(a.w_out);
  const float* coef = static_cast<const float*>(a.coef);
  const float* thr = static_cast<const float*>(a.threshold);
  uint64_t key = 0, ctr = 0;
  if (F::NOISE == kNoisePhilox) philox_key_ctr(a.philox, key, ctr);
  const int64_t N = a.N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const Row<float> r = load_row(coef, a.R, a.index, a.index_stride, a.row_stride, b);
    const float s = F::THR ? thr[b] : 0.0f;
    const int64_t base = b * N;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride)
      fused_step_at<F, float, Conv<S>>(p, base + i, r, s, key, ctr);
  }
}

template <>
void fused_step_dtype<PYDIFF_CUDA_S>(const FusedStepArgs& a, cudaStream_t stream) {
  const dim3 grid(blocks_along(a.N, a.B), grid_y(a.B));
  dispatch_step_flags(a, [&](auto flags) {
    fused_step_kernel<PYDIFF_CUDA_S, decltype(flags)><<<grid, kThreads, 0, stream>>>(a);
  });
}

}  // namespace cuda
}  // namespace pydiff
