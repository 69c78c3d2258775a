// philox_normal on CUDA: out[g] = z(key, ctr_offset, g) (pydiff_math.h), grid-stride, 64-bit; the host
// fused_step entry; introspection (host parts are nvcc-only: NVRTC compiles the kernel alone).
#include "common.cuh"

namespace pydiff {
namespace cuda {

// VEC (out 16-byte aligned): whole 16-byte packs with one 128-bit store each, the unaligned head and the
// tail element by element. z depends only on (key, ctr_offset, g), so the path never changes a value.
template <typename S, bool VEC>
__global__ void __launch_bounds__(kThreads) philox_normal_kernel(S* out, int64_t numel, PhiloxSource src) {
  uint64_t key, ctr;
  philox_key_ctr(src, key, ctr);  // rng (if any) is read here, on the device
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (VEC) {
    constexpr int V = Pack<S>::kVec;
    const Split sp = split_sample(0, numel, V);  // head is 0: out itself is aligned
    for (int64_t q = tid; q < sp.packs; q += stride) {
      const int64_t g = q * V;
      float z[V];
      philox_normal_pack<V>(key, ctr, static_cast<uint64_t>(g), z);  // V / 4 Philox blocks
      store_pack(out, g, z);
    }
    if (tid < sp.tail) {
      const int64_t g = sp.packs * V + tid;
      out[g] = Conv<S>::store(philox_normal_z(key, ctr, static_cast<uint64_t>(g)));
    }
  } else {
    for (int64_t g = tid; g < numel; g += stride)
      out[g] = Conv<S>::store(philox_normal_z(key, ctr, static_cast<uint64_t>(g)));
  }
}

#if !defined(__CUDACC_RTC__)
void philox_normal(const PhiloxNormalArgs& a, int device, uintptr_t stream) {
  if (a.numel <= 0) return;
  set_device(device);
  const int64_t sms = sm_count(device);
  const bool vec = aligned16(a.out);
  dispatch_dtype(a.dtype, "philox_normal", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = Pack<S>::kVec;
    const dim3 grid = grid_2d(vec ? (a.numel + V - 1) / V : a.numel, 1, sms);
    if (vec)
      philox_normal_kernel<S, true><<<grid.x, kThreads, 0, as_stream(stream)>>>(static_cast<S*>(a.out), a.numel, a.philox);
    else
      philox_normal_kernel<S, false><<<grid.x, kThreads, 0, as_stream(stream)>>>(static_cast<S*>(a.out), a.numel, a.philox);
  });
  check(cudaGetLastError(), "philox_normal launch");
}

void fused_step(const FusedStepArgs& a, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  set_device(device);
  dispatch_dtype(a.dtype, "fused_step", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    fused_step_dtype<S>(a, sm_count(device), as_stream(stream));
  });
  check(cudaGetLastError(), "fused_step launch");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error (no driver / no device)
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

std::string archs() {
#ifdef PYDIFF_CUDA_ARCHS_STR
  return PYDIFF_CUDA_ARCHS_STR;
#else
  return "";
#endif
}

#endif  // !__CUDACC_RTC__

}  // namespace cuda
}  // namespace pydiff
