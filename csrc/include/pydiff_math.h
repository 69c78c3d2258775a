// The per-element arithmetic of the op contract (docs/ops.md, version 2), compiled by both the C++/OpenMP
// kernels (csrc/cpu) and the CUDA kernels (csrc/cuda). Nothing of the contract is written anywhere else:
// the kernels only decide which elements a thread visits and how values are loaded and stored.
//
// * NaN-propagating minimum / maximum / clamp (torch.minimum / torch.maximum semantics);
// * the coefficient row load with the index rule (negative rows wrap, out of range -> all-NaN row);
// * the fused_step element function, templated on compile-time flags (history count 0..6, m2, var,
//   noise kind, threshold vs static clip, w_out), so that absent inputs cost nothing per element and the
//   GPU kernels have no per-element run-time branches;
// * x0 / |x0| of dynamic_threshold and the quantile interpolation rule;
// * the Philox normal with branch-free float32 polynomial log and cos, so that cpu and cuda give
//   bit-identical noise (libm's logf/cosf and CUDA's differ in the last ulp).
//
// Every product and sum is written in the contract's order; the builds keep them separately rounded
// (-ffp-contract=off, nvcc --fmad=false).
#pragma once

// NVRTC (__CUDACC_RTC__) has no C/C++ library headers: its math functions are builtins, and the
// integer types come from pydiff_stdint.h.
#if !defined(__CUDACC_RTC__)
#include <string.h>
#endif
#if !defined(__CUDACC__)
#include <cmath>
#endif

#include "pydiff_stdint.h"

#include "philox.h"
#include "pydiff_abi.h"
#include "pydiff_hd.h"

// The history loops (K <= 6, compile-time) must be unrolled before the CPU vectoriser sees the element
// loop: it rejects a loop body holding two inner loops.
#if defined(__CUDACC__) || defined(__clang__)
#define PYDIFF_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define PYDIFF_UNROLL _Pragma("GCC unroll 8")
#else
#define PYDIFF_UNROLL
#endif

