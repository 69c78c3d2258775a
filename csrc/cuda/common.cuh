// Device helpers shared by the CUDA kernels: storage <-> float conversion, launch geometry, errors. The
// arithmetic of the ops is pydiff_math.h (shared with the CPU kernels).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <type_traits>
#include <string>

#include "ops_cuda.h"
#include "pydiff_abi.h"
#include "pydiff_math.h"

namespace pydiff {
namespace cuda {

// Storage <-> float conversion: the Conv policy of pydiff_math.h's fused_step_at (value in, value out).
// Loads are ordinary (coherent) loads, never __ldg: out may alias x and w_out may alias m, m2 or a
// history tensor inside the same kernel.
template <typename S>
struct Conv;
template <>
struct Conv<float> {
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <>
struct Conv<__half> {
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pydiff CUDA: ") + what + ": " + cudaGetErrorString(err));
}

inline void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// Blocks along a sample: enough to cover N with `elems_per_thread` elements per thread (1 for the
// bandwidth-bound kernels: many loads in flight), capped at 2^16 blocks in total so that huge tensors
// grid-stride instead.
inline unsigned blocks_along(int64_t N, int64_t B, int64_t elems_per_thread = 1) {
  const int64_t need = (N + kThreads * elems_per_thread - 1) / (kThreads * elems_per_thread);
  const int64_t batches = B < kMaxGridY ? B : kMaxGridY;
  int64_t cap = (int64_t(1) << 16) / (batches > 0 ? batches : 1);
  if (cap < 1) cap = 1;
  int64_t n = need < cap ? need : cap;
  return static_cast<unsigned>(n < 1 ? 1 : n);
}

inline unsigned grid_y(int64_t B) { return static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY); }

// fused_step for one storage type (fused_step_<dtype>.cu).
template <typename S>
void fused_step_dtype(const FusedStepArgs& a, cudaStream_t stream);
template <>
void fused_step_dtype<float>(const FusedStepArgs& a, cudaStream_t stream);
template <>
void fused_step_dtype<__half>(const FusedStepArgs& a, cudaStream_t stream);
template <>
void fused_step_dtype<__nv_bfloat16>(const FusedStepArgs& a, cudaStream_t stream);

template <typename F>
inline void dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: f(static_cast<float*>(nullptr)); break;
    case kFloat16: f(static_cast<__half*>(nullptr)); break;
    case kBFloat16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    default: throw std::invalid_argument(std::string(op) + ": unsupported dtype code for CUDA");
  }
}

}  // namespace cuda
}  // namespace pydiff
