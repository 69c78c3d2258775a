// philox_normal on CUDA: out[g] = z(seed, offset, g) (csrc/include/philox.h), grid-stride, 64-bit.
#include "common.cuh"
#include "philox.h"

namespace pydiff {
namespace cuda {

template <typename S>
__global__ void __launch_bounds__(kThreads) philox_normal_kernel(S* out, int64_t numel, uint64_t seed,
                                                                  uint64_t offset) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < numel; g += stride)
    out[g] = Conv<S>::store(::pydiff::philox_normal(seed, offset, static_cast<uint64_t>(g)));
}

void philox_normal(int dtype, int64_t numel, void* out, uint64_t seed, uint64_t offset, int device,
                   uintptr_t stream) {
  if (numel <= 0) return;
  set_device(device);
  const unsigned blocks = blocks_along(numel, 1, 2);
  dispatch_dtype(dtype, "philox_normal", [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    philox_normal_kernel<S><<<blocks, kThreads, 0, as_stream(stream)>>>(static_cast<S*>(out), numel, seed, offset);
  });
  check(cudaGetLastError(), "philox_normal launch");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error (no driver / no device)
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
