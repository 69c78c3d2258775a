// pybind11 module pydiff._C_cuda: the CUDA kernels (csrc/cuda). Same raw-pointer ABI as pydiff._C plus
// the CUDA device ordinal and a cudaStream_t as an int. Compiled by the host compiler; only
// csrc/cuda/*.cu include CUDA headers. cudart is linked statically, so importing this module needs no
// GPU driver (device_count() is then 0). The rng tensor is device memory and is never read here.
#include "backward_bindings.h"
#include "common_bindings.h"
#include "ops_cuda.h"

namespace py = pybind11;
using namespace pydiff;
using namespace pydiff::bind;

PYBIND11_MODULE(_C_cuda, mod) {
  mod.doc() = "pydiff CUDA kernels (raw-pointer ABI + stream; use pydiff.ops.backends.cuda)";
  add_common(mod);

  mod.def(
      "fused_step",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t out, uintptr_t w_out, std::vector<uintptr_t> hist,
         uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng, uintptr_t threshold,
         uintptr_t m2, uintptr_t var, int device, uintptr_t stream) {
        const FusedStepArgs a = make_fused_step_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, out,
                                                     w_out, hist, noise, seed, offset, rng, threshold, m2, var);
        check_fused_step(a, /*allow_f64=*/false);
        py::gil_scoped_release release;
        cuda::fused_step(a, device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("out"), py::arg("w_out"),
      py::arg("hist"), py::arg("noise"), py::arg("seed"), py::arg("offset"), py::arg("rng"), py::arg("threshold"),
      py::arg("m2"), py::arg("var"), py::arg("device"), py::arg("stream"), "enqueue the fused sampler step on `stream`");

  mod.def("sumsq_num_partials", &cuda::sumsq_num_partials, py::arg("N"),
          "floats per (source, sample) of the sumsq partials buffer");
  mod.def(
      "sumsq",
      [](int dtype, int64_t B, int64_t N, uintptr_t a_, uintptr_t b_, std::optional<uint64_t> seed, uint64_t offset,
         uintptr_t rng, uintptr_t out, uintptr_t partials, int device, uintptr_t stream) {
        const SumsqArgs a = make_sumsq_args(dtype, B, N, a_, b_, seed, offset, rng, out);
        check_sumsq(a, false);
        py::gil_scoped_release release;
        cuda::sumsq(a, ptr(partials), device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("a"), py::arg("b"), py::arg("seed"), py::arg("offset"),
      py::arg("rng"), py::arg("out"), py::arg("partials"), py::arg("device"), py::arg("stream"),
      "per-sample sums of squares into out (S, B) float32; partials: S*B*sumsq_num_partials(N) floats");

  mod.def(
      "langevin_step",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t coef_stride,
         bool sample_norm, uintptr_t out, uintptr_t w_out, uintptr_t noise, std::optional<uint64_t> seed,
         uint64_t offset, uintptr_t rng, uintptr_t sums, uintptr_t rows, uintptr_t partials, int device,
         uintptr_t stream) {
        const LangevinArgs a = make_langevin_args(dtype, B, N, x, m, coef, coef_stride, sample_norm, out, w_out, noise,
                                                  seed, offset, rng, sums, rows);
        check_langevin_step(a, false);
        if (B > 0 && N > 0) require(partials != 0, "langevin_step", "the partials buffer must not be null");
        py::gil_scoped_release release;
        cuda::langevin_step(a, ptr(partials), device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"),
      py::arg("coef_stride"), py::arg("sample_norm"), py::arg("out"), py::arg("w_out"), py::arg("noise"),
      py::arg("seed"), py::arg("offset"), py::arg("rng"), py::arg("sums"), py::arg("rows"), py::arg("partials"),
      py::arg("device"), py::arg("stream"),
      "enqueue one Langevin corrector step (sumsq, rows, fused_step) on `stream`; partials as for sumsq (S = 2)");

  mod.def(
      "abs_x0",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t m2, uintptr_t abs_out, int device, uintptr_t stream) {
        // ranks are checked by dyn_thresh_finish's caller; any valid pair passes the shared checks here
        const DynThreshArgs a = make_dyn_thresh_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, m2,
                                                     0, 0, 0.0, 1.0, abs_out);
        check_dynamic_threshold(a, false);
        py::gil_scoped_release release;
        cuda::abs_x0(a, ptr(abs_out), device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("m2"), py::arg("abs_out"),
      py::arg("device"), py::arg("stream"), "abs_out (B, N) float32 = |x0| (|x| when m is 0)");

  mod.def(
      "dyn_thresh_finish",
      [](int64_t B, uintptr_t vlo, uintptr_t vhi, uintptr_t any_nan, double wt, double max_val, uintptr_t out,
         int device, uintptr_t stream) {
        require(B >= 0, "dynamic_threshold", "B must be >= 0");
        require(wt >= 0.0 && wt <= 1.0, "dynamic_threshold", "wt must be in [0, 1]");
        require(!(max_val != max_val), "dynamic_threshold", "max_val must not be NaN");
        require(B == 0 || (vlo && vhi && any_nan && out), "dynamic_threshold", "null pointer");
        py::gil_scoped_release release;
        cuda::dyn_thresh_finish(B, ptr(vlo), ptr(vhi), ptr(any_nan), wt, max_val, ptr(out), device, stream);
      },
      py::arg("B"), py::arg("vlo"), py::arg("vhi"), py::arg("any_nan"), py::arg("wt"), py::arg("max_val"),
      py::arg("out"), py::arg("device"), py::arg("stream"),
      "out (B,) float32 = clamp(quantile(v[lo], v[hi], wt), 1, max_val), NaN when any_nan[b]");

  mod.def(
      "philox_normal",
      [](int dtype, int64_t numel, uintptr_t out, std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng,
         int device, uintptr_t stream) {
        const PhiloxNormalArgs a = make_philox_normal_args(dtype, numel, out, seed, offset, rng);
        check_philox_normal(a, false);
        py::gil_scoped_release release;
        cuda::philox_normal(a, device, stream);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("out"), py::arg("seed"), py::arg("offset"), py::arg("rng"),
      py::arg("device"), py::arg("stream"), "fill out[g] with the Philox normal z(key, ctr_offset, g)");

  mod.def(
      "fused_step_backward",
      [](int dtype, int64_t B, int64_t N, uintptr_t grad_out, uintptr_t grad_w, uintptr_t x, uintptr_t m,
         uintptr_t coef, int64_t R, uintptr_t index, int64_t index_stride, int64_t row_stride, uintptr_t noise,
         std::optional<uint64_t> seed, uint64_t offset, uintptr_t rng, uintptr_t threshold, uintptr_t m2,
         uintptr_t var, uintptr_t dx, uintptr_t dm, uintptr_t dm2, uintptr_t dnoise, uintptr_t dvar, int device,
         uintptr_t stream) {
        const FusedStepBackwardArgs a =
            make_fused_step_backward_args(dtype, B, N, grad_out, grad_w, x, m, coef, R, index, index_stride,
                                          row_stride, noise, seed, offset, rng, threshold, m2, var, dx, dm, dm2,
                                          dnoise, dvar);
        check_fused_step_backward(a, /*allow_f64=*/false);
        py::gil_scoped_release release;
        cuda::fused_step_backward(a, device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("grad_out"), py::arg("grad_w"), py::arg("x"),
      py::arg("m"), py::arg("coef"), py::arg("R"), py::arg("index"), py::arg("index_stride"),
      py::arg("row_stride"), py::arg("noise"), py::arg("seed"), py::arg("offset"), py::arg("rng"),
      py::arg("threshold"), py::arg("m2"), py::arg("var"), py::arg("dx"), py::arg("dm"), py::arg("dm2"),
      py::arg("dnoise"), py::arg("dvar"), py::arg("device"), py::arg("stream"),
      "enqueue the gradients of fused_step on `stream` (pointers as data_ptr() ints, 0 = None)");

  mod.def("device_count", &cuda::device_count, "CUDA devices visible to this module's runtime (0 without a driver)");
  mod.def("runtime_version", &cuda::runtime_version);
  mod.def("archs", &cuda::archs, "CUDA architectures compiled in (PYDIFF_CUDA_ARCHS)");
}
