// sumsq (two-stage, deterministic) and dynamic_threshold (the |x0| pass, and the quantile rule once the
// launcher has selected ranks lo and hi) on CUDA.
#include "common.cuh"

namespace pydiff {
namespace cuda {

constexpr int64_t kMaxPartials = 256;

#if !defined(__CUDACC_RTC__)
// Blocks per sample of sumsq stage 1. A function of N alone (not of the GPU's SM count), so the summation
// order, and with it every bit of the result, is the same on every GPU. Mirrored by cuda_jit.py.
int64_t sumsq_num_partials(int64_t N) {
  const int64_t per_block = kThreads * 8;  // at least ~8 elements per thread
  int64_t p = (N + per_block - 1) / per_block;
  if (p < 1) p = 1;
  return p < kMaxPartials ? p : kMaxPartials;
}
#endif

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

// Adds the squares of a (and of b or the Philox noise) at element g to s0 (and s1).
template <typename S>
__device__ __forceinline__ void sumsq_elem(const S* pa, const S* pb, bool philox, uint64_t key, uint64_t ctr,
                                           int64_t g, float& s0, float& s1) {
  const float v = Conv<S>::load(pa[g]);
  s0 += v * v;
  if (pb) {
    const float u = Conv<S>::load(pb[g]);
    s1 += u * u;
  } else if (philox) {
    const float z = philox_normal_z(key, ctr, static_cast<uint64_t>(g));
    s1 += z * z;
  }
}

// Stage 1: grid (P, samples); partials[(s*B + b)*P + blockIdx.x]. VEC (a and b 16-byte aligned): 16-byte
// packs between a scalar head and tail (split_sample). The order of the additions is fixed by N, P and the
// alignment, so the result is reproducible run to run.
template <typename S, bool VEC>
__global__ void __launch_bounds__(kThreads) sumsq_partial_kernel(const SumsqArgs a, float* partials, int64_t P) {
  __shared__ float smem[kThreads / 32];
  const S* pa = static_cast<const S*>(a.a);
  const S* pb = static_cast<const S*>(a.b);
  const int64_t N = a.N, B = a.B;
  const bool philox = a.philox.on;
  const bool second = pb != nullptr || philox;
  uint64_t key = 0, ctr = 0;
  if (philox) philox_key_ctr(a.philox, key, ctr);  // rng (if any) is read here, on the device
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = P * kThreads;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float s0 = 0.0f, s1 = 0.0f;
    const int64_t base = b * N;
    if (VEC) {
      constexpr int V = Pack<S>::kVec;
      const Split sp = split_sample(base, N, V);
      if (tid < sp.head) sumsq_elem(pa, pb, philox, key, ctr, base + tid, s0, s1);
      const int64_t body = base + sp.head;
      for (int64_t q = tid; q < sp.packs; q += stride) {
        const int64_t g = body + q * V;
        float va[V];
        load_pack(pa, g, va);
#pragma unroll
        for (int j = 0; j < V; ++j) s0 += va[j] * va[j];
        if (pb) {
          float vb[V];
          load_pack(pb, g, vb);
#pragma unroll
          for (int j = 0; j < V; ++j) s1 += vb[j] * vb[j];
        } else if (philox) {
          float z[V];
          philox_normal_pack<V>(key, ctr, static_cast<uint64_t>(g), z);  // g % V == 0: whole blocks
#pragma unroll
          for (int j = 0; j < V; ++j) s1 += z[j] * z[j];
        }
      }
      if (tid < sp.tail) sumsq_elem(pa, pb, philox, key, ctr, body + sp.packs * V + tid, s0, s1);
    } else {
      for (int64_t i = tid; i < N; i += stride) sumsq_elem(pa, pb, philox, key, ctr, base + i, s0, s1);
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

#if !defined(__CUDACC_RTC__)
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
    const dim3 grid(static_cast<unsigned>(P), grid_y(a.B));
    if (aligned16(a.a) && aligned16(a.b))
      sumsq_partial_kernel<T, true><<<grid, kThreads, 0, st>>>(a, part, P);
    else
      sumsq_partial_kernel<T, false><<<grid, kThreads, 0, st>>>(a, part, P);
  });
  check(cudaGetLastError(), "sumsq stage 1 launch");
  sumsq_final_kernel<<<dim3(grid_y(a.B), static_cast<unsigned>(S)), 32, 0, st>>>(part, P, a.B,
                                                                               static_cast<float*>(a.out));
  check(cudaGetLastError(), "sumsq stage 2 launch");
}
#endif  // !__CUDACC_RTC__

// |x0| at element g into abs_out[g] (float32).
template <typename S, bool HAS_M, bool M2>
__device__ __forceinline__ void abs_x0_elem(const S* x, const S* m, const S* m2, const Row<float>& r, int64_t g,
                                            float* abs_out) {
  const float x0 = dyn_x0<HAS_M, M2>(r, Conv<S>::load(x[g]), HAS_M ? Conv<S>::load(m[g]) : 0.0f,
                                     M2 ? Conv<S>::load(m2[g]) : 0.0f);
  abs_out[g] = abs_t(x0);
}

// VEC (x, m, m2 and abs_out 16-byte aligned): one 16-byte pack of each input, V/4 float4 stores.
template <typename S, bool HAS_M, bool M2, bool VEC>
__global__ void __launch_bounds__(kThreads) abs_x0_kernel(const DynThreshArgs a, float* abs_out) {
  const S* x = static_cast<const S*>(a.x);
  const S* m = static_cast<const S*>(a.m);
  const S* m2 = static_cast<const S*>(a.m2);
  const int64_t N = a.N;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    Row<float> r;
    if (HAS_M) r = args_row<float>(a, b);
    const int64_t base = b * N;
    if (VEC) {
      constexpr int V = Pack<S>::kVec;
      const Split sp = split_sample(base, N, V);
      if (tid < sp.head) abs_x0_elem<S, HAS_M, M2>(x, m, m2, r, base + tid, abs_out);
      const int64_t body = base + sp.head;
      for (int64_t q = tid; q < sp.packs; q += stride) {
        const int64_t g = body + q * V;
        float vx[V], vm[V], vm2[V], o[V];
        load_pack(x, g, vx);
        if (HAS_M) load_pack(m, g, vm);
        if (M2) load_pack(m2, g, vm2);
#pragma unroll
        for (int j = 0; j < V; ++j)
          o[j] = abs_t(dyn_x0<HAS_M, M2>(r, vx[j], HAS_M ? vm[j] : 0.0f, M2 ? vm2[j] : 0.0f));
#pragma unroll
        for (int j = 0; j < V; j += 4)
          store_pack(abs_out, g + j, *reinterpret_cast<const float(*)[4]>(o + j));
      }
      if (tid < sp.tail) abs_x0_elem<S, HAS_M, M2>(x, m, m2, r, body + sp.packs * V + tid, abs_out);
    } else {
      for (int64_t i = tid; i < N; i += stride) abs_x0_elem<S, HAS_M, M2>(x, m, m2, r, base + i, abs_out);
    }
  }
}

