// fused_step_backward on CUDA (pydiff/ops/fused_step_backward.py): the launch geometry of fused_step (2-D grid,
// blocks along the sample x samples, grid-stride, 64-bit indices), the row loaded once per (block, sample)
// with pydiff_math.h's index rule (an out-of-range row is all NaN: the sample's gradients are NaN, coef is
// never read outside its rows), the Philox key read from the rng tensor on the device (no host sync). Each
// thread runs pydiff_math.h's fused_step_backward_at, the same code as the CPU loops; one kernel per
// BackFlags configuration and storage type.
#include "common.cuh"

namespace pydiff {
namespace cuda {

// Outside an anonymous namespace, like the forward kernels: the cuda-jit backend loads each instance by the name
// NVRTC lowers from pydiff::cuda::fused_step_backward_kernel<S, BackFlags<...>>; in an anonymous namespace that
// entry is internal (a PTX .entry without .weak/.visible) and its name carries a per-file hash. The nvcc build
// instantiates the same kernels either way.
template <typename S, class F>
__global__ void __launch_bounds__(kThreads) fused_step_backward_kernel(const FusedStepBackwardArgs a) {
  const BackPtrs<S> p = back_ptrs<S>(a);
  const float* thr = static_cast<const float*>(a.threshold);
  uint64_t key = 0, ctr = 0;
  if (F::NOISE == kNoisePhilox) philox_key_ctr(a.philox, key, ctr);
  const int64_t N = a.N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const Row<float> r = args_row<float>(a, b);
    const float s = F::THR ? thr[b] : 0.0f;
    const int64_t base = b * N;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride)
      fused_step_backward_at<F, float, Conv<S>>(p, base + i, r, s, key, ctr);
  }
}

#if !defined(__CUDACC_RTC__)  // host code: the ahead-of-time build only (NVRTC sees the kernels)
void fused_step_backward(const FusedStepBackwardArgs& a, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  set_device(device);
  const dim3 grid(blocks_along(a.N, a.B), grid_y(a.B));
  dispatch_dtype(a.dtype, "fused_step_backward", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    dispatch_back_flags(a, [&](auto flags) {
      fused_step_backward_kernel<S, decltype(flags)><<<grid, kThreads, 0, as_stream(stream)>>>(a);
    });
  });
  check(cudaGetLastError(), "fused_step_backward launch");
}
#endif  // !__CUDACC_RTC__

}  // namespace cuda
}  // namespace pydiff