namespace pydiff {

// ---------------------------------------------------------------------------------------------- basics

PYDIFF_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

PYDIFF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

template <typename T>
PYDIFF_HD T quiet_nan() {
  return static_cast<T>(bits_to_float(0x7FC00000u));
}

PYDIFF_HD float exp_t(float v) {
#if defined(__CUDA_ARCH__)
  return expf(v);
#else
  return std::exp(v);
#endif
}
PYDIFF_HD double exp_t(double v) {
#if defined(__CUDA_ARCH__)
  return ::exp(v);
#else
  return std::exp(v);
#endif
}

// minimum / maximum that return NaN when either operand is NaN (torch.minimum / torch.maximum).
// fminf/fmaxf would return the other operand, and `c < w ? c : w` alone drops a NaN bound.
template <typename T>
PYDIFF_HD T nan_min(T a, T b) {
  return (a != a || b != b) ? a + b : (b < a ? b : a);
}
template <typename T>
PYDIFF_HD T nan_max(T a, T b) {
  return (a != a || b != b) ? a + b : (a < b ? b : a);
}
// clamp(w, lo, hi) = maximum(minimum(w, hi), lo), NaN from any argument.
template <typename T>
PYDIFF_HD T nan_clamp(T w, T lo, T hi) {
  return nan_max(nan_min(w, hi), lo);
}

// ---------------------------------------------------------------------------------------------- rows

// One coefficient row in the compute type.
template <typename T>
struct Row {
  T c[kNCoef];
};

// The row number of sample b before the range rule: index[b*index_stride] when an index is given, else
// b*row_stride.
PYDIFF_HD int64_t row_number(const int64_t* index, int64_t index_stride, int64_t row_stride, int64_t b) {
  return index ? index[b * index_stride] : b * row_stride;
}

// The index rule: r in [-R, 0) means r + R; r outside [-R, R) gives an all-NaN row. coef is never read
// outside its R rows.
template <typename T>
PYDIFF_HD Row<T> load_row(const T* coef, int64_t R, const int64_t* index, int64_t index_stride,
                          int64_t row_stride, int64_t b) {
  int64_t r = row_number(index, index_stride, row_stride, b);
  if (r < 0) r += R;
  Row<T> row;
  const bool ok = r >= 0 && r < R;
  for (int k = 0; k < kNCoef; ++k) row.c[k] = ok ? coef[r * kNCoef + k] : quiet_nan<T>();
  return row;
}

// The row of sample b of a launch whose arguments carry coef, R, index, index_stride and row_stride
// (FusedStepArgs, FusedStepBackwardArgs, SumsqArgs-like structs), the coefficients of type T.
template <typename T, class Args>
PYDIFF_HD Row<T> args_row(const Args& a, int64_t b) {
  return load_row(static_cast<const T*>(a.coef), a.R, a.index, a.index_stride, a.row_stride, b);
}

// ---------------------------------------------------------------------------------------------- Philox normal

// u = ((r >> 8) + 0.5) * 2^-24: exact in float32, in (0, 1), so ln u is finite.
PYDIFF_HD float philox_uniform(uint32_t r) {
  return (static_cast<float>(r >> 8) + 0.5f) * 5.9604644775390625e-08f;
}

// 2*pi rounded to float32 (6.2831855f), the constant the reference multiplies u2 by.
constexpr float kTwoPiF = 6.28318530717958647692f;

// a * b + c as a product and a sum, each rounded (the Philox normal's contract: the same bits on every backend).
struct SeparateMulAdd {
  PYDIFF_HD float operator()(float a, float b, float c) const { return a * b + c; }
};

// Natural log for positive normal x (here u1 in [2^-25, 1)); the Cephes logf polynomial, branch-free
// (both ranges of the mantissa are computed with selects), < 1 ulp from the correctly rounded value. Its
// multiply-adds go through madd: separately rounded for the Philox normal (poly_logf), fused where a caller
// may (torch_normal.cpp).
template <class MulAdd>
PYDIFF_HD float poly_logf_with(float x, MulAdd madd) {
  const uint32_t ux = float_to_bits(x);
  int32_t e = static_cast<int32_t>(ux >> 23) - 126;  // x = m * 2^e, m in [0.5, 1)
  float m = bits_to_float((ux & 0x007FFFFFu) | 0x3F000000u);
  const bool small = m < 0.707106781186547524f;  // sqrt(1/2)
  e = small ? e - 1 : e;
  m = small ? (m + m) - 1.0f : m - 1.0f;  // exact (Sterbenz)
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = madd(y, m, -1.1514610310e-1f);
  y = madd(y, m, 1.1676998740e-1f);
  y = madd(y, m, -1.2420140846e-1f);
  y = madd(y, m, 1.4249322787e-1f);
  y = madd(y, m, -1.6668057665e-1f);
  y = madd(y, m, 2.0000714765e-1f);
  y = madd(y, m, -2.4999993993e-1f);
  y = madd(y, m, 3.3333331174e-1f);
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = madd(-2.12194440e-4f, fe, y);
  y = madd(-0.5f, z, y);
  float r = m + y;
  r = madd(0.693359375f, fe, r);
  return r;
}

PYDIFF_HD float poly_logf(float x) { return poly_logf_with(x, SeparateMulAdd()); }

// sin(a) and cos(a) for a in [0, 8]; the Cephes sinf/cosf polynomials with range reduction by pi/4 in three
// parts, branch-free (octant handled by selects). Both polynomials are evaluated for either result, so the pair
// costs one reduction and two polynomials (Box-Muller uses both).
struct SinCos {
  float s, c;
};

PYDIFF_HD SinCos poly_sincosf(float a) {
  int32_t j = static_cast<int32_t>(a * 1.27323954473516f);  // a * 4/pi, a >= 0
  j = (j + 1) & ~1;                                          // even octant
  const float y = static_cast<float>(j);
  const float r = ((a - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const int32_t q = j & 7;  // 0, 2, 4, 6
  const float zz = r * r;
  float c = 2.443315711809948e-5f;
  c = c * zz - 1.388731625493765e-3f;
  c = c * zz + 4.166664568298827e-2f;
  c = c * zz * zz;
  c = c - 0.5f * zz;
  c = c + 1.0f;
  float s = -1.9515295891e-4f;
  s = s * zz + 8.3321608736e-3f;
  s = s * zz - 1.6666654611e-1f;
  s = s * zz * r;
  s = s + r;
  // cos(r + q*pi/4): q=0: cos r, q=2: -sin r, q=4: -cos r, q=6: sin r
  // sin(r + q*pi/4): q=0: sin r, q=2: cos r,  q=4: -sin r, q=6: -cos r
  const bool swap = (q & 2) != 0;
  const float vc = swap ? s : c;
  const float vs = swap ? c : s;
  SinCos out;
  out.c = (q == 2 || q == 4) ? -vc : vc;
  out.s = (q == 4 || q == 6) ? -vs : vs;
  return out;
}

PYDIFF_HD float sqrt_f(float v) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(v);
#else
  return __builtin_sqrtf(v);
#endif
}

// The Philox normals (docs/ops.md): the block of counter c gives elements 4c .. 4c + 3, Box-Muller on its word
// pairs (r0, r1) and (r2, r3):
//   z[4c + 2p]     = sqrt(-2 ln u(r_2p)) * cos(2 pi u(r_2p+1))
//   z[4c + 2p + 1] = sqrt(-2 ln u(r_2p)) * sin(2 pi u(r_2p+1))          p = 0, 1
// so a block costs a quarter of the rounds per normal and one log, sqrt and sin/cos reduction per two normals.
// philox_normal4 draws a whole block; philox_normal_z one element, with the very same operations on that
// element's pair (the same bits: kernels mix the two at the unaligned ends of a range).
PYDIFF_HD float philox_radius(uint32_t r) { return sqrt_f(-2.0f * poly_logf(philox_uniform(r))); }

PYDIFF_HD SinCos philox_angle(uint32_t r) { return poly_sincosf(kTwoPiF * philox_uniform(r)); }

PYDIFF_HD void philox_normal4(uint64_t key, uint64_t ctr_offset, uint64_t c, float z[4]) {
  const Philox4x32 w = philox_block(key, ctr_offset, c);
  const float rad0 = philox_radius(w.v[0]), rad1 = philox_radius(w.v[2]);
  const SinCos t0 = philox_angle(w.v[1]), t1 = philox_angle(w.v[3]);
  z[0] = rad0 * t0.c;
  z[1] = rad0 * t0.s;
  z[2] = rad1 * t1.c;
  z[3] = rad1 * t1.s;
}

PYDIFF_HD float philox_normal_z(uint64_t key, uint64_t ctr_offset, uint64_t g) {
  const Philox4x32 w = philox_block(key, ctr_offset, g >> 2);
  const bool second = (g & 2) != 0;
  const float rad = philox_radius(second ? w.v[2] : w.v[0]);
  const SinCos t = philox_angle(second ? w.v[3] : w.v[1]);
  return rad * ((g & 1) ? t.s : t.c);
}

// The normals of elements g .. g + V - 1 for g a multiple of 4 (a kernel's aligned pack of V = 4 or 8
// elements): V / 4 whole blocks, the same bits as philox_normal_z of each element.
template <int V>
PYDIFF_HD void philox_normal_pack(uint64_t key, uint64_t ctr_offset, uint64_t g, float (&z)[V]) {
  static_assert(V % 4 == 0, "a pack of whole Philox blocks");
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int q = 0; q < V / 4; ++q) philox_normal4(key, ctr_offset, (g >> 2) + static_cast<uint64_t>(q), z + 4 * q);
}

// The Philox key and counter offset: host seed, or the device rng tensor (read where this runs).
PYDIFF_HD void philox_key_ctr(const PhiloxSource& p, uint64_t& key, uint64_t& ctr) {
  if (p.rng) {
    key = static_cast<uint64_t>(p.rng[0]);
    ctr = static_cast<uint64_t>(p.rng[1]) + p.offset;  // mod 2^64
  } else {
    key = p.seed;
    ctr = p.offset;
  }
}

// ---------------------------------------------------------------------------------------------- fused_step

enum NoiseKind : int { kNoNoise = 0, kNoiseTensor = 1, kNoisePhilox = 2 };

// Compile-time shape of one fused_step: K history tensors, m2, var, noise kind, threshold, w_out.
template <int K_, bool M2_, bool VAR_, int NOISE_, bool THR_, bool WOUT_>
struct StepFlags {
  static constexpr int K = K_;
  static constexpr bool M2 = M2_;
  static constexpr bool VAR = VAR_;
  static constexpr int NOISE = NOISE_;
  static constexpr bool THR = THR_;
  static constexpr bool WOUT = WOUT_;
  // true: the static clip is known to be +inf (a kernel's run-time check of the row), and the clamp,
  // the identity then (the quiet NaN w stays w, +-inf stay), is left out
  static constexpr bool NOCLIP = false;
  // true: the row has P = 1 and O = 1 (a kernel's run-time check), and those products, exact
  // identities then, are left out
  static constexpr bool UNIT = false;
};

// The data pointers of one fused_step (storage type S), indexed by the flat element g.
template <typename S>
struct StepPtrs {
  const S* x;
  const S* m;
  const S* m2;
  const S* var;
  const S* h[kKMax];
  const S* noise;
  S* out;
  S* w_out;
};

// The data pointers of a launch, as storage type S (where every backend's fused_step kernel starts).
template <typename S>
PYDIFF_HD StepPtrs<S> step_ptrs(const FusedStepArgs& a) {
  StepPtrs<S> p;
  p.x = static_cast<const S*>(a.x);
  p.m = static_cast<const S*>(a.m);
  p.m2 = static_cast<const S*>(a.m2);
  p.var = static_cast<const S*>(a.var);
  PYDIFF_UNROLL
  for (int k = 0; k < kKMax; ++k) p.h[k] = static_cast<const S*>(a.hist[k]);
  p.noise = static_cast<const S*>(a.noise);
  p.out = static_cast<S*>(a.out);
  p.w_out = static_cast<S*>(a.w_out);
  return p;
}

// m_e = m, or M1*m + M2*m2 when m2 is given.
template <bool M2, typename T>
PYDIFF_HD T model_eff(const Row<T>& r, T m, T m2) {
  return M2 ? r.c[kM1] * m + r.c[kM2] * m2 : m;
}

// w = S*(P*x + Q*m_e) (before clipping): x0 of dynamic_threshold.
template <typename T, bool UNIT = false>
PYDIFF_HD T convert_w(const Row<T>& r, T x, T me) {
  return r.c[kS] * ((UNIT ? x : r.c[kP] * x) + r.c[kQ] * me);
}

// The contract's formula for one element, on loaded values (z is the noise value when NOISE != kNoNoise,
// s the sample's threshold when THR). Returns out, and w through w_ref.
template <class F, typename T>
PYDIFF_HD T fused_step_value(const Row<T>& r, T s, T x, T m, T m2, T v, const T* h, T z, T& w_ref) {
  const T me = model_eff<F::M2>(r, m, m2);
  T w = convert_w<T, F::UNIT>(r, x, me);
  if (F::THR)
    w = nan_clamp(w, -s, s) / s;
  else if (!F::NOCLIP)
    w = nan_clamp(w, -r.c[kCLIP], r.c[kCLIP]);
  w_ref = w;
  T acc = r.c[kA] * x + r.c[kD] * me + r.c[kB0] * w;
  PYDIFF_UNROLL
  for (int k = 0; k < F::K; ++k) acc = acc + r.c[kB1 + k] * h[k];
  // e = exp(VA + VB*v); without var e = 1 and the products by e*e and e are exact, so they are left out.
  // `if constexpr`: without var, exp_t is never named, so T may also be a vector of floats (the CPU
  // kernels run this function on whole AVX registers, csrc/cpu/fused_step_impl.h)
  if constexpr (F::VAR) {
    const T e = exp_t(r.c[kVA] + r.c[kVB] * v);
    if (F::M2) acc = acc + r.c[kG] * (e * e) * m2;
    if (F::NOISE != kNoNoise) acc = acc + r.c[kC] * e * z;
  } else {
    if (F::M2) acc = acc + r.c[kG] * m2;
    if (F::NOISE != kNoNoise) acc = acc + r.c[kC] * z;
  }
  return F::UNIT ? acc : r.c[kO] * acc;
}

// fused_step at flat element g: reads every input of g, then writes out[g] (and w_out[g]). Conv is the
// backend's storage <-> T conversion: static T load(S), static S store(T). The reads all happen before
// the writes, so out == x and w_out == m / m2 / h_k (identical storage) are safe.
template <class F, typename T, class Conv, typename S>
PYDIFF_HD void fused_step_at(const StepPtrs<S>& p, int64_t g, const Row<T>& r, T s, uint64_t key, uint64_t ctr) {
  const T x = Conv::load(p.x[g]);
  const T m = Conv::load(p.m[g]);
  const T m2 = F::M2 ? Conv::load(p.m2[g]) : T(0);
  const T v = F::VAR ? Conv::load(p.var[g]) : T(0);
  T h[F::K > 0 ? F::K : 1];
  PYDIFF_UNROLL
  for (int k = 0; k < F::K; ++k) h[k] = Conv::load(p.h[k][g]);
  T z = T(0);
  if (F::NOISE == kNoiseTensor) z = Conv::load(p.noise[g]);
  if (F::NOISE == kNoisePhilox) z = static_cast<T>(philox_normal_z(key, ctr, static_cast<uint64_t>(g)));
  T w;
  const T o = fused_step_value<F>(r, s, x, m, m2, v, h, z, w);
  if (F::WOUT) p.w_out[g] = Conv::store(w);
  p.out[g] = Conv::store(o);
}

// Calls f(StepFlags<...>{}) with the flags of a run-time configuration: the one switch from run-time
// options to compile-time flags, shared by the CPU and CUDA launchers (f is a generic lambda).
template <int K, bool M2, bool VAR, int NOISE, bool THR, class Fn>
inline void dispatch_wout(bool wout, Fn&& f) {
  if (wout)
    f(StepFlags<K, M2, VAR, NOISE, THR, true>{});
  else
    f(StepFlags<K, M2, VAR, NOISE, THR, false>{});
}
template <int K, bool M2, bool VAR, int NOISE, class Fn>
inline void dispatch_thr(bool thr, bool wout, Fn&& f) {
  if (thr)
    dispatch_wout<K, M2, VAR, NOISE, true>(wout, f);
  else
    dispatch_wout<K, M2, VAR, NOISE, false>(wout, f);
}
template <int K, bool M2, bool VAR, class Fn>
inline void dispatch_noise(int noise, bool thr, bool wout, Fn&& f) {
  switch (noise) {
    case kNoiseTensor: dispatch_thr<K, M2, VAR, kNoiseTensor>(thr, wout, f); break;
    case kNoisePhilox: dispatch_thr<K, M2, VAR, kNoisePhilox>(thr, wout, f); break;
    default: dispatch_thr<K, M2, VAR, kNoNoise>(thr, wout, f); break;
  }
}
template <int K, class Fn>
inline void dispatch_m2_var(bool m2, bool var, int noise, bool thr, bool wout, Fn&& f) {
  if (m2) {
    if (var)
      dispatch_noise<K, true, true>(noise, thr, wout, f);
    else
      dispatch_noise<K, true, false>(noise, thr, wout, f);
  } else {
    if (var)
      dispatch_noise<K, false, true>(noise, thr, wout, f);
    else
      dispatch_noise<K, false, false>(noise, thr, wout, f);
  }
}
template <class Fn>
inline void dispatch_step_flags(const FusedStepArgs& a, Fn&& f) {
  const bool m2 = a.m2 != nullptr, var = a.var != nullptr, thr = a.threshold != nullptr, wout = a.w_out != nullptr;
  const int noise = a.noise ? kNoiseTensor : (a.philox.on ? kNoisePhilox : kNoNoise);
  switch (a.nhist) {
    case 0: dispatch_m2_var<0>(m2, var, noise, thr, wout, f); break;
    case 1: dispatch_m2_var<1>(m2, var, noise, thr, wout, f); break;
    case 2: dispatch_m2_var<2>(m2, var, noise, thr, wout, f); break;
    case 3: dispatch_m2_var<3>(m2, var, noise, thr, wout, f); break;
    case 4: dispatch_m2_var<4>(m2, var, noise, thr, wout, f); break;
    case 5: dispatch_m2_var<5>(m2, var, noise, thr, wout, f); break;
    default: dispatch_m2_var<6>(m2, var, noise, thr, wout, f); break;
  }
}

// ---------------------------------------------------------------------------------------------- dynamic_threshold

// x0 of dynamic_threshold at one element (x0 = x when m is not given).
template <bool HAS_M, bool M2, typename T>
PYDIFF_HD T dyn_x0(const Row<T>& r, T x, T m, T m2) {
  return HAS_M ? convert_w(r, x, model_eff<M2>(r, m, m2)) : x;
}

PYDIFF_HD float abs_t(float v) {
#if defined(__CUDA_ARCH__)
  return fabsf(v);
#else
  return std::fabs(v);
#endif
}
PYDIFF_HD double abs_t(double v) {
#if defined(__CUDA_ARCH__)
  return ::fabs(v);
#else
  return std::fabs(v);
#endif
}

// The quantile rule (docs/ops.md): vlo = v[lo], vhi = v[hi] of the sorted |x0|, wt = pos - lo in T.
template <typename T>
PYDIFF_HD T quantile_interp(T vlo, T vhi, T wt, bool any_nan) {
  if (any_nan) return quiet_nan<T>();
  if (vlo == vhi) return vlo;  // covers inf == inf
  const T inf = static_cast<T>(bits_to_float(0x7F800000u));
  if (vhi == inf) return inf;  // the interpolation would give inf - inf = NaN
  if (wt < T(0.5)) return vlo + wt * (vhi - vlo);
  return vhi - (vhi - vlo) * (T(1) - wt);
}

// s = clamp(q, min=1, max=max_val) with torch.clamp's semantics (NaN stays NaN; max_val < 1 gives max_val).
template <typename T>
PYDIFF_HD T threshold_scale(T q, T max_val) {
  return nan_min(nan_max(q, T(1)), max_val);
}

// ---------------------------------------------------------------------------------------------- langevin_step
// The Langevin corrector's step size and row (docs/ops.md, "langevin_step"; Song et al. 2021, Algorithms 4/5),
// from the per-sample sums of squares sums = (S_m[0..B), S_z[0..B)) of the score and the noise and the
// per-sample parameters coef (R, 2) = (c, kappa) (R = 1 with coef_stride 0, or R = B):
//   batch  (score_sde's LangevinCorrector): eps_b = c_b (mean_b sqrt(S_z) / mean_b sqrt(S_m))^2
//   sample (the paper's per-sample norms):  eps_b = c_b S_z[b] / S_m[b]
//   row_b: P = 1, Q = eps_b kappa_b, B0 = 1, C = sqrt(2 eps_b) (w = x_mean = x + eps kappa m, out = w + C z)
// The batch means add b = 0, 1, ... in order and divide by B, in T. Serial in b: B is a batch size, and
// one thread computing it keeps the order (so every bit) the same on every backend.
template <typename T>
PYDIFF_HD T sqrt_t(T v) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return sqrt_f(v);
  } else {
#if defined(__CUDA_ARCH__)
    return __dsqrt_rn(v);
#else
    return __builtin_sqrt(v);
#endif
  }
}

