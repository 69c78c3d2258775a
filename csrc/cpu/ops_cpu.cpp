// Dtype dispatch of the CPU ops, row-range checks, thread count; sumsq, dynamic_threshold and
// philox_normal (fused_step lives in fused_step_impl.h).
#include "ops_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "convert.h"
#include "philox_cpu.h"

namespace pydiff {
namespace cpu {

int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : omp_get_max_threads(); }

void check_row_range(const char* op, const int64_t* index, int64_t index_stride, int64_t row_stride, int64_t R,
                     int64_t B) {
  if (!index) return;  // rows b*row_stride < R were checked with the arguments
  for (int64_t b = 0; b < (index_stride ? B : std::min<int64_t>(B, 1)); ++b) {
    const int64_t r = select_row(index, index_stride, row_stride, R, b);
    if (r < 0 || r >= R)
      throw std::out_of_range(std::string(op) + ": index " + std::to_string(index[b * index_stride]) +
                              " is out of range for a coefficient table of " + std::to_string(R) + " rows");
  }
}

// ---------------------------------------------------------------------------------------------
// fused_step

void fused_step(const FusedStepArgs& a, int num_threads) {
  if (a.B == 0 || a.N == 0) return;
  check_row_range("fused_step", a.index, a.index_stride, a.row_stride, a.R, a.B);
  const int nt = resolve_threads(num_threads);
  switch (a.dtype) {
    case kFloat32: fused_step_typed<kFloat32>(a, nt); break;
    case kFloat64: fused_step_typed<kFloat64>(a, nt); break;
    case kFloat16: fused_step_typed<kFloat16>(a, nt); break;
    case kBFloat16: fused_step_typed<kBFloat16>(a, nt); break;
    default: throw std::invalid_argument("fused_step: bad dtype code");
  }
}

// ---------------------------------------------------------------------------------------------
// sumsq: per (sample, chunk) task, float (T) sums over blocks of kZBlock elements with a SIMD
// reduction, blocks accumulated in double, chunks combined in a fixed order (deterministic for any
// thread count), result rounded to T.

template <int DT>
static void sumsq_typed(const SumsqArgs& a, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const S* pa = static_cast<const S*>(a.a);
  const S* pb = static_cast<const S*>(a.b);
  T* out = static_cast<T*>(a.out);
  const int64_t B = a.B, N = a.N;
  const bool second = pb != nullptr || a.has_seed;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t tasks = B * chunks;
  std::vector<double> part(static_cast<size_t>(2 * tasks), 0.0);
  const uint64_t seed = a.seed, offset = a.offset;
  const bool has_seed = a.has_seed;

#pragma omp parallel for schedule(static) num_threads(nt) if (B * N >= kParallelMin && nt > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / chunks;
    const int64_t i0 = (t - b * chunks) * kChunk;
    const int64_t n = std::min(kChunk, N - i0);
    const int64_t base = b * N + i0;
    double s0 = 0.0, s1 = 0.0;
    float zf[kZBlock];
    for (int64_t j = 0; j < n; j += kZBlock) {
      const int64_t nn = std::min(kZBlock, n - j);
      const S* xa = pa + base + j;
      T acc = T(0);
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < nn; ++k) {
        const T v = Tr::load(xa[k]);
        acc += v * v;
      }
      s0 += static_cast<double>(acc);
      if (pb) {
        const S* xb = pb + base + j;
        T acc1 = T(0);
#pragma omp simd reduction(+ : acc1)
        for (int64_t k = 0; k < nn; ++k) {
          const T v = Tr::load(xb[k]);
          acc1 += v * v;
        }
        s1 += static_cast<double>(acc1);
      } else if (has_seed) {
        philox_normal_block(seed, offset, static_cast<uint64_t>(base + j), nn, zf);
        T acc1 = T(0);
#pragma omp simd reduction(+ : acc1)
        for (int64_t k = 0; k < nn; ++k) {
          const T v = static_cast<T>(zf[k]);
          acc1 += v * v;
        }
        s1 += static_cast<double>(acc1);
      }
    }
    part[2 * t] = s0;
    part[2 * t + 1] = s1;
  }
  for (int64_t b = 0; b < B; ++b) {
    double s0 = 0.0, s1 = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      s0 += part[2 * (b * chunks + c)];
      s1 += part[2 * (b * chunks + c) + 1];
    }
    out[b] = static_cast<T>(s0);
    if (second) out[B + b] = static_cast<T>(s1);
  }
}

void sumsq(const SumsqArgs& a, int num_threads) {
  if (a.B == 0) return;
  const int nt = resolve_threads(num_threads);
  switch (a.dtype) {
    case kFloat32: sumsq_typed<kFloat32>(a, nt); break;
    case kFloat64: sumsq_typed<kFloat64>(a, nt); break;
    case kFloat16: sumsq_typed<kFloat16>(a, nt); break;
    case kBFloat16: sumsq_typed<kBFloat16>(a, nt); break;
    default: throw std::invalid_argument("sumsq: bad dtype code");
  }
}

