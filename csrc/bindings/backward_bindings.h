// Argument packing and checks of fused_step_backward, shared by the CPU and CUDA pybind11 modules.
#pragma once

#include <optional>
#include <string>

#include "common_bindings.h"

namespace pydiff {
namespace bind {

inline FusedStepBackwardArgs make_fused_step_backward_args(
    int dtype, int64_t B, int64_t N, uintptr_t grad_out, uintptr_t grad_w, uintptr_t x, uintptr_t m, uintptr_t coef,
    int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride, uintptr_t noise,
    std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng, uintptr_t threshold, uintptr_t m2, uintptr_t var,
    uintptr_t dx, uintptr_t dm, uintptr_t dm2, uintptr_t dnoise, uintptr_t dvar) {
  FusedStepBackwardArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.grad_out = ptr(grad_out);
  a.grad_w = ptr(grad_w);
  a.x = ptr(x);
  a.m = ptr(m);
  a.m2 = ptr(m2);
  a.var = ptr(var);
  a.coef = ptr(coef);
  a.R = R;
  a.index = ptr<const int64_t>(index);
  a.index_stride = index_stride;
  a.row_stride = row_stride;
  a.noise = ptr(noise);
  a.philox = make_philox("fused_step_backward", seed, offset, rng);
  a.threshold = ptr(threshold);
  a.dx = ptr(dx);
  a.dm = ptr(dm);
  a.dm2 = ptr(dm2);
  a.dnoise = ptr(dnoise);
  a.dvar = ptr(dvar);
  return a;
}

inline void check_fused_step_backward(const FusedStepBackwardArgs& a, bool allow_f64) {
  const char* op = "fused_step_backward";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  require(!(a.noise && a.philox.on), op, "give at most one of noise, seed and rng");
  require(!a.dm2 || a.m2, op, "dm2 needs m2");
  require(!a.dnoise || a.noise, op, "dnoise needs a noise tensor");
  require(!a.dvar || a.var, op, "dvar needs var");
  if (a.B == 0 || a.N == 0) return;
  require(a.grad_out && a.x && a.m && a.dx && a.dm, op, "grad_out, x, m, dx and dm must not be null");
  check_rows(op, a.coef, a.R, a.index, a.index_stride, a.row_stride, a.B);
}

}  // namespace bind
}  // namespace pydiff
