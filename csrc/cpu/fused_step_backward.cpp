// fused_step_backward on the CPU (pydiff/ops/fused_step_backward.py, pydiff_math.h's fused_step_backward_at).
//
// This file is compiled twice (CMakeLists.txt):
// * once per ISA level with -DPYDIFF_ISA_NS (like kernels.cpp): the element loops, OpenMP over (sample, chunk)
//   tasks, the row loaded once per task, one `#pragma omp simd` loop per configuration of BackFlags (40 of
//   them: m2 x var x noise kind x threshold x grad_w, Philox only with var);
// * once without it, into the module: the entry point, which checks the rows, resolves the Philox key and
//   runs the loops of the level the forward uses (cpu::active_isa()).
// The loops read every input of an element before writing its gradients, so `omp simd` holds even when an
// output is the storage of an input. fp16/bf16 in the AVX2/AVX-512 builds convert blocks (convert_block.h),
// as the forward does.
#include "ops_cpu.h"

#if defined(PYDIFF_ISA_NS)

#include <type_traits>

#include "convert_block.h"
#include "kernel_common.h"
#include "philox_vec.h"

namespace pydiff {
namespace cpu {
namespace PYDIFF_ISA_NS {
namespace {

// Philox z per block of kPhiloxBlock elements: drawn by the vector generator of philox_vec.h instead of per
// element (fp32, Philox with var, 8x3x64x64, one thread: 4312 -> 801 us; fp16 3972 -> 827 us through the
// blocked path).

// p advanced to element g (every pointer), with z as the noise input and no dnoise output.
template <typename S>
BackPtrs<S> back_ptrs_from(const BackPtrs<S>& p, int64_t g, const S* z) {
  auto at = [g](auto* q) { return q ? q + g : q; };
  BackPtrs<S> r;
  r.go = at(p.go);
  r.gw = at(p.gw);
  r.x = at(p.x);
  r.m = at(p.m);
  r.m2 = at(p.m2);
  r.var = at(p.var);
  r.noise = z;
  r.dx = at(p.dx);
  r.dm = at(p.dm);
  r.dm2 = at(p.dm2);
  r.dnoise = nullptr;
  r.dvar = at(p.dvar);
  return r;
}

template <int DT, class F>
void backward_run(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using Tr = Traits<DT>;
  using S = typename Tr::S;
  using T = typename Tr::T;
  const BackPtrs<S> p = back_ptrs<S>(a);
  const T* thr = static_cast<const T*>(a.threshold);
  for_each_task(a.B, a.N, kChunk, kParallelMin, nt, [&](int64_t, int64_t b, int64_t g0, int64_t g1) {
    const BackPtrs<S> q = p;  // task-local: loop-invariant pointers for the vectoriser
    const Row<T> r = args_row<T>(a, b);
    const T s = F::THR ? thr[b] : T(0);
    if constexpr (F::NOISE == kNoisePhilox && F::VAR && std::is_same<S, T>::value) {
      // z (it enters dv) drawn per block by the vector generator and read as a noise tensor: G has the tensor
      // noise kind, and no dnoise is written (the Philox forward has no noise input). (S != T: fp16 / bf16
      // at the baseline level, where the generator is the scalar function anyway: z per element.)
      using G = BackFlags<F::M2, F::VAR, kNoiseTensor, F::THR, F::GW>;
      alignas(64) float zf[kPhiloxBlock];
      alignas(64) S zs[std::is_same<S, float>::value ? 1 : kPhiloxBlock];
      for (int64_t gb = g0; gb < g1; gb += kPhiloxBlock) {
        const int64_t n = imin(kPhiloxBlock, g1 - gb);
        const S* z = philox_normal_block(key, ctr, static_cast<uint64_t>(gb), n, zf, zs);
        const BackPtrs<S> qb = back_ptrs_from(q, gb, z);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) fused_step_backward_at<G, T, Tr>(qb, i, r, s, key, ctr);
      }
    } else {
#pragma omp simd
      for (int64_t g = g0; g < g1; ++g) fused_step_backward_at<F, T, Tr>(q, g, r, s, key, ctr);
    }
  });
}

#if defined(PYDIFF_BLOCK_CONVERT)
// fp16/bf16 in the AVX2 and AVX-512 builds (as fused_step_impl.h): blocks of every input are converted to
// float32 stack buffers with vector intrinsics, the element function runs on the buffers, and the gradients
// are converted back; a whole block is read before any of it is written. 512 elements: the up to 12 buffers
// (2 KiB each) stay in L1.
constexpr int64_t kBlockElems = 512;

template <int DT, class F>
void backward_run_blocked(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt) {
  using T = float;
  using S = uint16_t;
  const BackPtrs<S> p = back_ptrs<S>(a);
  const T* thr = static_cast<const T*>(a.threshold);
  for_each_task(a.B, a.N, kChunk, kParallelMin, nt, [&](int64_t, int64_t b, int64_t g0, int64_t g1) {
    // (declared in the lambda: GCC 12 has an internal error on array bounds that name constexpr locals of
    // the enclosing template function)
    constexpr bool ZT = F::NOISE == kNoiseTensor && F::VAR;  // the noise tensor is read (for dv)
    constexpr bool ZP = F::NOISE == kNoisePhilox && F::VAR;
    constexpr bool DN = F::NOISE == kNoiseTensor;
    constexpr int64_t K = kBlockElems;
    const Row<T> r = args_row<T>(a, b);
    const T s = F::THR ? thr[b] : T(0);
    alignas(64) T bgo[K], bgw[F::GW ? K : 1], bx[K], bm[K], bm2[F::M2 ? K : 1], bv[F::VAR ? K : 1];
    alignas(64) T bz[ZT || ZP ? K : 1];
    alignas(64) T bdx[K], bdm[K], bdm2[F::M2 ? K : 1], bdn[DN ? K : 1], bdv[F::VAR ? K : 1];
    for (int64_t gb = g0; gb < g1; gb += K) {
      const int64_t n = imin(K, g1 - gb);
      load_block<DT>(p.go + gb, bgo, n);
      if (F::GW) load_block<DT>(p.gw + gb, bgw, n);
      load_block<DT>(p.x + gb, bx, n);
      load_block<DT>(p.m + gb, bm, n);
      if (F::M2) load_block<DT>(p.m2 + gb, bm2, n);
      if (F::VAR) load_block<DT>(p.var + gb, bv, n);
      if (ZT) load_block<DT>(p.noise + gb, bz, n);
      if (ZP) philox_normal_fill(key, ctr, static_cast<uint64_t>(gb), n, bz);  // float32 z, as regenerated
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        T z = T(0);
        if (ZT || ZP) z = bz[i];
        const BackGrads<T> d = fused_step_backward_value<F>(r, s, bgo[i], F::GW ? bgw[i] : T(0), bx[i], bm[i],
                                                            F::M2 ? bm2[i] : T(0), F::VAR ? bv[i] : T(0), z);
        bdx[i] = d.dx;
        bdm[i] = d.dm;
        if (F::M2) bdm2[i] = d.dm2;
        if (DN) bdn[i] = d.dnoise;
        if (F::VAR) bdv[i] = d.dvar;
      }
      store_block<DT>(bdx, p.dx + gb, n);
      store_block<DT>(bdm, p.dm + gb, n);
      if (F::M2 && p.dm2) store_block<DT>(bdm2, p.dm2 + gb, n);
      if (DN && p.dnoise) store_block<DT>(bdn, p.dnoise + gb, n);
      if (F::VAR && p.dvar) store_block<DT>(bdv, p.dvar + gb, n);
    }
  });
}
#endif

template <int DT>
void backward_dt(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt) {
#if defined(PYDIFF_BLOCK_CONVERT)
  if constexpr (DT == kFloat16 || DT == kBFloat16) {
    dispatch_back_flags(a, [&](auto flags) { backward_run_blocked<DT, decltype(flags)>(a, key, ctr, nt); });
  } else
#endif
  {
    dispatch_back_flags(a, [&](auto flags) { backward_run<DT, decltype(flags)>(a, key, ctr, nt); });
  }
}

}  // namespace

void fused_step_backward_kernel(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt) {
  switch (a.dtype) {
    case kFloat32: backward_dt<kFloat32>(a, key, ctr, nt); break;
    case kFloat64: backward_dt<kFloat64>(a, key, ctr, nt); break;
    case kFloat16: backward_dt<kFloat16>(a, key, ctr, nt); break;
    default: backward_dt<kBFloat16>(a, key, ctr, nt); break;
  }
}

}  // namespace PYDIFF_ISA_NS
}  // namespace cpu
}  // namespace pydiff