#if !defined(__CUDACC_RTC__)
void abs_x0(const DynThreshArgs& a, void* abs_out, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  if (!abs_out) throw std::invalid_argument("dynamic_threshold: abs buffer is null");
  set_device(device);
  const int64_t sms = sm_count(device);
  float* v = static_cast<float*>(abs_out);
  cudaStream_t st = as_stream(stream);
  const bool vec = aligned16(a.x) && aligned16(a.m) && aligned16(a.m2) && aligned16(abs_out);
  dispatch_dtype(a.dtype, "dynamic_threshold", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = Pack<S>::kVec;
    const dim3 grid = grid_2d(vec ? (a.N + V - 1) / V : a.N, a.B, sms);
    auto launch = [&](auto has_m, auto m2) {
      constexpr bool HM = decltype(has_m)::value, M2 = decltype(m2)::value;
      if (vec)
        abs_x0_kernel<S, HM, M2, true><<<grid, kThreads, 0, st>>>(a, v);
      else
        abs_x0_kernel<S, HM, M2, false><<<grid, kThreads, 0, st>>>(a, v);
    };
    if (!a.m)
      launch(std::false_type{}, std::false_type{});
    else if (a.m2)
      launch(std::true_type{}, std::true_type{});
    else
      launch(std::true_type{}, std::false_type{});
  });
  check(cudaGetLastError(), "dynamic_threshold launch");
}

#endif  // !__CUDACC_RTC__

// s_b = threshold_scale(quantile_interp(v[lo], v[hi], wt, any NaN), max_val) (pydiff_math.h).
__global__ void dyn_thresh_finish_kernel(const float* vlo, const float* vhi, const uint8_t* any_nan, int64_t B,
                                         float wt, float max_val, float* out) {
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < B;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[b] = threshold_scale(quantile_interp(vlo[b], vhi[b], wt, any_nan[b] != 0), max_val);
}

#if !defined(__CUDACC_RTC__)
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

#endif  // !__CUDACC_RTC__

// langevin_step's rows (pydiff_math.h): thread 0 forms the batch ratio (serial in b, the order of every
// backend), then the block writes one row per sample. One block: B is a batch size.
__global__ void __launch_bounds__(kThreads) langevin_rows_kernel(const float* sums, const float* coef,
                                                                 int64_t coef_stride, int64_t B, int sample,
                                                                 float* rows) {
  __shared__ float ratio2;
  if (threadIdx.x == 0) ratio2 = sample ? 0.0f : langevin_ratio2(sums, B);
  __syncthreads();
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x)
    langevin_row(sums, coef, coef_stride, B, sample != 0, ratio2, b, rows + b * kNCoef);
}

