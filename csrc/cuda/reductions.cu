// sumsq (two-stage, deterministic) and dynamic_threshold (the |x0| pass, and the quantile rule once the
// launcher has selected ranks lo and hi) on CUDA.
#include "common.cuh"

namespace pydiff {
namespace cuda {

constexpr int64_t kMaxPartials = 256;

int64_t sumsq_num_partials(int64_t N) {
  const int64_t per_block = kThreads * 8;  // at least ~8 elements per thread
  int64_t p = (N + per_block - 1) / per_block;
  if (p < 1) p = 1;
  return p < kMaxPartials ? p : kMaxPartials;
}

// Block-wide sum of one float per thread; the result is valid in thread 0. Fixed reduction order.
__device__ __forceinline__ float block_sum(float v, float* smem) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // smem may still be read from a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = 0.0f;
  if (warp == 0) {
    v = lane < (kThreads / 32) ? smem[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

// Stage 1: grid (P, samples); partials[(s*B + b)*P + blockIdx.x].
template <typename S>
__global__ void __launch_bounds__(kThreads) sumsq_partial_kernel(const SumsqArgs a, float* partials, int64_t P) {
  __shared__ float smem[kThreads / 32];
  const S* pa = static_cast<const S*>(a.a);
  const S* pb = static_cast<const S*>(a.b);
  const int64_t N = a.N, B = a.B;
  const bool philox = a.philox.on;
  const bool second = pb != nullptr || philox;
  uint64_t key = 0, ctr = 0;
  if (philox) philox_key_ctr(a.philox, key, ctr);  // rng (if any) is read here, on the device
  const int64_t stride = P * kThreads;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float s0 = 0.0f, s1 = 0.0f;
    const int64_t base = b * N;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < N; i += stride) {
      const float v = Conv<S>::load(pa[base + i]);
      s0 += v * v;
      if (pb) {
        const float u = Conv<S>::load(pb[base + i]);
        s1 += u * u;
      } else if (philox) {
        const float z = philox_normal_z(key, ctr, static_cast<uint64_t>(base + i));
        s1 += z * z;
      }
    }
    s0 = block_sum(s0, smem);
    if (threadIdx.x == 0) partials[b * P + blockIdx.x] = s0;
    if (second) {
      s1 = block_sum(s1, smem);
      if (threadIdx.x == 0) partials[(B + b) * P + blockIdx.x] = s1;
    }
  }
}

// Stage 2: one warp per (s, b): lane k sums partials k, k+32, ... in order, then a shuffle tree.
__global__ void sumsq_final_kernel(const float* partials, int64_t P, int64_t B, float* out) {
  const int64_t s = blockIdx.y;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const float* p = partials + (s * B + b) * P;
    float v = 0.0f;
    for (int64_t k = threadIdx.x; k < P; k += 32) v += p[k];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) out[s * B + b] = v;
  }
}

void sumsq(const SumsqArgs& a, void* partials, int device, uintptr_t stream) {
  if (a.B == 0) return;
  set_device(device);
  const int64_t P = sumsq_num_partials(a.N);
  const int64_t S = 1 + (a.b != nullptr || a.philox.on);
  cudaStream_t st = as_stream(stream);
  if (a.N == 0) {
    check(cudaMemsetAsync(a.out, 0, sizeof(float) * S * a.B, st), "sumsq memset");
    return;
  }
  if (!partials) throw std::invalid_argument("sumsq: partials buffer is null");
  float* part = static_cast<float*>(partials);
  dispatch_dtype(a.dtype, "sumsq", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    sumsq_partial_kernel<T><<<dim3(static_cast<unsigned>(P), grid_y(a.B)), kThreads, 0, st>>>(a, part, P);
  });
  check(cudaGetLastError(), "sumsq stage 1 launch");
  sumsq_final_kernel<<<dim3(grid_y(a.B), static_cast<unsigned>(S)), 32, 0, st>>>(part, P, a.B,
                                                                               static_cast<float*>(a.out));
  check(cudaGetLastError(), "sumsq stage 2 launch");
}

template <typename S, bool HAS_M, bool M2>
__global__ void __launch_bounds__(kThreads) abs_x0_kernel(const DynThreshArgs a, float* abs_out) {
  const S* x = static_cast<const S*>(a.x);
  const S* m = static_cast<const S*>(a.m);
  const S* m2 = static_cast<const S*>(a.m2);
  const int64_t N = a.N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    Row<float> r;
    if (HAS_M) r = load_row(static_cast<const float*>(a.coef), a.R, a.index, a.index_stride, a.row_stride, b);
    const int64_t base = b * N;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
      const int64_t g = base + i;
      const float x0 = dyn_x0<HAS_M, M2>(r, Conv<S>::load(x[g]), HAS_M ? Conv<S>::load(m[g]) : 0.0f,
                                         M2 ? Conv<S>::load(m2[g]) : 0.0f);
      abs_out[g] = abs_t(x0);
    }
  }
}

void abs_x0(const DynThreshArgs& a, void* abs_out, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  if (!abs_out) throw std::invalid_argument("dynamic_threshold: abs buffer is null");
  set_device(device);
  const dim3 grid(blocks_along(a.N, a.B), grid_y(a.B));
  float* v = static_cast<float*>(abs_out);
  cudaStream_t st = as_stream(stream);
  dispatch_dtype(a.dtype, "dynamic_threshold", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    if (!a.m)
      abs_x0_kernel<S, false, false><<<grid, kThreads, 0, st>>>(a, v);
    else if (a.m2)
      abs_x0_kernel<S, true, true><<<grid, kThreads, 0, st>>>(a, v);
    else
      abs_x0_kernel<S, true, false><<<grid, kThreads, 0, st>>>(a, v);
  });
  check(cudaGetLastError(), "dynamic_threshold launch");
}

// s_b = threshold_scale(quantile_interp(v[lo], v[hi], wt, any NaN), max_val) (pydiff_math.h).
__global__ void dyn_thresh_finish_kernel(const float* vlo, const float* vhi, const uint8_t* any_nan, int64_t B,
                                         float wt, float max_val, float* out) {
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[b] = threshold_scale(quantile_interp(vlo[b], vhi[b], wt, any_nan[b] != 0), max_val);
}

void dyn_thresh_finish(int64_t B, const void* vlo, const void* vhi, const void* any_nan, double wt, double max_val,
                       void* out, int device, uintptr_t stream) {
  if (B <= 0) return;
  set_device(device);
  const unsigned blocks = static_cast<unsigned>((B + kThreads - 1) / kThreads < 1024 ? (B + kThreads - 1) / kThreads : 1024);
  dyn_thresh_finish_kernel<<<blocks, kThreads, 0, as_stream(stream)>>>(
      static_cast<const float*>(vlo), static_cast<const float*>(vhi), static_cast<const uint8_t*>(any_nan), B,
      static_cast<float>(wt), static_cast<float>(max_val), static_cast<float*>(out));
  check(cudaGetLastError(), "dynamic_threshold finish launch");
}

}  // namespace cuda
}  // namespace pydiff