#else  // the module's entry point

#include <string>

#include "pydiff_math.h"

namespace pydiff {
namespace cpu {

using BackwardKernel = void (*)(const FusedStepBackwardArgs&, uint64_t, uint64_t, int);

namespace isa_baseline {
void fused_step_backward_kernel(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt);
}
#if defined(PYDIFF_HAVE_AVX2)
namespace isa_avx2 {
void fused_step_backward_kernel(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt);
}
#endif
#if defined(PYDIFF_HAVE_AVX512)
namespace isa_avx512 {
void fused_step_backward_kernel(const FusedStepBackwardArgs& a, uint64_t key, uint64_t ctr, int nt);
}
#endif

namespace {

// The loops of the active level (select_isa may switch it at run time, so it is looked up per call: one
// string comparison, ~20 ns).
BackwardKernel backward_kernel() {
  const std::string isa = active_isa();
#if defined(PYDIFF_HAVE_AVX512)
  if (isa == "avx512") return &isa_avx512::fused_step_backward_kernel;
#endif
#if defined(PYDIFF_HAVE_AVX2)
  if (isa == "avx2") return &isa_avx2::fused_step_backward_kernel;
#endif
  return &isa_baseline::fused_step_backward_kernel;
}

}  // namespace

void fused_step_backward(const FusedStepBackwardArgs& a, int num_threads) {
  if (a.B == 0 || a.N == 0) return;
  check_row_range("fused_step_backward", a.index, a.index_stride, a.row_stride, a.R, a.B);
  uint64_t key = 0, ctr = 0;
  if (a.philox.on) philox_key_ctr(a.philox, key, ctr);  // the rng tensor is host memory here
  backward_kernel()(a, key, ctr, resolve_threads(num_threads));
}

}  // namespace cpu
}  // namespace pydiff

#endif