// ---------------------------------------------------------------------------------------------
// dynamic_threshold: per sample, |x0| into a per-thread scratch buffer, then std::nth_element for the
// lower rank and a min over the upper partition for the upper rank; interpolation exactly as
// torch.quantile (rank = ratio*(N-1) in T, torch.lerp's two-sided formula); any NaN gives NaN.

template <int DT>
static void dynamic_threshold_typed(const DynThreshArgs& a, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const S* px = static_cast<const S*>(a.x);
  const S* pm = static_cast<const S*>(a.m);
  const T* coef = static_cast<const T*>(a.coef);
  T* out = static_cast<T*>(a.out);
  const int64_t B = a.B, N = a.N;
  const bool par = B * N >= kParallelMin && nt > 1 && B > 1;
  const int nthreads = par ? static_cast<int>(std::min<int64_t>(nt, B)) : 1;
  std::vector<T> scratch(static_cast<size_t>(nthreads) * static_cast<size_t>(N));

  const T pos = static_cast<T>(a.ratio) * static_cast<T>(N - 1);
  const int64_t lo = static_cast<int64_t>(pos);
  const int64_t hi = static_cast<int64_t>(std::ceil(pos));
  const T weight = pos - static_cast<T>(lo);
  const T max_val = static_cast<T>(a.max_val);

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    T* v = scratch.data() + static_cast<size_t>(omp_get_thread_num()) * static_cast<size_t>(N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      const S* xb = px + b * N;
      int64_t nnan = 0;
      if (pm) {
        const S* mb = pm + b * N;
        const T* r = coef + select_row(a.index, a.index_stride, a.row_stride, a.R, b) * kNCoef;
        const T P = r[kP], Q = r[kQ], Sc = r[kS];
#pragma omp simd reduction(+ : nnan)
        for (int64_t i = 0; i < N; ++i) {
          const T x0 = Sc * (P * Tr::load(xb[i]) + Q * Tr::load(mb[i]));
          v[i] = std::abs(x0);
          nnan += x0 != x0;
        }
      } else {
#pragma omp simd reduction(+ : nnan)
        for (int64_t i = 0; i < N; ++i) {
          const T x0 = Tr::load(xb[i]);
          v[i] = std::abs(x0);
          nnan += x0 != x0;
        }
      }
      T q;
      if (nnan) {
        q = std::numeric_limits<T>::quiet_NaN();
      } else {
        std::nth_element(v, v + lo, v + N);
        const T vlo = v[lo];
        const T vhi = hi == lo ? vlo : *std::min_element(v + lo + 1, v + N);
        q = std::abs(weight) < T(0.5) ? vlo + weight * (vhi - vlo) : vhi - (vhi - vlo) * (T(1) - weight);
      }
      // torch.clamp(q, min=1, max=max_val): NaN propagates, min > max gives max
      out[b] = q != q ? q : std::min(std::max(q, T(1)), max_val);
    }
  }
}

void dynamic_threshold(const DynThreshArgs& a, int num_threads) {
  if (a.B == 0) return;
  if (a.m) check_row_range("dynamic_threshold", a.index, a.index_stride, a.row_stride, a.R, a.B);
  const int nt = resolve_threads(num_threads);
  switch (a.dtype) {
    case kFloat32: dynamic_threshold_typed<kFloat32>(a, nt); break;
    case kFloat64: dynamic_threshold_typed<kFloat64>(a, nt); break;
    case kFloat16: dynamic_threshold_typed<kFloat16>(a, nt); break;
    case kBFloat16: dynamic_threshold_typed<kBFloat16>(a, nt); break;
    default: throw std::invalid_argument("dynamic_threshold: bad dtype code");
  }
}

// ---------------------------------------------------------------------------------------------
// philox_normal: out[g] = z(seed, offset, g), computed in float32, rounded to the dtype.

template <int DT>
static void philox_normal_typed(int64_t numel, void* out_, uint64_t seed, uint64_t offset, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  S* out = static_cast<S*>(out_);
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nt) if (numel >= kParallelMin / 4 && nt > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk;
    const int64_t n = std::min(kChunk, numel - i0);
    float zf[kZBlock];
    for (int64_t j = 0; j < n; j += kZBlock) {
      const int64_t nn = std::min(kZBlock, n - j);
      philox_normal_block(seed, offset, static_cast<uint64_t>(i0 + j), nn, zf);
      S* o = out + i0 + j;
#pragma omp simd
      for (int64_t k = 0; k < nn; ++k) o[k] = Tr::store(static_cast<T>(zf[k]));
    }
  }
}

void philox_normal(int dtype, int64_t numel, void* out, uint64_t seed, uint64_t offset, int num_threads) {
  if (numel <= 0) return;
  const int nt = resolve_threads(num_threads);
  switch (dtype) {
    case kFloat32: philox_normal_typed<kFloat32>(numel, out, seed, offset, nt); break;
    case kFloat64: philox_normal_typed<kFloat64>(numel, out, seed, offset, nt); break;
    case kFloat16: philox_normal_typed<kFloat16>(numel, out, seed, offset, nt); break;
    case kBFloat16: philox_normal_typed<kBFloat16>(numel, out, seed, offset, nt); break;
    default: throw std::invalid_argument("philox_normal: bad dtype code");
  }
}

}  // namespace cpu
}  // namespace pydiff
