// Helpers shared by the CPU and CUDA pybind11 modules: pointer conversion and argument packing.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "pydiff_abi.h"
#include "pydiff_checks.h"

namespace pydiff {
namespace bind {

namespace py = pybind11;

template <typename P = void>
inline P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

inline FusedStepArgs make_fused_step_args(int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef,
                                          int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride,
                                          uintptr_t out, uintptr_t w_out, const std::vector<uintptr_t>& hist,
                                          uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset,
                                          uintptr_t threshold) {
  require(hist.size() <= 3, "fused_step", "at most 3 history tensors, got " + std::to_string(hist.size()));
  FusedStepArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.x = ptr(x);
  a.m = ptr(m);
  a.coef = ptr(coef);
  a.R = R;
  a.index = ptr<const int64_t>(index);
  a.index_stride = index_stride;
  a.row_stride = row_stride;
  a.out = ptr(out);
  a.w_out = ptr(w_out);
  a.nhist = static_cast<int>(hist.size());
  for (size_t k = 0; k < hist.size(); ++k) a.hist[k] = ptr(hist[k]);
  a.noise = ptr(noise);
  a.has_seed = seed.has_value();
  a.seed = seed.value_or(0);
  a.offset = offset;
  a.threshold = ptr(threshold);
  return a;
}

inline SumsqArgs make_sumsq_args(int dtype, int64_t B, int64_t N, uintptr_t a_, uintptr_t b_,
                                 std::optional<uint64_t> seed, uint64_t offset, uintptr_t out) {
  SumsqArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.a = ptr(a_);
  a.b = ptr(b_);
  a.has_seed = seed.has_value();
  a.seed = seed.value_or(0);
  a.offset = offset;
  a.out = ptr(out);
  return a;
}

inline DynThreshArgs make_dyn_thresh_args(int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef,
                                          int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride,
                                          double ratio, double max_val, uintptr_t out) {
  DynThreshArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.x = ptr(x);
  a.m = ptr(m);
  a.coef = ptr(coef);
  a.R = R;
  a.index = ptr<const int64_t>(index);
  a.index_stride = index_stride;
  a.row_stride = row_stride;
  a.ratio = ratio;
  a.max_val = max_val;
  a.out = ptr(out);
  return a;
}

inline void add_dtype_codes(py::module_& mod) {
  mod.attr("FLOAT32") = static_cast<int>(kFloat32);
  mod.attr("FLOAT64") = static_cast<int>(kFloat64);
  mod.attr("FLOAT16") = static_cast<int>(kFloat16);
  mod.attr("BFLOAT16") = static_cast<int>(kBFloat16);
  mod.attr("NCOEF") = static_cast<int>(kNCoef);
}

}  // namespace bind
}  // namespace pydiff
