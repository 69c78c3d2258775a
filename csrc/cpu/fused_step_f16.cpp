// fused_step instantiation for one dtype (fused_step_impl.h); one TU per dtype so they compile in parallel.
#define PYDIFF_DT ::pydiff::kFloat16
// fp16 at the avx512 level runs on 256-bit vectors (F16C's ymm conversions): the fp16 DDIM step
// (8x4x128x128, AMD EPYC with AVX-512, one thread) takes 89.9 us so and 99.4 us with zmm vectors (two
// threads: 48.6 vs 50.8; fp32 52.3), where 512-bit operations issue as two 256-bit halves. Not measured on
// a CPU with full-width 512-bit units. bf16 keeps zmm vectors: the same change made it slower (117.7 vs
// 107.5 us).
#if defined(__AVX512F__)
#define PYDIFF_HALF_VEC_256 1
#endif
#include "fused_step_impl.h"