// (mean_b sqrt(S_z) / mean_b sqrt(S_m))^2, the batch form's ratio.
template <typename T>
PYDIFF_HD T langevin_ratio2(const T* sums, int64_t B) {
  T nm = T(0), nz = T(0);
  for (int64_t b = 0; b < B; ++b) {
    nm += sqrt_t(sums[b]);
    nz += sqrt_t(sums[B + b]);
  }
  const T r = (nz / static_cast<T>(B)) / (nm / static_cast<T>(B));
  return r * r;
}

// Row b (kNCoef values at row); ratio2 from langevin_ratio2 (unused with sample).
template <typename T>
PYDIFF_HD void langevin_row(const T* sums, const T* coef, int64_t coef_stride, int64_t B, bool sample, T ratio2,
                            int64_t b, T* row) {
  const T* p = coef + 2 * b * coef_stride;
  const T eps = sample ? p[0] * (sums[B + b] / sums[b]) : p[0] * ratio2;
  for (int k = 0; k < kNCoef; ++k) row[k] = T(0);
  row[kM1] = T(1);
  row[kS] = T(1);
  row[kCLIP] = static_cast<T>(bits_to_float(0x7F800000u));  // +inf: no clip
  row[kO] = T(1);
  row[kP] = T(1);
  row[kB0] = T(1);
  row[kQ] = eps * p[1];
  row[kC] = sqrt_t(T(2) * eps);
}

