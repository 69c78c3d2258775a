// The element loops of sumsq, philox_normal and the |x0| pass of dynamic_threshold, and the KernelTable
// of this ISA level (see kernel_common.h; fused_step is in fused_step_<dtype>.cpp).
#include <type_traits>

#include "convert_block.h"
#include "kernel_common.h"
#include "philox_vec.h"

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {
namespace {

// sum of f(g)^2 over [g0, g1) in T, in an order that does not depend on the vector width: kLanes fixed
// partial sums (lane l takes g0 + l, g0 + l + kLanes, ...), added in lane order at the end. A plain
// `omp simd reduction` would split the sum by the ISA level's vector width (4, 8 or 16 floats), and the
// levels would round differently.
constexpr int kLanes = 16;

template <typename T, class Fn>
PYDIFF_HD T sum_squares(int64_t g0, int64_t g1, Fn f) {
  T lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = T(0);
  int64_t g = g0;
  for (; g + kLanes <= g1; g += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const T v = f(g + l);
      lane[l] += v * v;
    }
  }
  for (int l = 0; g + l < g1; ++l) {
    const T v = f(g + l);
    lane[l] += v * v;
  }
  T acc = T(0);
  for (int l = 0; l < kLanes; ++l) acc += lane[l];
  return acc;
}

// Elements per block of a sumsq task (block sums are in T, blocks are accumulated in double), and per
// float32 block of Philox z in sumsq and philox_normal.
constexpr int64_t kBlock = 512;

// sumsq: per (sample, chunk) task, chunks combined in a fixed order (deterministic for any thread count).
template <int DT>
void sumsq_typed(const SumsqArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const S* pa = static_cast<const S*>(a.a);
  const S* pb = static_cast<const S*>(a.b);
  T* out = static_cast<T*>(a.out);
  const int64_t B = a.B, N = a.N;
  const bool philox = a.philox.on;
  const bool second = pb != nullptr || philox;
  const int64_t chunks = N > 0 ? (N + kChunk - 1) / kChunk : 0;
  const int64_t tasks = B * chunks;
  double* part = new double[static_cast<size_t>(2 * tasks + 2)];

  for_each_task(B, N, kChunk, kParallelMin, nt, [&](int64_t t, int64_t, int64_t t0, int64_t t1) {
    double s0 = 0.0, s1 = 0.0;
    for (int64_t g0 = t0; g0 < t1; g0 += kBlock) {
      const int64_t g1 = g0 + imin(kBlock, t1 - g0);
      s0 += static_cast<double>(sum_squares<T>(g0, g1, [&](int64_t g) { return Tr::load(pa[g]); }));
      if (pb) {
        s1 += static_cast<double>(sum_squares<T>(g0, g1, [&](int64_t g) { return Tr::load(pb[g]); }));
      } else if (philox) {
        alignas(64) float z[kBlock];
        philox_normal_fill(key, ctr, static_cast<uint64_t>(g0), g1 - g0, z);
        s1 += static_cast<double>(sum_squares<T>(g0, g1, [&](int64_t g) { return static_cast<T>(z[g - g0]); }));
      }
    }
    part[2 * t] = s0;
    part[2 * t + 1] = s1;
  });
  for (int64_t b = 0; b < B; ++b) {
    double s0 = 0.0, s1 = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      s0 += part[2 * (b * chunks + c)];
      s1 += part[2 * (b * chunks + c) + 1];
    }
    out[b] = static_cast<T>(s0);
    if (second) out[B + b] = static_cast<T>(s1);
  }
  delete[] part;
}

void sumsq(const SumsqArgs& a, uint64_t key, uint64_t ctr, int nt) {
  switch (a.dtype) {
    case kFloat32: sumsq_typed<kFloat32>(a, key, ctr, nt); break;
    case kFloat64: sumsq_typed<kFloat64>(a, key, ctr, nt); break;
    case kFloat16: sumsq_typed<kFloat16>(a, key, ctr, nt); break;
    default: sumsq_typed<kBFloat16>(a, key, ctr, nt); break;
  }
}

// dst[i] = z[i] rounded to the dtype (the conversions of convert.h, on whole vectors where convert_block.h has them).
template <int DT>
void store_z(const float* z, typename Traits<DT>::S* dst, int64_t n) {
#if defined(PYDIFF_BLOCK_CONVERT)
  if constexpr (DT == kFloat16 || DT == kBFloat16) {
    store_block<DT>(z, dst, n);
    return;
  } else
#endif
  {
    using Tr = Traits<DT>;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = Tr::store(static_cast<typename Tr::T>(z[i]));
  }
}

