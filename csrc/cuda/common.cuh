// Device helpers shared by the CUDA kernels: storage <-> float conversion, 16-byte packs, launch geometry,
// errors. The arithmetic of the ops is pydiff_math.h (shared with the CPU kernels).
//
// Every .cu file compiles two ways: ahead of time by nvcc into pydiff._C_cuda (kernels and their host
// launchers), and at run time by NVRTC for the cuda-jit backend (pydiff/ops/backends/cuda_jit.py), which
// sees only the kernels: everything host-side sits under !__CUDACC_RTC__, because NVRTC has no C++ library
// and no CUDA runtime headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "ops_cuda.h"
#endif

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

// One 16-byte pack of storage values (4 float32 or 8 float16/bfloat16): the unit of the vector loads and
// stores (one 128-bit LDG/STG per thread instead of four or eight narrow ones). unpack/pack convert with
// Conv<S>, so a pack holds exactly the values the scalar path would load and store. Element j of the pack
// is element g + j of the tensor (little-endian halves inside each 32-bit word).
template <typename S>
struct Pack;
template <>
struct Pack<float> {
  static constexpr int kVec = 4;
  static __device__ __forceinline__ void unpack(const uint4& u, float (&v)[kVec]) {
    v[0] = __uint_as_float(u.x);
    v[1] = __uint_as_float(u.y);
    v[2] = __uint_as_float(u.z);
    v[3] = __uint_as_float(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float (&v)[kVec]) {
    return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
  }
};
template <typename S>
struct Pack16 {  // 16-bit storage types
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float lo(uint32_t w) { return from_bits(static_cast<unsigned short>(w & 0xFFFFu)); }
  static __device__ __forceinline__ float hi(uint32_t w) { return from_bits(static_cast<unsigned short>(w >> 16)); }
  static __device__ __forceinline__ float from_bits(unsigned short b);
  static __device__ __forceinline__ uint32_t to_bits(float v);
  static __device__ __forceinline__ uint32_t word(float a, float b) { return to_bits(a) | (to_bits(b) << 16); }
  static __device__ __forceinline__ void unpack(const uint4& u, float (&v)[kVec]) {
    v[0] = lo(u.x); v[1] = hi(u.x); v[2] = lo(u.y); v[3] = hi(u.y);
    v[4] = lo(u.z); v[5] = hi(u.z); v[6] = lo(u.w); v[7] = hi(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float (&v)[kVec]) {
    return make_uint4(word(v[0], v[1]), word(v[2], v[3]), word(v[4], v[5]), word(v[6], v[7]));
  }
};
template <>
__device__ __forceinline__ float Pack16<__half>::from_bits(unsigned short b) {
  return Conv<__half>::load(__ushort_as_half(b));
}
template <>
__device__ __forceinline__ uint32_t Pack16<__half>::to_bits(float v) {
  return static_cast<uint32_t>(__half_as_ushort(Conv<__half>::store(v)));
}
template <>
__device__ __forceinline__ float Pack16<__nv_bfloat16>::from_bits(unsigned short b) {
  return Conv<__nv_bfloat16>::load(__ushort_as_bfloat16(b));
}
template <>
__device__ __forceinline__ uint32_t Pack16<__nv_bfloat16>::to_bits(float v) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(Conv<__nv_bfloat16>::store(v)));
}
template <>
struct Pack<__half> : Pack16<__half> {};
template <>
struct Pack<__nv_bfloat16> : Pack16<__nv_bfloat16> {};

// 128-bit load / store at element g; p + g must be 16-byte aligned. The load is __ldcg (ld.global.cg:
// coherent, cached in L2 only -- streamed data is not reused), not __ldg: out may alias an input. A plain
// dereference is not enough for 16-bit types: the compiler splits it into four 32-bit loads once the
// halves are extracted (seen in NVRTC 12.9's PTX for float16).
template <typename S>
__device__ __forceinline__ void load_pack(const S* p, int64_t g, float (&v)[Pack<S>::kVec]) {
  Pack<S>::unpack(__ldcg(reinterpret_cast<const uint4*>(p + g)), v);
}
template <typename S>
__device__ __forceinline__ void store_pack(S* p, int64_t g, const float (&v)[Pack<S>::kVec]) {
  *reinterpret_cast<uint4*>(p + g) = Pack<S>::pack(v);
}

// The split of one sample's elements [base, base + N) into a scalar head (up to the first element whose
// address is 16-byte aligned), whole packs, and a scalar tail. With every data pointer 16-byte aligned,
// element g is aligned in every tensor iff g % V == 0, so one split serves all of them.
struct Split {
  int64_t head, packs, tail;
};
__device__ __forceinline__ Split split_sample(int64_t base, int64_t N, int V) {
  int64_t head = (V - base % V) % V;
  if (head > N) head = N;
  const int64_t packs = (N - head) / V;
  return Split{head, packs, N - head - packs * V};
}

// f(g, z_g) for every element g of [g0, g1), thread t of nt, z_g its Philox normal (PHILOX) or noise[g]:
// whole Philox blocks (elements 4q .. 4q + 3, one philox_normal4 each) inside the range, single elements at
// its unaligned ends (philox_normal_z: the same bits), a quarter of the rounds of one philox_normal_z per
// element. The noise tensor goes through the same loops, so a thread visits the same elements in the same
// order with either source (the sums of squares round alike).
template <bool PHILOX, typename S, class Fn>
__device__ __forceinline__ void noise_range(uint64_t key, uint64_t ctr, const S* noise, int64_t g0, int64_t g1,
                                            int64_t t, int64_t nt, Fn&& f) {
  auto one = [&](int64_t g) {
    if constexpr (PHILOX) {
      return philox_normal_z(key, ctr, static_cast<uint64_t>(g));
    } else {
      return Conv<S>::load(noise[g]);
    }
  };
  const int64_t q0 = (g0 + 3) >> 2, q1 = g1 >> 2;  // the blocks wholly inside [g0, g1)
  const int64_t head_end = q0 <= q1 ? 4 * q0 : g1, tail = q0 <= q1 ? 4 * q1 : g1;
  for (int64_t g = g0 + t; g < head_end; g += nt) f(g, one(g));
  for (int64_t q = q0 + t; q < q1; q += nt) {
    float z[4];
    if constexpr (PHILOX) {
      philox_normal4(key, ctr, static_cast<uint64_t>(q), z);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) z[j] = Conv<S>::load(noise[4 * q + j]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) f(4 * q + j, z[j]);
  }
  for (int64_t g = tail + t; g < g1; g += nt) f(g, one(g));
}

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;
// Resident 256-thread blocks per SM the grid is sized for (2048 threads: full occupancy on sm_80/sm_90
// when registers allow); more blocks than SMs x this only add scheduling rounds to a grid-stride loop.
constexpr int64_t kBlocksPerSM = 8;

#if !defined(__CUDACC_RTC__)
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("pydiff CUDA: ") + what + ": " + cudaGetErrorString(err));
}

inline void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// cudaDevAttrMultiProcessorCount of `device`, queried once per device and cached (the attribute query
// costs a driver call on every launch otherwise). Concurrent first calls store the same value.
inline int64_t sm_count(int device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // static storage: zero-initialized
  if (device >= 0 && device < kMaxDevices) {
    const int c = cache[device].load(std::memory_order_relaxed);
    if (c > 0) return c;
  }
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  if (n < 1) n = 1;
  if (device >= 0 && device < kMaxDevices) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

// Grid of a bandwidth-bound kernel over B samples of `units` work items each (elements or packs):
// y = samples (capped at 65535, grid-striding beyond), x = blocks along a sample, with x*y at most
// SMs x kBlocksPerSM (grid-stride loops cover the rest) and at least 1. The same rule is in
// pydiff/ops/backends/cuda_jit.py (grid_2d).
inline dim3 grid_2d(int64_t units, int64_t B, int64_t sms) {
  const int64_t y = B < kMaxGridY ? (B > 0 ? B : 1) : kMaxGridY;
  const int64_t need = (units + kThreads - 1) / kThreads;
  int64_t cap = (sms * kBlocksPerSM) / y;
  if (cap < 1) cap = 1;
  int64_t x = need < cap ? need : cap;
  if (x < 1) x = 1;
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

// The previous grid rule (a device-independent cap of 2^16 blocks), kept for kernels that have not
// moved to grid_2d yet.
inline unsigned blocks_along(int64_t N, int64_t B, int64_t elems_per_thread = 1) {
  const int64_t need = (N + kThreads * elems_per_thread - 1) / (kThreads * elems_per_thread);
  const int64_t batches = B < kMaxGridY ? B : kMaxGridY;
  int64_t cap = (int64_t(1) << 16) / (batches > 0 ? batches : 1);
  if (cap < 1) cap = 1;
  int64_t n = need < cap ? need : cap;
  return static_cast<unsigned>(n < 1 ? 1 : n);
}

inline unsigned grid_y(int64_t B) { return static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY); }

// True when p is null or 16-byte aligned.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// fused_step for one storage type (fused_step_<dtype>.cu).
template <typename S>
void fused_step_dtype(const FusedStepArgs& a, int64_t sms, cudaStream_t stream);
template <>
void fused_step_dtype<float>(const FusedStepArgs& a, int64_t sms, cudaStream_t stream);
template <>
void fused_step_dtype<__half>(const FusedStepArgs& a, int64_t sms, cudaStream_t stream);
template <>
void fused_step_dtype<__nv_bfloat16>(const FusedStepArgs& a, int64_t sms, cudaStream_t stream);

template <typename F>
inline void dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: f(static_cast<float*>(nullptr)); break;
    case kFloat16: f(static_cast<__half*>(nullptr)); break;
    case kBFloat16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    default: throw std::invalid_argument(std::string(op) + ": unsupported dtype code for CUDA");
  }
}
#endif  // !__CUDACC_RTC__

}  // namespace cuda
}  // namespace pydiff
