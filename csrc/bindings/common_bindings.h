// Helpers shared by the CPU and CUDA pybind11 modules: pointer conversion, argument packing, and the
// module attributes both export (dtype codes, COLUMNS, NCOEF, K_MAX, the Philox known-answer hooks).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "philox.h"
#include "pydiff_abi.h"
#include "pydiff_checks.h"
#include "pydiff_math.h"

namespace pydiff {
namespace bind {

namespace py = pybind11;

template <typename P = void>
inline P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

// seed (None or a uint64), offset, rng (pointer, 0 = None): at most one of seed and rng.
inline PhiloxSource make_philox(const char* op, std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng) {
  require(!(seed.has_value() && rng != 0), op, "give either seed or rng, not both");
  PhiloxSource p;
  p.on = seed.has_value() || rng != 0;
  p.seed = seed.value_or(0);
  p.offset = offset;
  p.rng = ptr<const int64_t>(rng);
  return p;
}

inline FusedStepArgs make_fused_step_args(int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef,
                                          int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride,
                                          uintptr_t out, uintptr_t w_out, const std::vector<uintptr_t>& hist,
                                          uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset,
                                          uintptr_t rng, uintptr_t threshold, uintptr_t m2, uintptr_t var) {
  require(hist.size() <= static_cast<size_t>(kKMax), "fused_step",
          "at most " + std::to_string(kKMax) + " history tensors, got " + std::to_string(hist.size()));
  FusedStepArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.x = ptr(x);
  a.m = ptr(m);
  a.m2 = ptr(m2);
  a.var = ptr(var);
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
  a.philox = make_philox("fused_step", seed, offset, rng);
  a.threshold = ptr(threshold);
  return a;
}

inline SumsqArgs make_sumsq_args(int dtype, int64_t B, int64_t N, uintptr_t a_, uintptr_t b_,
                                 std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng, uintptr_t out) {
  SumsqArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.a = ptr(a_);
  a.b = ptr(b_);
  a.philox = make_philox("sumsq", seed, offset, rng);
  a.out = ptr(out);
  return a;
}

inline DynThreshArgs make_dyn_thresh_args(int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef,
                                          int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride,
                                          uintptr_t m2, int64_t lo, int64_t hi, double wt, double max_val,
                                          uintptr_t out) {
  DynThreshArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.x = ptr(x);
  a.m = ptr(m);
  a.m2 = ptr(m2);
  a.coef = ptr(coef);
  a.R = R;
  a.index = ptr<const int64_t>(index);
  a.index_stride = index_stride;
  a.row_stride = row_stride;
  a.lo = lo;
  a.hi = hi;
  a.wt = wt;
  a.max_val = max_val;
  a.out = ptr(out);
  return a;
}

inline LangevinArgs make_langevin_args(int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef,
                                       int64_t coef_stride, bool sample_norm, uintptr_t out, uintptr_t w_out,
                                       uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng,
                                       uintptr_t sums, uintptr_t rows) {
  LangevinArgs a;
  a.dtype = dtype;
  a.B = B;
  a.N = N;
  a.x = ptr(x);
  a.m = ptr(m);
  a.coef = ptr(coef);
  a.coef_stride = coef_stride;
  a.sample_norm = sample_norm;
  a.out = ptr(out);
  a.w_out = ptr(w_out);
  a.noise = ptr(noise);
  a.philox = make_philox("langevin_step", seed, offset, rng);
  a.sums = ptr(sums);
  a.rows = ptr(rows);
  return a;
}

inline PhiloxNormalArgs make_philox_normal_args(int dtype, int64_t numel, uintptr_t out, std::optional<uint64_t> seed,
                                                uint64_t offset, uintptr_t rng) {
  PhiloxNormalArgs a;
  a.dtype = dtype;
  a.numel = numel;
  a.out = ptr(out);
  a.philox = make_philox("philox_normal", seed, offset, rng);
  return a;
}

inline void add_common(py::module_& mod) {
  mod.attr("FLOAT32") = static_cast<int>(kFloat32);
  mod.attr("FLOAT64") = static_cast<int>(kFloat64);
  mod.attr("FLOAT16") = static_cast<int>(kFloat16);
  mod.attr("BFLOAT16") = static_cast<int>(kBFloat16);
  mod.attr("NCOEF") = static_cast<int>(kNCoef);
  mod.attr("K_MAX") = static_cast<int>(kKMax);
  py::tuple cols(static_cast<size_t>(kNCoef));
  for (int k = 0; k < kNCoef; ++k) cols[k] = py::str(kColumnNames[k]);
  mod.attr("COLUMNS") = cols;

  mod.def(
      "philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        const Philox4x32 r = philox4x32_10(c0, c1, c2, c3, k0, k1);  // host path of the shared header
        return std::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      "the raw Philox4x32-10 block (csrc/include/philox.h) for known-answer tests");
  mod.def(
      "philox_normal_value",
      [](uint64_t key, uint64_t ctr_offset, uint64_t g) { return philox_normal_z(key, ctr_offset, g); },
      py::arg("key"), py::arg("ctr_offset"), py::arg("g"),
      "z(key, ctr_offset, g) as float32, from pydiff_math.h's host code (the kernels' noise, bit for bit)");
}

}  // namespace bind
}  // namespace pydiff
