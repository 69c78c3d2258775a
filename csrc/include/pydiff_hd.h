// PYDIFF_HD: the qualifier of every per-element function shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define PYDIFF_HD __host__ __device__ __forceinline__
#else
// always_inline, not just inline: the CPU loops only vectorise when the whole per-element expression
// is inlined into them (GCC's inliner gives up on the Philox rounds otherwise).
#define PYDIFF_HD inline __attribute__((always_inline))
#endif
