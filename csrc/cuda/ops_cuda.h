// Host-side entry points of the CUDA kernels (csrc/cuda/*.cu). Plain C++ (no CUDA headers) so that
// the pybind11 bindings compile with the host compiler. The rng tensor of a PhiloxSource is device
// memory and only ever read by the kernels. `stream` is a cudaStream_t as an integer
// (torch.cuda.current_stream().cuda_stream; 0 = legacy default stream); `device` is the CUDA device
// ordinal the pointers live on. Errors throw std::runtime_error. float64 is not supported.
#pragma once

#include <stdint.h>

#include <string>

#include "pydiff_abi.h"

namespace pydiff {
namespace cuda {

void fused_step(const FusedStepArgs& a, int device, uintptr_t stream);

// Two-stage deterministic reduction: stage 1 writes S*B*sumsq_num_partials(N) float partial sums into
// `partials` (caller-allocated device memory), stage 2 sums each sample's partials in a fixed order into
// a.out (S, B) float. No atomics, so results are bitwise reproducible.
int64_t sumsq_num_partials(int64_t N);
void sumsq(const SumsqArgs& a, void* partials, int device, uintptr_t stream);

// dynamic_threshold, stage 1: abs_out (B, N) float = |x0|, x0 = S*(P*x + Q*m_e) (x0 = x when a.m is null).
// The launcher (pydiff/ops/backends/cuda.py) then selects ranks lo and hi per sample (torch.kthvalue) and
// stage 2 applies the quantile rule and the clamp: out (B,) float from v[lo], v[hi] and a NaN flag (uint8).
void abs_x0(const DynThreshArgs& a, void* abs_out, int device, uintptr_t stream);
void dyn_thresh_finish(int64_t B, const void* vlo, const void* vhi, const void* any_nan, double wt, double max_val,
                       void* out, int device, uintptr_t stream);

void philox_normal(const PhiloxNormalArgs& a, int device, uintptr_t stream);

// langevin_step: sumsq (partials as for sumsq, S = 2), the rows kernel, fused_step with one row per sample.
void langevin_step(const LangevinArgs& a, void* partials, int device, uintptr_t stream);

// Introspection (no GPU needed): device count (0 when there is no driver/GPU), cudart version,
// the architectures compiled in.
int device_count();
int runtime_version();
std::string archs();

}  // namespace cuda
}  // namespace pydiff

// fused_step_backward (csrc/cuda/fused_step_backward.cu); FusedStepBackwardArgs is defined in pydiff_math.h.
namespace pydiff {
struct FusedStepBackwardArgs;
namespace cuda {
void fused_step_backward(const FusedStepBackwardArgs& a, int device, uintptr_t stream);
}  // namespace cuda
}  // namespace pydiff
