// Fixed-width integer types for every compiler that sees the shared headers. NVRTC (run-time CUDA
// compilation, the cuda-jit backend) ships no C library headers, so <stdint.h> cannot be included there;
// the types are declared inside namespace pydiff instead (never globally, so a toolchain that does
// provide them cannot clash). Device code is LP64 like the host: long long is 64 bits.
#pragma once

#if defined(__CUDACC_RTC__)
namespace pydiff {
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned long long uintptr_t;
}  // namespace pydiff
#else
#include <stdint.h>
#endif
