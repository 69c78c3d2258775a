// pybind11 module pydiff._C: the C++/OpenMP kernels (csrc/cpu). Raw-pointer ABI, see csrc/README.md.
#include <omp.h>

#include <cstdlib>

#include "backward_bindings.h"
#include "common_bindings.h"
#include "ops_cpu.h"

namespace py = pybind11;
using namespace pydiff;
using namespace pydiff::bind;

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "pydiff C++/OpenMP kernels (raw-pointer ABI; use pydiff.ops.backends.cpu)";
  add_common(mod);

  // The ISA level is chosen once, here: PYDIFF_CPU_ISA=baseline|avx2|avx512 forces one, else the best
  // this CPU runs. An unknown or unsupported level fails the import (the launcher reports the reason).
  {
    const char* env = std::getenv("PYDIFF_CPU_ISA");
    const std::string want = env ? std::string(env) : std::string();
    try {
      cpu::select_isa(want);
    } catch (const std::invalid_argument& e) {
      throw py::import_error(std::string("PYDIFF_CPU_ISA: ") + e.what());
    }
  }

  mod.def(
      "fused_step",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t out, uintptr_t w_out, std::vector<uintptr_t> hist,
         uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng, uintptr_t threshold,
         uintptr_t m2, uintptr_t var, int num_threads) {
        const FusedStepArgs a = make_fused_step_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, out,
                                                     w_out, hist, noise, seed, offset, rng, threshold, m2, var);
        check_fused_step(a, /*allow_f64=*/true);
        py::gil_scoped_release release;
        cpu::fused_step(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("out"), py::arg("w_out"),
      py::arg("hist"), py::arg("noise"), py::arg("seed"), py::arg("offset"), py::arg("rng") = 0,
      py::arg("threshold") = 0, py::arg("m2") = 0, py::arg("var") = 0, py::arg("num_threads") = 0,
      "out = fused sampler step (docs/ops.md); pointers are data_ptr() ints, 0 = None");

  mod.def(
      "sumsq",
      [](int dtype, int64_t B, int64_t N, uintptr_t a_, uintptr_t b_, std::optional<uint64_t> seed, uint64_t offset,
         uintptr_t rng, uintptr_t out, int num_threads) {
        const SumsqArgs a = make_sumsq_args(dtype, B, N, a_, b_, seed, offset, rng, out);
        check_sumsq(a, true);
        py::gil_scoped_release release;
        cpu::sumsq(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("a"), py::arg("b"), py::arg("seed"), py::arg("offset"),
      py::arg("rng"), py::arg("out"), py::arg("num_threads") = 0,
      "per-sample sums of squares into out (S, B) of the compute type");

  mod.def(
      "langevin_step",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t coef_stride,
         bool sample_norm, uintptr_t out, uintptr_t w_out, uintptr_t noise, std::optional<uint64_t> seed,
         uint64_t offset, uintptr_t rng, uintptr_t sums, uintptr_t rows, int num_threads) {
        const LangevinArgs a = make_langevin_args(dtype, B, N, x, m, coef, coef_stride, sample_norm, out, w_out, noise,
                                                  seed, offset, rng, sums, rows);
        check_langevin_step(a, true);
        py::gil_scoped_release release;
        cpu::langevin_step(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"),
      py::arg("coef_stride"), py::arg("sample_norm"), py::arg("out"), py::arg("w_out"), py::arg("noise"),
      py::arg("seed"), py::arg("offset"), py::arg("rng"), py::arg("sums"), py::arg("rows"),
      py::arg("num_threads") = 0,
      "one Langevin corrector step (docs/ops.md, langevin_step): sums of squares into sums (2, B), rows into "
      "rows (B, NCOEF), the update into out (and x_mean into w_out)");

  mod.def(
      "dynamic_threshold",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t m2, int64_t lo, int64_t hi, double wt, double max_val,
         uintptr_t out, int num_threads) {
        const DynThreshArgs a = make_dyn_thresh_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, m2,
                                                     lo, hi, wt, max_val, out);
        check_dynamic_threshold(a, true);
        py::gil_scoped_release release;
        cpu::dynamic_threshold(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("m2"), py::arg("lo"), py::arg("hi"),
      py::arg("wt"), py::arg("max_val"), py::arg("out"), py::arg("num_threads") = 0,
      "per-sample dynamic-thresholding scale into out (B,)");

  mod.def(
      "philox_normal",
      [](int dtype, int64_t numel, uintptr_t out, std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng,
         int num_threads) {
        const PhiloxNormalArgs a = make_philox_normal_args(dtype, numel, out, seed, offset, rng);
        check_philox_normal(a, true);
        py::gil_scoped_release release;
        cpu::philox_normal(a, num_threads);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("out"), py::arg("seed"), py::arg("offset"), py::arg("rng") = 0,
      py::arg("num_threads") = 0, "fill out[g] with the Philox normal z(key, ctr_offset, g)");

  mod.def(
      "fused_step_backward",
      [](int dtype, int64_t B, int64_t N, uintptr_t grad_out, uintptr_t grad_w, uintptr_t x, uintptr_t m,
         uintptr_t coef, int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride, uintptr_t noise,
         std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng, uintptr_t threshold, uintptr_t m2,
         uintptr_t var, uintptr_t dx, uintptr_t dm, uintptr_t dm2, uintptr_t dnoise, uintptr_t dvar, int num_threads) {
        const FusedStepBackwardArgs a =
            make_fused_step_backward_args(dtype, B, N, grad_out, grad_w, x, m, coef, R, index, index_stride,
                                          row_stride, noise, seed, offset, rng, threshold, m2, var, dx, dm, dm2,
                                          dnoise, dvar);
        check_fused_step_backward(a, /*allow_f64=*/true);
        py::gil_scoped_release release;
        cpu::fused_step_backward(a, num_threads);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("grad_out"), py::arg("grad_w"), py::arg("x"),
      py::arg("m"), py::arg("coef"), py::arg("R"), py::arg("index"), py::arg("index_stride"),
      py::arg("row_stride"), py::arg("noise"), py::arg("seed"), py::arg("offset"), py::arg("rng"),
      py::arg("threshold"), py::arg("m2"), py::arg("var"), py::arg("dx"), py::arg("dm"), py::arg("dm2"),
      py::arg("dnoise"), py::arg("dvar"), py::arg("num_threads") = 0,
      "gradients of fused_step (pydiff/ops/fused_step_backward.py) into dx, dm, dm2, dnoise, dvar; 0 = None");

  mod.def(
      "torch_normal_fill",
      [](uintptr_t out, int64_t n, uintptr_t state, int64_t state_bytes, int num_threads) {
        py::gil_scoped_release release;
        return cpu::torch_normal_fill(reinterpret_cast<float*>(out), n, reinterpret_cast<uint8_t*>(state),
                                      state_bytes, num_threads);
      },
      py::arg("out"), py::arg("n"), py::arg("state"), py::arg("state_bytes"), py::arg("num_threads") = 0,
      "out[:n] = torch.randn(n) of the CPU generator whose get_state() bytes are at state, which are advanced "
      "in place; returns 0, or < 0 (nothing written) for a short or invalid state or 0 < n < 16");

  mod.def("isa", &cpu::active_isa, "the ISA level whose kernels run (baseline, avx2, avx512)");
  mod.def("compiled_isas", &cpu::compiled_isas, "the ISA levels compiled into this module, best first");
  mod.def("supported_isas", &cpu::supported_isas, "the compiled levels this CPU can run, best first");
  mod.def(
      "set_isa",
      [](const std::string& name) {
        const std::string old = cpu::active_isa();
        cpu::select_isa(name);
        return old;
      },
      py::arg("name"),
      "switch the ISA level for this process ('' = the best supported); returns the previous one. Not "
      "thread-safe against running kernels: meant for tests and benchmarks.");

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
    d["isa"] = cpu::active_isa();
    d["compiled_isas"] = cpu::compiled_isas();
    return d;
  });
}
