// The ABI shared by the Python launchers, the pybind11 bindings and the C++/CUDA kernels.
//
// Tensors cross the boundary as raw pointers (tensor.data_ptr() as an integer, 0 = None), element
// counts and a dtype code; no libtorch. Every tensor is contiguous; data tensors share one dtype and
// shape (B, N) flattened. coef (R, NCOEF), threshold (B,) and the outputs of sumsq/dynamic_threshold
// are in the compute type T (double for float64 data, float otherwise); index is int64.
#pragma once

#include <stdint.h>

namespace pydiff {

// dtype codes (also exported by the Python modules as _C.FLOAT32, ...)
enum DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
};

// coefficient columns (docs/ops.md)
// w = S*(P*x + Q*m); clip; out = A*x + D*m + B0*w + B1*h1 + B2*h2 + B3*h3 + C*z
enum Col : int { kP = 0, kQ, kA, kD, kB0, kB1, kB2, kB3, kC, kCLIP, kS, kO, kNCoef };

// Normalized arguments of fused_step (docs/ops.md).
struct FusedStepArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;             // samples, elements per sample
  const void* x = nullptr;          // (B, N) data
  const void* m = nullptr;          // (B, N) data
  const void* coef = nullptr;       // (R, kNCoef) T
  int64_t R = 0;                    // rows of coef
  const int64_t* index = nullptr;   // optional (1 or B,) int64
  int64_t index_stride = 0;         // 0/1
  int64_t row_stride = 0;           // 0/1 (used when index == nullptr)
  void* out = nullptr;              // (B, N) data; may equal x
  void* w_out = nullptr;            // optional (B, N) data; may equal m or a hist tensor
  const void* hist[3] = {nullptr, nullptr, nullptr};
  int nhist = 0;                    // 0..3
  const void* noise = nullptr;      // optional (B, N) data
  bool has_seed = false;            // Philox noise instead of a noise tensor
  uint64_t seed = 0, offset = 0;
  const void* threshold = nullptr;  // optional (B,) T
};

struct SumsqArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;
  const void* a = nullptr;
  const void* b = nullptr;          // optional second source
  bool has_seed = false;            // or the Philox noise over a's shape
  uint64_t seed = 0, offset = 0;
  void* out = nullptr;              // (S, B) T, S = 1 + (b || has_seed)
};

struct DynThreshArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;
  const void* x = nullptr;
  const void* m = nullptr;          // optional: x0 = x when null (coef/index ignored then)
  const void* coef = nullptr;
  int64_t R = 0;
  const int64_t* index = nullptr;
  int64_t index_stride = 0, row_stride = 0;
  double ratio = 0.995, max_val = 1.0;
  void* out = nullptr;              // (B,) T
};

// Row of coef for sample b (before range checks); negative indices wrap like torch indexing.
inline int64_t select_row(const int64_t* index, int64_t index_stride, int64_t row_stride, int64_t R,
                          int64_t b) {
  if (index) {
    int64_t r = index[b * index_stride];
    return r < 0 ? r + R : r;
  }
  return b * row_stride;
}

}  // namespace pydiff
