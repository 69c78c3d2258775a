// Shared by the kernel translation units (kernels.cpp, fused_step_<dtype>.cpp), which CMake compiles
// once per ISA level with -DPYDIFF_ISA_NS=<namespace> and that level's -m flags. Everything they define
// lives in that namespace, so the levels never share an out-of-line function.
#pragma once

#include <stdint.h>

#include "convert.h"
#include "ops_cpu.h"
#include "pydiff_math.h"

#ifndef PYDIFF_ISA_NS
#error "compile the kernel TUs with -DPYDIFF_ISA_NS=<namespace> (see CMakeLists.txt)"
#endif

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {

PYDIFF_HD int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// fused_step for one data dtype (fused_step_<dtype>.cpp).
template <int DT>
void fused_step_dt(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);
template <>
void fused_step_dt<kFloat32>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);
template <>
void fused_step_dt<kFloat64>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);
template <>
void fused_step_dt<kFloat16>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);
template <>
void fused_step_dt<kBFloat16>(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);

// The level's table (kernels.cpp).
const KernelTable& kernel_table();

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff
