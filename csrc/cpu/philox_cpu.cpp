// Multi-versioned Philox normal block generator (see philox_cpu.h). With GCC >= 11 on x86-64 Linux the
// function is cloned for x86-64-v4 (AVX-512), x86-64-v3 (AVX2) and the baseline, and the loader picks the
// best one for the running CPU (ifunc), so the default build stays portable (no -march=native needed).
#include "philox_cpu.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(PYDIFF_NATIVE_ARCH) && !defined(PYDIFF_NO_CLONES)
#define PYDIFF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYDIFF_CLONES
#endif

namespace pydiff {
namespace cpu {

PYDIFF_CLONES void philox_normal_block(uint64_t seed, uint64_t offset, uint64_t g0, int64_t n, float* z) {
  philox_normal_block_inline(seed, offset, g0, n, z);
}

}  // namespace cpu
}  // namespace pydiff
