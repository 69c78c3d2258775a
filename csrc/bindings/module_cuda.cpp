// pybind11 module pydiff._C_cuda: the CUDA kernels (csrc/cuda). Same raw-pointer ABI as pydiff._C plus
// the CUDA device ordinal and a cudaStream_t as an int. Compiled by the host compiler; only
// csrc/cuda/*.cu include CUDA headers. cudart is linked statically, so importing this module needs no
// GPU driver (device_count() is then 0).
#include <tuple>

#include "common_bindings.h"
#include "ops_cuda.h"
#include "philox.h"

namespace py = pybind11;
using namespace pydiff;
using namespace pydiff::bind;

PYBIND11_MODULE(_C_cuda, mod) {
  mod.doc() = "pydiff CUDA kernels (raw-pointer ABI + stream; use pydiff._backend_cuda)";
  add_dtype_codes(mod);

  mod.def(
      "fused_step",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t out, uintptr_t w_out, std::vector<uintptr_t> hist,
         uintptr_t noise, std::optional<uint64_t> seed, uint64_t offset, uintptr_t threshold, int device,
         uintptr_t stream) {
        const FusedStepArgs a = make_fused_step_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, out,
                                                     w_out, hist, noise, seed, offset, threshold);
        check_fused_step(a, /*allow_f64=*/false);
        py::gil_scoped_release release;
        cuda::fused_step(a, device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("out"), py::arg("w_out"),
      py::arg("hist"), py::arg("noise"), py::arg("seed"), py::arg("offset"), py::arg("threshold"), py::arg("device"),
      py::arg("stream"), "enqueue the fused sampler step on `stream`");

  mod.def("sumsq_num_partials", &cuda::sumsq_num_partials, py::arg("N"),
          "floats per (source, sample) of the sumsq partials buffer");
  mod.def(
      "sumsq",
      [](int dtype, int64_t B, int64_t N, uintptr_t a_, uintptr_t b_, std::optional<uint64_t> seed, uint64_t offset,
         uintptr_t out, uintptr_t partials, int device, uintptr_t stream) {
        const SumsqArgs a = make_sumsq_args(dtype, B, N, a_, b_, seed, offset, out);
        check_sumsq(a, false);
        py::gil_scoped_release release;
        cuda::sumsq(a, ptr(partials), device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("a"), py::arg("b"), py::arg("seed"), py::arg("offset"),
      py::arg("out"), py::arg("partials"), py::arg("device"), py::arg("stream"),
      "per-sample sums of squares into out (S, B) float32; partials: S*B*sumsq_num_partials(N) floats");

  mod.def(
      "abs_x0",
      [](int dtype, int64_t B, int64_t N, uintptr_t x, uintptr_t m, uintptr_t coef, int64_t R, uintptr_t index,
         int64_t index_stride, int64_t row_stride, uintptr_t abs_out, int device, uintptr_t stream) {
        DynThreshArgs a =
            make_dyn_thresh_args(dtype, B, N, x, m, coef, R, index, index_stride, row_stride, 0.5, 1.0, abs_out);
        check_dynamic_threshold(a, false);
        py::gil_scoped_release release;
        cuda::abs_x0(a, ptr(abs_out), device, stream);
      },
      py::arg("dtype"), py::arg("B"), py::arg("N"), py::arg("x"), py::arg("m"), py::arg("coef"), py::arg("R"),
      py::arg("index"), py::arg("index_stride"), py::arg("row_stride"), py::arg("abs_out"), py::arg("device"),
      py::arg("stream"), "abs_out (B, N) float32 = |S*(P*x + Q*m)| (|x| when m is 0)");

  mod.def(
      "philox_normal",
      [](int dtype, int64_t numel, uintptr_t out, uint64_t seed, uint64_t offset, int device, uintptr_t stream) {
        check_dtype("philox_normal", dtype, false);
        require(numel >= 0, "philox_normal", "numel must be >= 0");
        require(numel == 0 || out != 0, "philox_normal", "out must not be null");
        py::gil_scoped_release release;
        cuda::philox_normal(dtype, numel, ptr(out), seed, offset, device, stream);
      },
      py::arg("dtype"), py::arg("numel"), py::arg("out"), py::arg("seed"), py::arg("offset"), py::arg("device"),
      py::arg("stream"), "fill out[g] with the Philox normal z(seed, offset, g)");

  mod.def(
      "philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        const Philox4x32 r = philox4x32_10(c0, c1, c2, c3, k0, k1);  // host path of the shared header
        return std::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
      },
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"));

  mod.def("device_count", &cuda::device_count, "CUDA devices visible to this module's runtime (0 without a driver)");
  mod.def("runtime_version", &cuda::runtime_version);
  mod.def("archs", &cuda::archs, "CUDA architectures compiled in (PYDIFF_CUDA_ARCHS)");
}