// langevin_step in one launch for small steps: one block takes both passes -- the sums per sample (block_sum,
// the samples one after another), the rows in shared memory (thread 0, langevin_rows), then the update with
// fused_step_value. At such sizes a step costs its launches, not its bytes: the general path is four
// kernels (two sumsq stages, the rows, fused_step), this is one. The limits are an estimate (a block of 256
// threads streams 64 Ki elements in about the time of one launch); not yet measured on a GPU.
constexpr int64_t kLangevinSmallB = 64;
constexpr int64_t kLangevinSmallElems = 65536;

template <typename S, bool PHILOX, bool WOUT>
__global__ void __launch_bounds__(kThreads) langevin_small_kernel(const LangevinArgs a) {
  __shared__ float smem[kThreads / 32];
  __shared__ float sums[2 * kLangevinSmallB];
  __shared__ float rows[kLangevinSmallB * kNCoef];
  const S* x = static_cast<const S*>(a.x);
  const S* m = static_cast<const S*>(a.m);
  const S* noise = static_cast<const S*>(a.noise);
  S* out = static_cast<S*>(a.out);
  S* w_out = static_cast<S*>(a.w_out);
  const int64_t B = a.B, N = a.N;
  uint64_t key = 0, ctr = 0;
  if (PHILOX) philox_key_ctr(a.philox, key, ctr);
  for (int64_t b = 0; b < B; ++b) {
    float s0 = 0.0f, s1 = 0.0f;
    auto add = [&](int64_t g, float z) {
      const float v = Conv<S>::load(m[g]);
      s0 += v * v;
      s1 += z * z;
    };
    noise_range<PHILOX>(key, ctr, noise, b * N, (b + 1) * N, threadIdx.x, kThreads, add);
    s0 = block_sum(s0, smem);
    s1 = block_sum(s1, smem);
    if (threadIdx.x == 0) {
      sums[b] = s0;
      sums[B + b] = s1;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) langevin_rows(sums, static_cast<const float*>(a.coef), a.coef_stride, B, a.sample_norm, rows);
  __syncthreads();
  using F = StepFlags<0, false, false, PHILOX ? kNoisePhilox : kNoiseTensor, false, WOUT>;
  for (int64_t b = 0; b < B; ++b) {
    Row<float> r;
    for (int k = 0; k < kNCoef; ++k) r.c[k] = rows[b * kNCoef + k];
    auto update = [&](int64_t g, float z) {
      float w;
      const float o = fused_step_value<F>(r, 0.0f, Conv<S>::load(x[g]), Conv<S>::load(m[g]), 0.0f, 0.0f,
                                          static_cast<const float*>(nullptr), z, w);
      if (WOUT) w_out[g] = Conv<S>::store(w);
      out[g] = Conv<S>::store(o);
    };
    noise_range<PHILOX>(key, ctr, noise, b * N, (b + 1) * N, threadIdx.x, kThreads, update);
  }
}

#if !defined(__CUDACC_RTC__)
void langevin_step(const LangevinArgs& a, void* partials, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  if (a.B <= kLangevinSmallB && a.B * a.N <= kLangevinSmallElems) {
    set_device(device);
    dispatch_dtype(a.dtype, "langevin_step", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      const cudaStream_t st = as_stream(stream);
      if (a.philox.on)
        a.w_out ? langevin_small_kernel<T, true, true><<<1, kThreads, 0, st>>>(a)
                : langevin_small_kernel<T, true, false><<<1, kThreads, 0, st>>>(a);
      else
        a.w_out ? langevin_small_kernel<T, false, true><<<1, kThreads, 0, st>>>(a)
                : langevin_small_kernel<T, false, false><<<1, kThreads, 0, st>>>(a);
    });
    check(cudaGetLastError(), "langevin_step (one block) launch");
    return;
  }
  sumsq(langevin_sumsq_args(a, a.noise, a.philox), partials, device, stream);  // sets the device
  langevin_rows_kernel<<<1, kThreads, 0, as_stream(stream)>>>(static_cast<const float*>(a.sums),
                                                              static_cast<const float*>(a.coef), a.coef_stride,
                                                              a.B, a.sample_norm ? 1 : 0, static_cast<float*>(a.rows));
  check(cudaGetLastError(), "langevin_step rows launch");
  fused_step(langevin_fused_args(a, a.noise, a.philox), device, stream);
}
#endif  // !__CUDACC_RTC__

}  // namespace cuda
}  // namespace pydiff
