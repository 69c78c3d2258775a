// Shared by the kernel translation units (kernels.cpp, fused_step_<dtype>.cpp), which CMake compiles
// once per ISA level with -DPYDIFF_ISA_NS=<namespace> and that level's -m flags. Everything they define
// lives in that namespace, so the levels never share an out-of-line function.
#pragma once

#include <stdint.h>
#include <stdlib.h>

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

// The work decomposition of every per-sample kernel: (sample, chunk) tasks of `task` elements, task t
// covering the flat elements [g0, g1) of sample b, on nt OpenMP threads when the launch has at least
// par_min elements. body(t, b, g0, g1).
template <class Body>
inline void for_each_task(int64_t B, int64_t N, int64_t task, int64_t par_min, int nt, Body&& body) {
  const int64_t chunks = N > 0 ? (N + task - 1) / task : 0;
  const int64_t tasks = B * chunks;
#pragma omp parallel for schedule(static) num_threads(nt) if (B * N >= par_min && nt > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / chunks;
    const int64_t c0 = (t - b * chunks) * task;
    const int64_t g0 = b * N + c0;
    body(t, b, g0, g0 + imin(task, N - c0));
  }
}

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

#if defined(PYDIFF_HAVE_AVX512BF16_TU)
// fused_step for bfloat16 with vcvtneps2bf16 (fused_step_bf16_avx512bf16.cpp), and whether to use it:
// the CPU reports AVX512-BF16 and the environment does not set PYDIFF_CPU_AVX512BF16=0 (which keeps
// the integer rounding of the avx512 level, to test it on such a CPU). Read once. Only the avx512
// fused_step_bf16.cpp calls it, so fused_step_bf16_avx512bf16.cpp (-mavx512bf16) emits no copy of it.
namespace isa_avx512bf16 {
void fused_step_bf16_native(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt);
}
inline bool bf16_native_enabled() {
  static const bool on = [] {
    const char* e = getenv("PYDIFF_CPU_AVX512BF16");
    return __builtin_cpu_supports("avx512bf16") && !(e && e[0] == '0' && e[1] == 0);
  }();
  return on;
}
#endif
}  // namespace cpu
}  // namespace pydiff
