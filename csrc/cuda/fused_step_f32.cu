// fused_step kernels for one storage type (fused_step_impl.cuh); one file per dtype so they compile in parallel.
#define PYDIFF_CUDA_S float
#include "fused_step_impl.cuh"
