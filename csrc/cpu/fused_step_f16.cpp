// Instantiation of the CPU fused_step for one dtype (see fused_step_impl.h).
#include "fused_step_impl.h"

template void pydiff::cpu::fused_step_typed<pydiff::kFloat16>(const pydiff::FusedStepArgs&, int);
