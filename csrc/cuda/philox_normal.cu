// philox_normal on CUDA: out[g] = z(key, ctr_offset, g) (pydiff_math.h), grid-stride, 64-bit; the host
// fused_step entry; introspection.
#include "common.cuh"

namespace pydiff {
namespace cuda {

template <typename S>
__global__ void __launch_bounds__(kThreads) philox_normal_kernel(S* out, int64_t numel, PhiloxSource src) {
  uint64_t key, ctr;
  philox_key_ctr(src, key, ctr);  // rng (if any) is read here, on the device
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < numel; g += stride)
    out[g] = Conv<S>::store(philox_normal_z(key, ctr, static_cast<uint64_t>(g)));
}

void philox_normal(const PhiloxNormalArgs& a, int device, uintptr_t stream) {
  if (a.numel <= 0) return;
  set_device(device);
  const unsigned blocks = blocks_along(a.numel, 1, 2);
  dispatch_dtype(a.dtype, "philox_normal", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    philox_normal_kernel<S><<<blocks, kThreads, 0, as_stream(stream)>>>(static_cast<S*>(a.out), a.numel, a.philox);
  });
  check(cudaGetLastError(), "philox_normal launch");
}

void fused_step(const FusedStepArgs& a, int device, uintptr_t stream) {
  if (a.B == 0 || a.N == 0) return;
  set_device(device);
  dispatch_dtype(a.dtype, "fused_step", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    fused_step_dtype<S>(a, as_stream(stream));
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

}  // namespace cuda
}  // namespace pydiff
