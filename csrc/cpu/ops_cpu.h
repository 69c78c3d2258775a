// C++/OpenMP implementations of the pydiff ops (docs/ops.md). Arguments are the normalized,
// already-checked structs of pydiff_abi.h; num_threads <= 0 means the OpenMP default.
#pragma once

#include <stdint.h>

#include "pydiff_abi.h"

namespace pydiff {
namespace cpu {

void fused_step(const FusedStepArgs& a, int num_threads);
void sumsq(const SumsqArgs& a, int num_threads);
void dynamic_threshold(const DynThreshArgs& a, int num_threads);
void philox_normal(int dtype, int64_t numel, void* out, uint64_t seed, uint64_t offset, int num_threads);

// per-dtype instantiations of fused_step (fused_step_<dtype>.cpp)
template <int DT>
void fused_step_typed(const FusedStepArgs& a, int num_threads);

// Checks every selected coef row against [0, R); throws std::out_of_range (IndexError).
void check_row_range(const char* op, const int64_t* index, int64_t index_stride, int64_t row_stride, int64_t R,
                     int64_t B);

int resolve_threads(int num_threads);

// Work decomposition: (sample, chunk) tasks of kChunk elements; no OpenMP region below kParallelMin.
constexpr int64_t kChunk = 16384;
constexpr int64_t kParallelMin = 32768;
// Philox noise is produced in blocks of kZBlock values (stack buffers).
constexpr int64_t kZBlock = 512;

}  // namespace cpu
}  // namespace pydiff