// philox_normal: out[g] = z(key, ctr, g), computed in float32 (philox_vec.h), rounded to the dtype.
template <int DT>
void philox_normal_typed(const PhiloxNormalArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  S* out = static_cast<S*>(a.out);
  const int64_t numel = a.numel;
  const int64_t chunks = (numel + kPhiloxTask - 1) / kPhiloxTask;
#pragma omp parallel for schedule(static) num_threads(nt) if (numel >= kPhiloxParallelMin && nt > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t g0 = c * kPhiloxTask, g1 = g0 + imin(kPhiloxTask, numel - g0);
    if constexpr (std::is_same<S, float>::value) {
      philox_normal_fill(key, ctr, static_cast<uint64_t>(g0), g1 - g0, out + g0);
    } else {
      // z in float32 blocks (L1-resident), then rounded to the dtype
      alignas(64) float z[kBlock];
      for (int64_t gb = g0; gb < g1; gb += kBlock) {
        const int64_t n = imin(kBlock, g1 - gb);
        philox_normal_fill(key, ctr, static_cast<uint64_t>(gb), n, z);
        store_z<DT>(z, out + gb, n);
      }
    }
  }
}

void philox_normal(const PhiloxNormalArgs& a, uint64_t key, uint64_t ctr, int nt) {
  switch (a.dtype) {
    case kFloat32: philox_normal_typed<kFloat32>(a, key, ctr, nt); break;
    case kFloat64: philox_normal_typed<kFloat64>(a, key, ctr, nt); break;
    case kFloat16: philox_normal_typed<kFloat16>(a, key, ctr, nt); break;
    default: philox_normal_typed<kBFloat16>(a, key, ctr, nt); break;
  }
}

// |x0| of one sample of dynamic_threshold into v; returns the number of NaN x0.
template <int DT, bool HAS_M, bool M2>
int64_t abs_x0_flags(const DynThreshArgs& a, int64_t b, void* v_) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const int64_t N = a.N;
  const S* x = static_cast<const S*>(a.x) + b * N;
  const S* m = HAS_M ? static_cast<const S*>(a.m) + b * N : nullptr;
  const S* m2 = M2 ? static_cast<const S*>(a.m2) + b * N : nullptr;
  T* v = static_cast<T*>(v_);
  Row<T> r;
  if (HAS_M) r = args_row<T>(a, b);
  int64_t nnan = 0;
#pragma omp simd reduction(+ : nnan)
  for (int64_t i = 0; i < N; ++i) {
    const T x0 = dyn_x0<HAS_M, M2>(r, Tr::load(x[i]), HAS_M ? Tr::load(m[i]) : T(0), M2 ? Tr::load(m2[i]) : T(0));
    v[i] = abs_t(x0);
    nnan += x0 != x0;
  }
  return nnan;
}

template <int DT>
int64_t abs_x0_typed(const DynThreshArgs& a, int64_t b, void* v) {
  if (!a.m) return abs_x0_flags<DT, false, false>(a, b, v);
  if (a.m2) return abs_x0_flags<DT, true, true>(a, b, v);
  return abs_x0_flags<DT, true, false>(a, b, v);
}

int64_t abs_x0(const DynThreshArgs& a, int64_t b, void* v) {
  switch (a.dtype) {
    case kFloat32: return abs_x0_typed<kFloat32>(a, b, v);
    case kFloat64: return abs_x0_typed<kFloat64>(a, b, v);
    case kFloat16: return abs_x0_typed<kFloat16>(a, b, v);
    default: return abs_x0_typed<kBFloat16>(a, b, v);
  }
}

void fused_step(const FusedStepArgs& a, uint64_t key, uint64_t ctr, int nt) {
  switch (a.dtype) {
    case kFloat32: fused_step_dt<kFloat32>(a, key, ctr, nt); break;
    case kFloat64: fused_step_dt<kFloat64>(a, key, ctr, nt); break;
    case kFloat16: fused_step_dt<kFloat16>(a, key, ctr, nt); break;
    default: fused_step_dt<kBFloat16>(a, key, ctr, nt); break;
  }
}

#define PYDIFF_STR2(x) #x
#define PYDIFF_STR(x) PYDIFF_STR2(x)

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable table = {PYDIFF_STR(PYDIFF_ISA_NAME), &fused_step, &sumsq, &philox_normal, &abs_x0};
  return table;
}

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff
