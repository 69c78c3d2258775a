// The ABI shared by the Python launchers, the pybind11 bindings and the C++/CUDA kernels (op contract v2,
// docs/ops.md).
//
// Tensors cross the boundary as raw pointers (tensor.data_ptr() as an integer, 0 = None), element
// counts and a dtype code; no libtorch. Every tensor is contiguous; data tensors share one dtype and
// shape (B, N) flattened. coef (R, kNCoef), threshold (B,) and the outputs of sumsq/dynamic_threshold
// are in the compute type T (double for float64 data, float otherwise); index and rng are int64.
#pragma once

#include "pydiff_stdint.h"

namespace pydiff {

// dtype codes (also exported by the Python modules as _C.FLOAT32, ...)
enum DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
};

// Coefficient columns, in the order of pydiff/ops/columns.py (the single source of the layout). The
// modules export kColumnNames as COLUMNS; the launchers compare it with pydiff.ops.columns.COLUMNS by
// name at import, so a stale build is reported instead of reading the wrong columns.
enum Col : int {
  kM1 = 0, kM2, kP, kQ, kS, kCLIP, kA, kD, kB0, kB1, kB2, kB3, kB4, kB5, kB6, kG, kC, kVA, kVB, kO, kNCoef
};
constexpr int kKMax = 6;  // history tensors h1..h6 (columns kB1..kB6)
constexpr const char* kColumnNames[kNCoef] = {"M1", "M2", "P", "Q", "S", "CLIP", "A", "D", "B0", "B1",
                                              "B2", "B3", "B4", "B5", "B6", "G", "C", "VA", "VB", "O"};
static_assert(kB6 - kB1 + 1 == kKMax, "one B column per history tensor");

// Source of the Philox key and counter offset (docs/ops.md, "Philox key and counter offset"):
// host seed: key = seed, ctr = offset; device rng tensor: key = rng[0], ctr = rng[1] + offset (mod 2^64).
struct PhiloxSource {
  bool on = false;                 // Philox noise requested (seed or rng given)
  uint64_t seed = 0;               // used when rng == nullptr
  uint64_t offset = 0;
  const int64_t* rng = nullptr;    // optional (2,) int64, on the data's device
};

// Normalized arguments of fused_step.
struct FusedStepArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;             // samples, elements per sample
  const void* x = nullptr;          // (B, N) data
  const void* m = nullptr;          // (B, N) data
  const void* m2 = nullptr;         // optional (B, N) data: second model output (columns M1, M2, G)
  const void* var = nullptr;        // optional (B, N) data: variance input v (columns VA, VB)
  const void* coef = nullptr;       // (R, kNCoef) T
  int64_t R = 0;                    // rows of coef
  const int64_t* index = nullptr;   // optional (1 or B,) int64
  int64_t index_stride = 0;         // 0/1
  int64_t row_stride = 0;           // 0/1 (used when index == nullptr)
  void* out = nullptr;              // (B, N) data; may equal x
  void* w_out = nullptr;            // optional (B, N) data; may equal m, m2 or a hist tensor
  const void* hist[kKMax] = {};
  int nhist = 0;                    // 0..kKMax
  const void* noise = nullptr;      // optional (B, N) data
  PhiloxSource philox;              // or in-kernel Philox noise
  const void* threshold = nullptr;  // optional (B,) T
};

struct SumsqArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;
  const void* a = nullptr;
  const void* b = nullptr;          // optional second source
  PhiloxSource philox;              // or the Philox noise over a's shape
  void* out = nullptr;              // (S, B) T, S = 1 + (b || philox.on)
};

// Normalized arguments of langevin_step: sumsq of (m, z) into sums, langevin_rows into rows, then fused_step
// with one row per sample. sums and rows are caller-provided scratch in T.
struct LangevinArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;
  const void* x = nullptr;          // (B, N) data
  const void* m = nullptr;          // (B, N) data: the score (model output)
  const void* coef = nullptr;       // (R, 2) T: (c, kappa) per row; R = 1 (coef_stride 0) or B (1)
  int64_t coef_stride = 0;
  bool sample_norm = false;         // per-sample norms (else batch means)
  void* out = nullptr;              // (B, N) data; may equal x
  void* w_out = nullptr;            // optional (B, N) data: x_mean; may equal m
  const void* noise = nullptr;      // (B, N) data, or
  PhiloxSource philox;              // in-kernel Philox noise (exactly one of the two)
  void* sums = nullptr;             // (2, B) T scratch: sum m^2, sum z^2
  void* rows = nullptr;             // (B, kNCoef) T scratch
};

struct DynThreshArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;
  const void* x = nullptr;
  const void* m = nullptr;          // optional: x0 = x when null (coef/index/m2 ignored then)
  const void* m2 = nullptr;         // optional: m_e = M1*m + M2*m2
  const void* coef = nullptr;
  int64_t R = 0;
  const int64_t* index = nullptr;
  int64_t index_stride = 0, row_stride = 0;
  int64_t lo = 0, hi = 0;           // quantile ranks from pydiff.ops.dynamic_threshold.quantile_rank
  double wt = 0.0;                  // interpolation weight (rounded to T by the kernel)
  double max_val = 1.0;
  void* out = nullptr;              // (B,) T
};

struct PhiloxNormalArgs {
  int dtype = kFloat32;
  int64_t numel = 0;
  void* out = nullptr;
  PhiloxSource philox;              // philox.on is true
};

}  // namespace pydiff
