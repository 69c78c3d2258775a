// fused_step instantiation for one dtype (fused_step_impl.h); one TU per dtype so they compile in parallel.
#define PYDIFF_DT ::pydiff::kBFloat16
#include "fused_step_impl.h"
