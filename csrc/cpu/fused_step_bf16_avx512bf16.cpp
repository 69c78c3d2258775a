// fused_step for bfloat16 with AVX512-BF16's vcvtneps2bf16 (convert_block.h). CMake compiles this TU
// for the avx512 level only, with -mavx512bf16, into its own namespace (no inline function of it can
// stand in for one of the plain avx512 build, which must run without the extension); that level's
// fused_step_bf16.cpp calls it where CPUID reports AVX512-BF16 (fused_step_impl.h).
#undef PYDIFF_ISA_NS
#define PYDIFF_ISA_NS isa_avx512bf16
#define PYDIFF_BF16_NATIVE_TU 1
#define PYDIFF_DT ::pydiff::kBFloat16
#include "fused_step_impl.h"