template <typename T>
PYDIFF_HD void langevin_rows(const T* sums, const T* coef, int64_t coef_stride, int64_t B, bool sample, T* rows) {
  const T ratio2 = sample ? T(0) : langevin_ratio2(sums, B);
  for (int64_t b = 0; b < B; ++b) langevin_row(sums, coef, coef_stride, B, sample, ratio2, b, rows + b * kNCoef);
}

#if !defined(__CUDACC_RTC__)
// The two passes of langevin_step as the arguments of sumsq (into a.sums) and of fused_step (a.rows, one row
// per sample), both reading z from noise or philox (host code of the cpu and cuda backends).
inline SumsqArgs langevin_sumsq_args(const LangevinArgs& a, const void* noise, const PhiloxSource& philox) {
  SumsqArgs s;
  s.dtype = a.dtype;
  s.B = a.B;
  s.N = a.N;
  s.a = a.m;
  s.b = noise;
  s.philox = philox;
  s.out = a.sums;
  return s;
}

inline FusedStepArgs langevin_fused_args(const LangevinArgs& a, const void* noise, const PhiloxSource& philox) {
  FusedStepArgs f;
  f.dtype = a.dtype;
  f.B = a.B;
  f.N = a.N;
  f.x = a.x;
  f.m = a.m;
  f.coef = a.rows;
  f.R = a.B;
  f.row_stride = 1;
  f.out = a.out;
  f.w_out = a.w_out;
  f.noise = noise;
  f.philox = philox;
  return f;
}
#endif

}  // namespace pydiff

