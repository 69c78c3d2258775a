// The CPU ops: row-range checks, thread count, ISA selection, the Philox key of the rng tensor, and the
// quantile selection of dynamic_threshold; the element loops are the selected level's KernelTable.
#include "ops_cpu.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "pydiff_math.h"

namespace pydiff {
namespace cpu {

// One KernelTable per compiled level (kernels.cpp compiled with -DPYDIFF_ISA_NS=...).
namespace isa_baseline {
const KernelTable& kernel_table();
}
#if defined(PYDIFF_HAVE_AVX2)
namespace isa_avx2 {
const KernelTable& kernel_table();
}
#endif
#if defined(PYDIFF_HAVE_AVX512)
namespace isa_avx512 {
const KernelTable& kernel_table();
}
#endif

namespace {

struct Level {
  const char* name;
  const KernelTable& (*table)();
  bool (*supported)();
};

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 state (XCR0)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

bool always() { return true; }

// Best first.
const std::vector<Level>& levels() {
  static const std::vector<Level> v = {
#if defined(PYDIFF_HAVE_AVX512)
      {"avx512", &isa_avx512::kernel_table, &cpu_has_avx512},
#endif
#if defined(PYDIFF_HAVE_AVX2)
      {"avx2", &isa_avx2::kernel_table, &cpu_has_avx2},
#endif
      {"baseline", &isa_baseline::kernel_table, &always},
  };
  return v;
}

const KernelTable* g_table = nullptr;

const KernelTable& table() {
  if (!g_table) select_isa("");
  return *g_table;
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> out;
  for (const Level& l : levels()) out.push_back(l.name);
  return out;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const Level& l : levels())
    if (l.supported()) out.push_back(l.name);
  return out;
}

std::string active_isa() { return table().name; }

void select_isa(const std::string& name) {
  for (const Level& l : levels()) {
    if (name.empty() ? l.supported() : name == l.name) {
      if (!l.supported())
        throw std::invalid_argument("CPU ISA level '" + name + "' is not supported by this CPU");
      g_table = &l.table();
      return;
    }
  }
  std::string names;
  for (const Level& l : levels()) names += (names.empty() ? "" : ", ") + std::string(l.name);
  throw std::invalid_argument("unknown CPU ISA level '" + name + "' (compiled in: " + names + ")");
}

int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : omp_get_max_threads(); }

void check_row_range(const char* op, const int64_t* index, int64_t index_stride, int64_t row_stride, int64_t R,
                     int64_t B) {
  if (!index) return;  // rows b*row_stride < R were checked with the arguments
  const int64_t n = index_stride ? B : std::min<int64_t>(B, 1);
  for (int64_t b = 0; b < n; ++b) {
    const int64_t r = index[b * index_stride];
    if (r < -R || r >= R)
      throw std::out_of_range(std::string(op) + ": index " + std::to_string(r) +
                              " is out of range for a coefficient table of " + std::to_string(R) + " rows");
  }
}

// ---------------------------------------------------------------------------------------------- ops

void fused_step(const FusedStepArgs& a, int num_threads) {
  if (a.B == 0 || a.N == 0) return;
  check_row_range("fused_step", a.index, a.index_stride, a.row_stride, a.R, a.B);
  uint64_t key = 0, ctr = 0;
  if (a.philox.on) philox_key_ctr(a.philox, key, ctr);  // the rng tensor is host memory here
  table().fused_step(a, key, ctr, resolve_threads(num_threads));
}

void sumsq(const SumsqArgs& a, int num_threads) {
  if (a.B == 0) return;
  uint64_t key = 0, ctr = 0;
  if (a.philox.on) philox_key_ctr(a.philox, key, ctr);
  table().sumsq(a, key, ctr, resolve_threads(num_threads));
}

void philox_normal(const PhiloxNormalArgs& a, int num_threads) {
  if (a.numel <= 0) return;
  uint64_t key = 0, ctr = 0;
  philox_key_ctr(a.philox, key, ctr);
  table().philox_normal(a, key, ctr, resolve_threads(num_threads));
}

// langevin_step: pass 1 the sums of squares of m and z (the sumsq loop), the rows on the host (serial in b,
// pydiff_math.h), pass 2 the fused_step loop with one row per sample. With Philox both passes use the same key
// and counter offset, so the z of the update is the z of the norm.
//
// Philox with float32/float64 data: z is generated once, into a per-thread scratch buffer that both passes
// read, instead of twice. On a CPU the generator costs ~20x a pass over a stored tensor (8x3x64x64, one
// thread: philox_normal ~500 us, sumsq of two tensors ~25 us), so this halves a Philox corrector step; the
// result is bit-identical (the buffer holds the float32 z exactly, in the data's type). Half-precision data
// would round a stored z, so it regenerates.
static void* philox_scratch(size_t bytes) {
  static thread_local std::vector<double> buf;  // grow-only: the largest step this thread has run
  const size_t n = (bytes + sizeof(double) - 1) / sizeof(double);
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

void langevin_step(const LangevinArgs& a, int num_threads) {
  if (a.B == 0 || a.N == 0) return;
  const int nt = resolve_threads(num_threads);
  uint64_t key = 0, ctr = 0;
  if (a.philox.on) philox_key_ctr(a.philox, key, ctr);
  const KernelTable& k = table();
  const void* noise = a.noise;
  PhiloxSource philox = a.philox;
  if (philox.on && (a.dtype == kFloat32 || a.dtype == kFloat64)) {
    PhiloxNormalArgs p;
    p.dtype = a.dtype;
    p.numel = a.B * a.N;
    p.out = philox_scratch(static_cast<size_t>(p.numel) * (a.dtype == kFloat64 ? 8 : 4));
    p.philox = philox;
    k.philox_normal(p, key, ctr, nt);
    noise = p.out;
    philox = PhiloxSource();
  }
  const SumsqArgs s = langevin_sumsq_args(a, noise, philox);
  k.sumsq(s, key, ctr, nt);
  if (a.dtype == kFloat64)
    langevin_rows(static_cast<const double*>(a.sums), static_cast<const double*>(a.coef), a.coef_stride, a.B,
                  a.sample_norm, static_cast<double*>(a.rows));
  else
    langevin_rows(static_cast<const float*>(a.sums), static_cast<const float*>(a.coef), a.coef_stride, a.B,
                  a.sample_norm, static_cast<float*>(a.rows));
  const FusedStepArgs f = langevin_fused_args(a, noise, philox);
  k.fused_step(f, key, ctr, nt);
}

// dynamic_threshold: per sample, |x0| into a per-thread scratch buffer (the level's loop), then
// std::nth_element for rank lo and a min over the upper partition for rank hi = lo + 1; the quantile rule
// and torch.clamp semantics of pydiff_math.h. Ranks and weight come from the host (quantile_rank).
template <typename T>
static void dynamic_threshold_typed(const DynThreshArgs& a, int nt) {
  T* out = static_cast<T*>(a.out);
  const int64_t B = a.B, N = a.N, lo = a.lo, hi = a.hi;
  const T wt = static_cast<T>(a.wt), max_val = static_cast<T>(a.max_val);
  const bool par = B * N >= kParallelMin && nt > 1 && B > 1;
  const int nthreads = par ? static_cast<int>(std::min<int64_t>(nt, B)) : 1;
  std::vector<T> scratch(static_cast<size_t>(nthreads) * static_cast<size_t>(N));
  const KernelTable& k = table();

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    T* v = scratch.data() + static_cast<size_t>(omp_get_thread_num()) * static_cast<size_t>(N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t nnan = k.abs_x0(a, b, v);
      T vlo = T(0), vhi = T(0);
      if (!nnan) {
        std::nth_element(v, v + lo, v + N);
        vlo = v[lo];
        vhi = hi == lo ? vlo : *std::min_element(v + lo + 1, v + N);
      }
      out[b] = threshold_scale(quantile_interp(vlo, vhi, wt, nnan != 0), max_val);
    }
  }
}

void dynamic_threshold(const DynThreshArgs& a, int num_threads) {
  if (a.B == 0) return;
  if (a.m) check_row_range("dynamic_threshold", a.index, a.index_stride, a.row_stride, a.R, a.B);
  const int nt = resolve_threads(num_threads);
  if (a.dtype == kFloat64)
    dynamic_threshold_typed<double>(a, nt);
  else
    dynamic_threshold_typed<float>(a, nt);
}

}  // namespace cpu
}  // namespace pydiff
