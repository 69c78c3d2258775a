// Argument checks of the native entry points (host only). They guard the raw-pointer ABI against
// misuse from Python; the public dispatcher (pydiff.ops) has already validated shapes and dtypes.
// Violations throw std::invalid_argument (ValueError in Python).
#pragma once

#include <stdexcept>
#include <string>

#include "pydiff_abi.h"

namespace pydiff {

inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

inline void check_dtype(const char* op, int dtype, bool allow_f64) {
  require(dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16 || (allow_f64 && dtype == kFloat64),
          op, "unsupported dtype code " + std::to_string(dtype) + (allow_f64 ? "" : " (float64 is not supported here)"));
}

inline void check_rows(const char* op, const void* coef, int64_t R, const int64_t* index, int64_t index_stride,
                       int64_t row_stride, int64_t B) {
  require(coef != nullptr, op, "coef pointer is null");
  require(R >= 1, op, "coef must have at least one row");
  require(index_stride == 0 || index_stride == 1, op, "index_stride must be 0 or 1");
  require(row_stride == 0 || row_stride == 1, op, "row_stride must be 0 or 1");
  if (!index && row_stride == 1) require(R >= B, op, "row_stride=1 needs one coef row per sample (R >= B)");
}

inline void check_fused_step(const FusedStepArgs& a, bool allow_f64) {
  const char* op = "fused_step";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  if (a.B == 0 || a.N == 0) return;
  require(a.x && a.m && a.out, op, "x, m and out must not be null");
  check_rows(op, a.coef, a.R, a.index, a.index_stride, a.row_stride, a.B);
  require(a.nhist >= 0 && a.nhist <= 3, op, "at most 3 history tensors");
  for (int k = 0; k < a.nhist; ++k) require(a.hist[k] != nullptr, op, "history pointer is null");
  require(!(a.noise && a.has_seed), op, "give either noise or seed, not both");
}

inline void check_sumsq(const SumsqArgs& a, bool allow_f64) {
  const char* op = "sumsq";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  require(!(a.b && a.has_seed), op, "give either b or seed, not both");
  if (a.B == 0) return;
  require(a.out != nullptr, op, "out must not be null");
  if (a.N > 0) require(a.a != nullptr, op, "a must not be null");
}

inline void check_dynamic_threshold(const DynThreshArgs& a, bool allow_f64) {
  const char* op = "dynamic_threshold";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  require(a.ratio >= 0.0 && a.ratio <= 1.0, op, "ratio must be in [0, 1]");
  require(!(a.max_val != a.max_val), op, "max_val must not be NaN");
  if (a.B == 0) return;
  require(a.N > 0, op, "samples must not be empty");
  require(a.x && a.out, op, "x and out must not be null");
  if (a.m) check_rows(op, a.coef, a.R, a.index, a.index_stride, a.row_stride, a.B);
}

}  // namespace pydiff
