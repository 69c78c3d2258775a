// Argument checks of the native entry points (host only). They guard the raw-pointer ABI against
// misuse from Python; the public functions (pydiff.ops) have already validated shapes and dtypes.
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
  require(a.nhist >= 0 && a.nhist <= kKMax, op, "at most " + std::to_string(kKMax) + " history tensors");
  require(!(a.noise && a.philox.on), op, "give at most one of noise, seed and rng");
  if (a.B == 0 || a.N == 0) return;
  require(a.x && a.m && a.out, op, "x, m and out must not be null");
  check_rows(op, a.coef, a.R, a.index, a.index_stride, a.row_stride, a.B);
  for (int k = 0; k < a.nhist; ++k) require(a.hist[k] != nullptr, op, "history pointer is null");
}

inline void check_sumsq(const SumsqArgs& a, bool allow_f64) {
  const char* op = "sumsq";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  require(!(a.b && a.philox.on), op, "give at most one of b, seed and rng");
  if (a.B == 0) return;
  require(a.out != nullptr, op, "out must not be null");
  if (a.N > 0) require(a.a != nullptr, op, "a must not be null");
}

inline void check_langevin_step(const LangevinArgs& a, bool allow_f64) {
  const char* op = "langevin_step";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  require((a.noise != nullptr) != a.philox.on, op, "give exactly one of noise, seed and rng");
  require(a.coef_stride == 0 || a.coef_stride == 1, op, "coef_stride must be 0 or 1");
  if (a.B == 0 || a.N == 0) return;
  require(a.x && a.m && a.out && a.coef, op, "x, m, coef and out must not be null");
  require(a.sums && a.rows, op, "the sums and rows scratch buffers must not be null");
}

inline void check_dynamic_threshold(const DynThreshArgs& a, bool allow_f64) {
  const char* op = "dynamic_threshold";
  check_dtype(op, a.dtype, allow_f64);
  require(a.B >= 0 && a.N >= 0, op, "B and N must be >= 0");
  require(!(a.max_val != a.max_val), op, "max_val must not be NaN");
  require(a.wt >= 0.0 && a.wt <= 1.0, op, "wt must be in [0, 1]");
  require(!(a.m2 && !a.m), op, "m2 needs m");
  if (a.B == 0) return;
  require(a.N > 0, op, "samples must not be empty");
  require(a.lo >= 0 && a.lo < a.N && a.hi >= a.lo && a.hi <= a.lo + 1 && a.hi < a.N, op,
          "quantile ranks must satisfy 0 <= lo <= hi <= lo + 1 and hi < N (N = " + std::to_string(a.N) +
              ", lo = " + std::to_string(a.lo) + ", hi = " + std::to_string(a.hi) + ")");
  require(a.x && a.out, op, "x and out must not be null");
  if (a.m) check_rows(op, a.coef, a.R, a.index, a.index_stride, a.row_stride, a.B);
}

inline void check_philox_normal(const PhiloxNormalArgs& a, bool allow_f64) {
  const char* op = "philox_normal";
  check_dtype(op, a.dtype, allow_f64);
  require(a.numel >= 0, op, "numel must be >= 0");
  require(a.philox.on, op, "give seed or rng");
  require(a.numel == 0 || a.out != nullptr, op, "out must not be null");
}

}  // namespace pydiff
