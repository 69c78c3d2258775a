// fused_step on the CPU (docs/ops.md): w = S*(P*x + Q*m), clip, out = A*x + D*m + B0*w + sum Bk*hk + C*z. Included by one translation unit per dtype
// (fused_step_<dtype>.cpp) so that the instantiations compile in parallel.
//
// Structure: OpenMP over (sample, chunk) tasks; per task the coefficient row is hoisted into
// registers and one of the specialised inner loops runs. Which optional inputs exist (w_out, the
// number of history tensors, the noise source, static clip vs dynamic threshold) is a template
// parameter, so each inner loop is straight-line arithmetic that the compiler vectorises.
// `#pragma omp simd` asserts what the contract guarantees: out may be x and w_out may be m or a
// history tensor (identical storage), and every element is read before it is written, so the
// iterations are independent despite the aliasing.
#pragma once

#include <algorithm>

#include "convert.h"
#include "ops_cpu.h"
#include "philox_cpu.h"

namespace pydiff {
namespace cpu {
namespace fused {

template <typename T>
struct Coefs {
  T P, Q, A, D, B0, B1, B2, B3, C, Sc, O;  // O: output scale (docs/ops.md)
  T bound, div;  // clamp to [-bound, bound], then divide by div (threshold path only)
};

template <typename S>
struct Ptrs {
  const S* x;
  const S* m;
  S* out;
  S* w_out;
  const S* h1;
  const S* h2;
  const S* h3;
  const S* noise;
};

enum NoiseKind { kNoNoise = 0, kNoiseTensor = 1, kNoiseBuffer = 2 };

// NaN-propagating min/max (torch.minimum / torch.maximum): a NaN `w` is returned unchanged.
template <typename T>
static inline T min_nan(T w, T c) { return c < w ? c : w; }
template <typename T>
static inline T max_nan(T w, T c) { return w < c ? c : w; }

template <int DT, bool W, int NH, int NZ, bool THR>
static inline void fused_range(const Ptrs<typename Traits<DT>::S>& p, int64_t i0, int64_t n, const float* zf,
                               const Coefs<typename Traits<DT>::T>& c) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const S* x = p.x + i0;
  const S* m = p.m + i0;
  S* out = p.out + i0;
  S* wo = W ? p.w_out + i0 : nullptr;
  const S* h1 = NH >= 1 ? p.h1 + i0 : nullptr;
  const S* h2 = NH >= 2 ? p.h2 + i0 : nullptr;
  const S* h3 = NH >= 3 ? p.h3 + i0 : nullptr;
  const S* zn = NZ == kNoiseTensor ? p.noise + i0 : nullptr;
  const T P = c.P, Q = c.Q, A = c.A, D = c.D, B0 = c.B0, B1 = c.B1, B2 = c.B2, B3 = c.B3, C = c.C, Sc = c.Sc;
  const T O = c.O;
  const T hi = c.bound, lo = -c.bound, div = c.div;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T xv = Tr::load(x[i]);
    const T mv = Tr::load(m[i]);
    T w = Sc * (P * xv + Q * mv);
    w = max_nan(min_nan(w, hi), lo);
    if (THR) w = w / div;
    T acc = A * xv + D * mv;
    acc = acc + B0 * w;
    if (NH >= 1) acc = acc + B1 * Tr::load(h1[i]);
    if (NH >= 2) acc = acc + B2 * Tr::load(h2[i]);
    if (NH >= 3) acc = acc + B3 * Tr::load(h3[i]);
    if (NZ == kNoiseTensor) acc = acc + C * Tr::load(zn[i]);
    if (NZ == kNoiseBuffer) acc = acc + C * static_cast<T>(zf[i]);
    if (W) wo[i] = Tr::store(w);
    out[i] = Tr::store(O * acc);
  }
}

template <int DT, bool W, int NH, int NZ, bool THR>
static void run(const FusedStepArgs& a, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  Ptrs<S> p;
  p.x = static_cast<const S*>(a.x);
  p.m = static_cast<const S*>(a.m);
  p.out = static_cast<S*>(a.out);
  p.w_out = static_cast<S*>(a.w_out);
  p.h1 = static_cast<const S*>(a.hist[0]);
  p.h2 = static_cast<const S*>(a.hist[1]);
  p.h3 = static_cast<const S*>(a.hist[2]);
  p.noise = static_cast<const S*>(a.noise);
  const T* coef = static_cast<const T*>(a.coef);
  const T* thr = static_cast<const T*>(a.threshold);
  const int64_t B = a.B, N = a.N;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t tasks = B * chunks;
  const uint64_t seed = a.seed, offset = a.offset;

#pragma omp parallel for schedule(static) num_threads(nt) if (B * N >= kParallelMin && nt > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / chunks;
    const int64_t i0 = (t - b * chunks) * kChunk;
    const int64_t n = std::min(kChunk, N - i0);
    const T* r = coef + select_row(a.index, a.index_stride, a.row_stride, a.R, b) * kNCoef;
    Coefs<T> c;
    c.P = r[kP];
    c.Q = r[kQ];
    c.A = r[kA];
    c.D = r[kD];
    c.B0 = r[kB0];
    c.B1 = r[kB1];
    c.B2 = r[kB2];
    c.B3 = r[kB3];
    c.C = r[kC];
    c.Sc = r[kS];
    c.O = r[kO];
    if (THR) {
      c.bound = thr[b];
      c.div = thr[b];
    } else {
      c.bound = r[kCLIP];
      c.div = T(1);
    }
    const int64_t base = b * N + i0;
    if (NZ == kNoiseBuffer) {
      float zf[kZBlock];
      for (int64_t j = 0; j < n; j += kZBlock) {
        const int64_t nn = std::min(kZBlock, n - j);
        philox_normal_block(seed, offset, static_cast<uint64_t>(base + j), nn, zf);
        fused_range<DT, W, NH, NZ, THR>(p, base + j, nn, zf, c);
      }
    } else {
      fused_range<DT, W, NH, NZ, THR>(p, base, n, nullptr, c);
    }
  }
}

template <int DT, bool W, int NH, int NZ>
static void dispatch_thr(const FusedStepArgs& a, int nt) {
  if (a.threshold)
    run<DT, W, NH, NZ, true>(a, nt);
  else
    run<DT, W, NH, NZ, false>(a, nt);
}

template <int DT, bool W, int NH>
static void dispatch_noise(const FusedStepArgs& a, int nt) {
  if (a.noise)
    dispatch_thr<DT, W, NH, kNoiseTensor>(a, nt);
  else if (a.has_seed)
    dispatch_thr<DT, W, NH, kNoiseBuffer>(a, nt);
  else
    dispatch_thr<DT, W, NH, kNoNoise>(a, nt);
}

template <int DT, bool W>
static void dispatch_hist(const FusedStepArgs& a, int nt) {
  switch (a.nhist) {
    case 0: dispatch_noise<DT, W, 0>(a, nt); break;
    case 1: dispatch_noise<DT, W, 1>(a, nt); break;
    case 2: dispatch_noise<DT, W, 2>(a, nt); break;
    default: dispatch_noise<DT, W, 3>(a, nt); break;
  }
}

}  // namespace fused

template <int DT>
void fused_step_typed(const FusedStepArgs& a, int nt) {
  if (a.w_out)
    fused::dispatch_hist<DT, true>(a, nt);
  else
    fused::dispatch_hist<DT, false>(a, nt);
}

}  // namespace cpu
}  // namespace pydiff
