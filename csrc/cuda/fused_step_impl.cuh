// fused_step on CUDA (docs/ops.md): 2-D grid (blocks along the sample) x (samples, grid-striding when
// B > 65535), grid-stride along the sample, 64-bit indices. Per (block, sample) the coefficient row is
// loaded once (pydiff_math.h's index rule: an out-of-range row is all NaN, so the sample's outputs are NaN
// and coef is never read outside its rows); the Philox key and counter offset are read from the rng tensor
// in device memory when one is given (no host sync, graph-replayable). The optional inputs are
// compile-time flags (one kernel per configuration): no per-element run-time branches.
//
// VEC = true (every data pointer 16-byte aligned): each thread moves whole 16-byte packs (4 float32 or 8
// float16/bfloat16 elements) with one 128-bit load per input and one 128-bit store per output, and the
// sample's unaligned head and its tail go element by element (split_sample). VEC = false (a view with a
// storage offset): element by element throughout. Both paths run pydiff_math.h's fused_step_value on the
// values of element g with Philox counter g, so they give bit-identical results, and both read every input
// of an element before writing out / w_out of it, in the same thread: out == x and w_out == m / m2 / h_k
// are safe.
//
// Included by fused_step_<dtype>.cu with PYDIFF_CUDA_S set (nvcc), and by NVRTC without it (the kernel
// template alone, instantiated through name expressions such as
// pydiff::cuda::fused_step_kernel<__half, pydiff::StepFlags<2, false, false, 2, false, true>, true>).
#pragma once

#include "common.cuh"

namespace pydiff {
namespace cuda {

template <typename S, class F>
__device__ __forceinline__ void fused_step_pack(const StepPtrs<S>& p, int64_t g, const Row<float>& r, float s,
                                                uint64_t key, uint64_t ctr) {
  constexpr int V = Pack<S>::kVec;
  float x[V], m[V], m2[V], v[V], z[V], h[F::K > 0 ? F::K : 1][V];
  load_pack(p.x, g, x);
  load_pack(p.m, g, m);
  if (F::M2) load_pack(p.m2, g, m2);
  if (F::VAR) load_pack(p.var, g, v);
#pragma unroll
  for (int k = 0; k < F::K; ++k) load_pack(p.h[k], g, h[k]);
  if (F::NOISE == kNoiseTensor) load_pack(p.noise, g, z);
  if (F::NOISE == kNoisePhilox) philox_normal_pack<V>(key, ctr, static_cast<uint64_t>(g), z);  // g % V == 0
  float o[V], w[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float hj[F::K > 0 ? F::K : 1];
#pragma unroll
    for (int k = 0; k < F::K; ++k) hj[k] = h[k][j];
    float zj = 0.0f;
    if (F::NOISE != kNoNoise) zj = z[j];
    o[j] = fused_step_value<F>(r, s, x[j], m[j], F::M2 ? m2[j] : 0.0f, F::VAR ? v[j] : 0.0f, hj, zj, w[j]);
  }
  if (F::WOUT) store_pack(p.w_out, g, w);
  store_pack(p.out, g, o);
}

template <typename S, class F, bool VEC>
__global__ void __launch_bounds__(kThreads) fused_step_kernel(const FusedStepArgs a) {
  const StepPtrs<S> p = step_ptrs<S>(a);
  const float* thr = static_cast<const float*>(a.threshold);
  uint64_t key = 0, ctr = 0;
  if (F::NOISE == kNoisePhilox) philox_key_ctr(a.philox, key, ctr);
  const int64_t N = a.N;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const Row<float> r = args_row<float>(a, b);
    const float s = F::THR ? thr[b] : 0.0f;
    const int64_t base = b * N;
    if (VEC) {
      constexpr int V = Pack<S>::kVec;
      const Split sp = split_sample(base, N, V);
      if (tid < sp.head) fused_step_at<F, float, Conv<S>>(p, base + tid, r, s, key, ctr);
      const int64_t body = base + sp.head;
      for (int64_t q = tid; q < sp.packs; q += stride) fused_step_pack<S, F>(p, body + q * V, r, s, key, ctr);
      if (tid < sp.tail) fused_step_at<F, float, Conv<S>>(p, body + sp.packs * V + tid, r, s, key, ctr);
    } else {
      for (int64_t i = tid; i < N; i += stride) fused_step_at<F, float, Conv<S>>(p, base + i, r, s, key, ctr);
    }
  }
}

#if defined(PYDIFF_CUDA_S) && !defined(__CUDACC_RTC__)
// The vector path needs every data pointer 16-byte aligned (torch's allocator gives 512-byte aligned
// storage; only views with a storage offset fall back to the scalar path).
inline bool step_aligned(const FusedStepArgs& a) {
  bool ok = aligned16(a.x) && aligned16(a.m) && aligned16(a.m2) && aligned16(a.var) && aligned16(a.noise) &&
            aligned16(a.out) && aligned16(a.w_out);
  for (int k = 0; k < a.nhist; ++k) ok = ok && aligned16(a.hist[k]);
  return ok;
}

template <>
void fused_step_dtype<PYDIFF_CUDA_S>(const FusedStepArgs& a, int64_t sms, cudaStream_t stream) {
  constexpr int V = Pack<PYDIFF_CUDA_S>::kVec;
  const bool vec = step_aligned(a);
  const dim3 grid = grid_2d(vec ? (a.N + V - 1) / V : a.N, a.B, sms);
  dispatch_step_flags(a, [&](auto flags) {
    if (vec)
      fused_step_kernel<PYDIFF_CUDA_S, decltype(flags), true><<<grid, kThreads, 0, stream>>>(a);
    else
      fused_step_kernel<PYDIFF_CUDA_S, decltype(flags), false><<<grid, kThreads, 0, stream>>>(a);
  });
}
#endif

}  // namespace cuda
}  // namespace pydiff
