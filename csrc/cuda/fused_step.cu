// fused_step on CUDA (docs/ops.md): 2-D grid (blocks along the sample) x (samples, grid-striding
// when B > 65535), grid-stride along the sample, 64-bit indices. Per (block, sample) the coefficient
// row is read once into registers; the optional inputs are tested with block-uniform branches.
// Aliasing (out == x, w_out == m or a history tensor) is safe: each thread reads its element of every
// input before it writes that element, and aliasable inputs use ordinary (coherent) loads.
#include "common.cuh"
#include "philox.h"

namespace pydiff {
namespace cuda {

// NaN-propagating min/max like torch.minimum/torch.maximum (fminf/fmaxf would drop the NaN).
__device__ __forceinline__ float min_nan(float w, float c) { return c < w ? c : w; }
__device__ __forceinline__ float max_nan(float w, float c) { return w < c ? c : w; }

template <typename S>
__global__ void __launch_bounds__(kThreads) fused_step_kernel(const FusedStepArgs a) {
  const S* __restrict__ noise = static_cast<const S*>(a.noise);
  const S* x = static_cast<const S*>(a.x);
  const S* m = static_cast<const S*>(a.m);
  const S* h1 = static_cast<const S*>(a.hist[0]);
  const S* h2 = static_cast<const S*>(a.hist[1]);
  const S* h3 = static_cast<const S*>(a.hist[2]);
  S* out = static_cast<S*>(a.out);
  S* w_out = static_cast<S*>(a.w_out);
  const float* thr = static_cast<const float*>(a.threshold);
  const int64_t N = a.N;
  const int nh = a.nhist;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const float* r = coef_row(static_cast<const float*>(a.coef), a.index, a.index_stride, a.row_stride, a.R, b);
    const float nan = __int_as_float(0x7fc00000);
    const float P = r ? r[kP] : nan, Q = r ? r[kQ] : nan, A = r ? r[kA] : nan, D = r ? r[kD] : nan;
    const float B0 = r ? r[kB0] : nan, B1 = r ? r[kB1] : nan, B2 = r ? r[kB2] : nan, B3 = r ? r[kB3] : nan;
    const float C = r ? r[kC] : nan, Sc = r ? r[kS] : nan, O = r ? r[kO] : nan;
    const float bound = thr ? thr[b] : (r ? r[kCLIP] : nan);
    const int64_t base = b * N;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
      const int64_t g = base + i;
      const float xv = load_rw<S>(x + g);
      const float mv = load_rw<S>(m + g);
      float w = Sc * (P * xv + Q * mv);
      w = max_nan(min_nan(w, bound), -bound);
      if (thr) w = w / bound;
      float acc = A * xv + D * mv;
      acc = acc + B0 * w;
      if (nh >= 1) acc = acc + B1 * load_rw<S>(h1 + g);
      if (nh >= 2) acc = acc + B2 * load_rw<S>(h2 + g);
      if (nh >= 3) acc = acc + B3 * load_rw<S>(h3 + g);
      if (noise) {
        acc = acc + C * Conv<S>::load(noise + g);
      } else if (a.has_seed) {
        acc = acc + C * ::pydiff::philox_normal(a.seed, a.offset, static_cast<uint64_t>(g));
      }
      if (w_out) w_out[g] = Conv<S>::store(w);
      out[g] = Conv<S>::store(O * acc);
    }
  }
}

void fused_step(const FusedStepArgs& a, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  set_device(device);
  const dim3 grid(blocks_along(a.N, a.B), grid_y(a.B));
  dispatch_dtype(a.dtype, "fused_step", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    fused_step_kernel<S><<<grid, kThreads, 0, as_stream(stream)>>>(a);
  });
  check(cudaGetLastError(), "fused_step launch");
}

}  // namespace cuda
}  // namespace pydiff
