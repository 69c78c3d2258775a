// C++/OpenMP implementations of the pydiff ops (docs/ops.md). Arguments are the normalized,
// already-checked structs of pydiff_abi.h; num_threads <= 0 means the OpenMP default.
//
// The element loops live in kernels.cpp, which CMake compiles once per x86-64 level (baseline SSE2,
// AVX2+F16C, AVX-512) into its own namespace; one KernelTable per level, chosen once at load
// (select_isa) the way PyTorch picks its CPU_CAPABILITY kernels. Everything else (checks, selection,
// sorting) is ordinary baseline code in ops_cpu.cpp.
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

#include "pydiff_abi.h"

namespace pydiff {
namespace cpu {

void fused_step(const FusedStepArgs& a, int num_threads);
void sumsq(const SumsqArgs& a, int num_threads);
void dynamic_threshold(const DynThreshArgs& a, int num_threads);
void philox_normal(const PhiloxNormalArgs& a, int num_threads);
// sumsq, langevin_rows (pydiff_math.h), fused_step: the two passes of a Langevin corrector step.
void langevin_step(const LangevinArgs& a, int num_threads);
// torch.randn's float32 normals from a CPU generator's get_state() bytes, advanced in place (torch_normal.cpp):
// 0, or < 0 with nothing written for a short or invalid state or 0 < n < 16.
int torch_normal_fill(float* out, int64_t n, uint8_t* state, int64_t state_bytes, int num_threads);

// Checks every selected coef row against [-R, R); throws std::out_of_range (IndexError).
void check_row_range(const char* op, const int64_t* index, int64_t index_stride, int64_t row_stride, int64_t R,
                     int64_t B);

int resolve_threads(int num_threads);

// Work decomposition: (sample, chunk) tasks of kChunk elements; no OpenMP region below kParallelMin.
constexpr int64_t kChunk = 16384;
constexpr int64_t kParallelMin = 32768;

// The element loops of one ISA level (kernels.cpp). key/ctr: the resolved Philox key and counter
// offset (the rng tensor, if any, was read on the host).
struct KernelTable {
  const char* name;
  void (*fused_step)(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);
  void (*sumsq)(const SumsqArgs& a, uint64_t key, uint64_t ctr, int nt);
  void (*philox_normal)(const PhiloxNormalArgs& a, uint64_t key, uint64_t ctr, int nt);
  // |x0| of sample b into v (N values of the compute type); returns the number of NaN x0.
  int64_t (*abs_x0)(const DynThreshArgs& a, int64_t b, void* v);
};

// ISA levels: the names compiled in, those this CPU can run, the active one.
std::vector<std::string> compiled_isas();
std::vector<std::string> supported_isas();
std::string active_isa();
// Select a level by name ("" = the best supported). Throws std::invalid_argument for an unknown or
// unsupported name.
void select_isa(const std::string& name);

}  // namespace cpu
}  // namespace pydiff

// fused_step_backward (csrc/cpu/fused_step_backward.cpp; its per-level loops are looked up by active_isa(),
// outside the KernelTable). FusedStepBackwardArgs is defined in pydiff_math.h.
namespace pydiff {
struct FusedStepBackwardArgs;
namespace cpu {
void fused_step_backward(const FusedStepBackwardArgs& a, int num_threads);
}  // namespace cpu
}  // namespace pydiff
