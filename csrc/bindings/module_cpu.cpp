// pybind11 module pydiff._C: the C++/OpenMP kernels (csrc/cpu). Raw-pointer ABI, see csrc/README.md.
#include <omp.h>

#include <tuple>

#include "common_bindings.h"
#include "ops_cpu.h"
#include "philox.h"

namespace py = pybind11;
using namespace pydiff;
using namespace pydiff::bind;

#define PYDIFF_STR2(x) #x
#define PYDIFF_STR(x) PYDIFF_STR2(x)

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "pydiff C++/OpenMP kernels (raw-pointer ABI; use pydiff._backend_cpu)";
  add_dtype_codes(mod);

  mod.def(
      "fused_step",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t out, uintptr_t w_out, std::vector<uintptr_t> hist,
         uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset, uintptr_t threshold, int num_threads) {
        const FusedStepArgs a = make_fused_step_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, out,
                                                     w_out, hist, noise, seed, offset, threshold);
        check_fused_step(a, /*allow_f64=*/true);
        py::gil_scoped_release release;
        cpu::fused_step(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("out"), py::arg("w_out"),
      py::arg("hist"), py::arg("noise"), py::arg("seed"), py::arg("offset"), py::arg("threshold"),
      py::arg("num_threads") = 0,
      "out = fused sampler step (docs/ops.md); pointers are data_ptr() ints, 0 = None");

  mod.def(
      "sumsq",
      [](int dtype, int64_t B, int64_t N, uintptr_t a_, uintptr_t b_, std::optional<uint64_t> seed, uint64_t offset,
         uintptr_t out, int num_threads) {
        const SumsqArgs a = make_sumsq_args(dtype, B, N, a_, b_, seed, offset, out);
        check_sumsq(a, true);
        py::gil_scoped_release release;
        cpu::sumsq(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("a"), py::arg("b"), py::arg("seed"), py::arg("offset"),
      py::arg("out"), py::arg("num_threads") = 0, "per-sample sums of squares into out (S, B) of the compute type");

  mod.def(
      "dynamic_threshold",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, double ratio, double max_val, uintptr_t out, int num_threads) {
        const DynThreshArgs a =
            make_dyn_thresh_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, ratio, max_val, out);
        check_dynamic_threshold(a, true);
        py::gil_scoped_release release;
        cpu::dynamic_threshold(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("ratio"), py::arg("max_val"),
      py::arg("out"), py::arg("num_threads") = 0, "per-sample dynamic-thresholding scale into out (B,)");

  mod.def(
      "philox_normal",
      [](int dtype, int64_t numel, uintptr_t out, uint64_t seed, uint64_t offset, int num_threads) {
        check_dtype("philox_normal", dtype, true);
        require(numel >= 0, "philox_normal", "numel must be >= 0");
        require(numel == 0 || out != 0, "philox_normal", "out must not be null");
        py::gil_scoped_release release;
        cpu::philox_normal(dtype, numel, ptr(out), seed, offset, num_threads);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("out"), py::arg("seed"), py::arg("offset"),
      py::arg("num_threads") = 0, "fill out[g] with the Philox normal z(seed, offset, g)");

  mod.def(
      "philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        const Philox4x32 r = philox4x32_10(c0, c1, c2, c3, k0, k1);
        return std::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      "the raw Philox4x32-10 block (csrc/include/philox.h) for known-answer tests");

  mod.def(
      "philox_normal_value", [](uint64_t seed, uint64_t offset, uint64_t g) { return philox_normal(seed, offset, g); },
      py::arg("seed"), py::arg("offset"), py::arg("g"), "one Philox normal z(seed, offset, g) as float32");

  mod.def("build_info", []() {
    py::dict d;
    d["openmp"] = static_cast<int>(_OPENMP);
    d["max_threads"] = omp_get_max_threads();
#ifdef PYDIFF_NATIVE_ARCH
    d["native_arch"] = true;
#else
    d["native_arch"] = false;
#endif
    d["compiler"] = std::string(__VERSION__);
    return d;
  });
}