// ---------------------------------------------------------------------------------------------- fused_step_backward
//
// The vector-Jacobian product of fused_step (pydiff/ops/fused_step_backward.py has the derivation). With
// g = O*grad_out and dw = B0*g + grad_w:
//   dw'  = (-bound <= w' <= bound) ? dw * scale : 0     (bound, scale = s, 1/s with a threshold, else CLIP, 1;
//                                                        a NaN w' or bound gives 0; dw/s is a division)
//   dm_e = D*g + S*Q*dw',  dx = A*g + S*P*dw',  dm = dm_e or M1*dm_e,  dm2 = M2*dm_e + G*e*e*g
//   dz   = C*e*g,          dv = VB*g*(2*G*e*e*m2 + C*e*z)
// The history gradients O*Bk*grad_out are left to the caller.

namespace pydiff {

// Normalized arguments of fused_step_backward (the forward's inputs, the output gradients, the results).
struct FusedStepBackwardArgs {
  int dtype = kFloat32;
  int64_t B = 0, N = 0;
  const void* grad_out = nullptr;   // (B, N) data: dL/dx'
  const void* grad_w = nullptr;     // optional (B, N) data: dL/dw of the w_out output
  const void* x = nullptr;
  const void* m = nullptr;
  const void* m2 = nullptr;         // optional
  const void* var = nullptr;        // optional
  const void* coef = nullptr;       // (R, kNCoef) T
  int64_t R = 0;
  const int64_t* index = nullptr;
  int64_t index_stride = 0, row_stride = 0;
  const void* noise = nullptr;      // optional noise tensor of the forward
  PhiloxSource philox;              // or the forward's Philox key (z regenerated)
  const void* threshold = nullptr;  // optional (B,) T, a constant
  void* dx = nullptr;               // (B, N) data, always
  void* dm = nullptr;               // (B, N) data, always
  void* dm2 = nullptr;              // optional (only with m2)
  void* dnoise = nullptr;           // optional (only with a noise tensor)
  void* dvar = nullptr;             // optional (only with var)
};

// Compile-time shape of one backward: m2, var, noise kind, threshold, grad_w. Which gradients are written
// (dm2, dnoise, dvar may be null) is a run-time, loop-invariant test: it only selects stores.
template <bool M2_, bool VAR_, int NOISE_, bool THR_, bool GW_>
struct BackFlags {
  static constexpr bool M2 = M2_;
  static constexpr bool VAR = VAR_;
  static constexpr int NOISE = NOISE_;
  static constexpr bool THR = THR_;
  static constexpr bool GW = GW_;
};

template <typename T>
struct BackGrads {
  T dx, dm, dm2, dnoise, dvar;
};

// The backward at one element on loaded values (go = grad_out, gw = grad_w, z the forward's noise value).
template <class F, typename T>
PYDIFF_HD BackGrads<T> fused_step_backward_value(const Row<T>& r, T s, T go, T gw, T x, T m, T m2, T v, T z) {
  const T g = r.c[kO] * go;
  const T me = model_eff<F::M2>(r, m, m2);
  const T wp = convert_w(r, x, me);
  const T bound = F::THR ? s : r.c[kCLIP];
  const bool inside = (-bound <= wp) && (wp <= bound);  // false for NaN
  T dw = r.c[kB0] * g;
  if (F::GW) dw = dw + gw;
  if (F::THR) dw = dw / s;
  const T dwp = inside ? dw : T(0);
  const T dme = r.c[kD] * g + r.c[kS] * r.c[kQ] * dwp;
  BackGrads<T> d;
  d.dx = r.c[kA] * g + r.c[kS] * r.c[kP] * dwp;
  d.dm = F::M2 ? r.c[kM1] * dme : dme;
  const T e = F::VAR ? exp_t(r.c[kVA] + r.c[kVB] * v) : T(1);
  // without var e = 1 and the products by e are exact, so they are left out (as in fused_step_value)
  const T gee = F::VAR ? r.c[kG] * e * e : r.c[kG];
  const T ce = F::VAR ? r.c[kC] * e : r.c[kC];
  d.dm2 = F::M2 ? r.c[kM2] * dme + gee * g : T(0);
  d.dnoise = ce * g;
  T term = T(0);
  if (F::M2) term = T(2) * r.c[kG] * e * e * m2;
  if (F::NOISE != kNoNoise) term = F::M2 ? term + ce * z : ce * z;
  d.dvar = F::VAR ? r.c[kVB] * g * term : T(0);
  return d;
}

// The data pointers of one backward (storage type S).
template <typename S>
struct BackPtrs {
  const S* go;
  const S* gw;
  const S* x;
  const S* m;
  const S* m2;
  const S* var;
  const S* noise;
  S* dx;
  S* dm;
  S* dm2;
  S* dnoise;
  S* dvar;
};

// The data pointers of a backward launch, as storage type S.
template <typename S>
PYDIFF_HD BackPtrs<S> back_ptrs(const FusedStepBackwardArgs& a) {
  BackPtrs<S> p;
  p.go = static_cast<const S*>(a.grad_out);
  p.gw = static_cast<const S*>(a.grad_w);
  p.x = static_cast<const S*>(a.x);
  p.m = static_cast<const S*>(a.m);
  p.m2 = static_cast<const S*>(a.m2);
  p.var = static_cast<const S*>(a.var);
  p.noise = static_cast<const S*>(a.noise);
  p.dx = static_cast<S*>(a.dx);
  p.dm = static_cast<S*>(a.dm);
  p.dm2 = static_cast<S*>(a.dm2);
  p.dnoise = static_cast<S*>(a.dnoise);
  p.dvar = static_cast<S*>(a.dvar);
  return p;
}

// fused_step_backward at flat element g: reads every input of g, then writes the gradients of g (so an output
// may be the very tensor of an input, e.g. dx written over grad_out).
template <class F, typename T, class Conv, typename S>
PYDIFF_HD void fused_step_backward_at(const BackPtrs<S>& p, int64_t g, const Row<T>& r, T s, uint64_t key,
                                      uint64_t ctr) {
  const T go = Conv::load(p.go[g]);
  const T gw = F::GW ? Conv::load(p.gw[g]) : T(0);
  const T x = Conv::load(p.x[g]);
  const T m = Conv::load(p.m[g]);
  const T m2 = F::M2 ? Conv::load(p.m2[g]) : T(0);
  const T v = F::VAR ? Conv::load(p.var[g]) : T(0);
  // z only enters dv (dz = C*e*g does not depend on it): nothing to load or regenerate without var
  T z = T(0);
  if (F::NOISE == kNoiseTensor && F::VAR) z = Conv::load(p.noise[g]);
  if (F::NOISE == kNoisePhilox && F::VAR) z = static_cast<T>(philox_normal_z(key, ctr, static_cast<uint64_t>(g)));
  const BackGrads<T> d = fused_step_backward_value<F>(r, s, go, gw, x, m, m2, v, z);
  p.dx[g] = Conv::store(d.dx);
  p.dm[g] = Conv::store(d.dm);
  if (F::M2 && p.dm2) p.dm2[g] = Conv::store(d.dm2);
  if (F::NOISE == kNoiseTensor && p.dnoise) p.dnoise[g] = Conv::store(d.dnoise);
  if (F::VAR && p.dvar) p.dvar[g] = Conv::store(d.dvar);
}

// Calls f(BackFlags<...>{}) for a run-time configuration (CPU and CUDA launchers).
template <bool M2, bool VAR, int NOISE, bool THR, class Fn>
inline void dispatch_back_gw(bool gw, Fn&& f) {
  if (gw)
    f(BackFlags<M2, VAR, NOISE, THR, true>{});
  else
    f(BackFlags<M2, VAR, NOISE, THR, false>{});
}
template <bool M2, bool VAR, int NOISE, class Fn>
inline void dispatch_back_thr(bool thr, bool gw, Fn&& f) {
  if (thr)
    dispatch_back_gw<M2, VAR, NOISE, true>(gw, f);
  else
    dispatch_back_gw<M2, VAR, NOISE, false>(gw, f);
}
template <bool M2, bool VAR, class Fn>
inline void dispatch_back_noise(int noise, bool thr, bool gw, Fn&& f) {
  if (noise == kNoiseTensor) {
    dispatch_back_thr<M2, VAR, kNoiseTensor>(thr, gw, f);
  } else if (VAR && noise == kNoisePhilox) {
    dispatch_back_thr<M2, VAR, VAR ? kNoisePhilox : kNoNoise>(thr, gw, f);
  } else {
    dispatch_back_thr<M2, VAR, kNoNoise>(thr, gw, f);
  }
}
template <class Fn>
inline void dispatch_back_flags(const FusedStepBackwardArgs& a, Fn&& f) {
  const bool thr = a.threshold != nullptr, gw = a.grad_w != nullptr;
  // Philox noise only matters through dv: without var it is the no-noise configuration (fewer instances)
  const int noise = a.noise ? kNoiseTensor : (a.philox.on && a.var ? kNoisePhilox : kNoNoise);
  if (a.m2) {
    if (a.var)
      dispatch_back_noise<true, true>(noise, thr, gw, f);
    else
      dispatch_back_noise<true, false>(noise, thr, gw, f);
  } else {
    if (a.var)
      dispatch_back_noise<false, true>(noise, thr, gw, f);
    else
      dispatch_back_noise<false, false>(noise, thr, gw, f);
  }
}

}  // namespace pydiff
