"""pytest-benchmark suite: one DDIM / DDPM / DPM-Solver++ multistep-3 scheduler step on 8x4x128x128 fp32, CPU.

diffusers' step, pydiff's drop-in on the reference ops, and on the fused C++ backend, in the same run:

    python -m pytest benchmarks/bench_step_cpu.py --benchmark-columns=median,iqr,rounds

Goals: fused cpu >= 3x faster than diffusers' DDIM step and >= 8x for the multistep-3 step.
Record the ratios in RESULTS.md.
"""
import pytest
import torch

from pydiff.bench import step_callables
from pydiff.ops import backend_available

SHAPE = (8, 4, 128, 128)
IMPLS = ["diffusers", "pydiff-reference", "pydiff-cpu"]


@pytest.fixture(scope="module", params=["ddim", "ddpm", "dpm3m"])
def calls(request):
    backends = [b for b in ("reference", "cpu") if backend_available(b)]
    return request.param, step_callables(request.param, SHAPE, torch.float32, "cpu", backends)


@pytest.mark.parametrize("impl", IMPLS)
def test_step(benchmark, calls, impl):
    sampler, table = calls
    if impl not in table:
        pytest.skip(f"{impl} not available here")
    benchmark.group = f"{sampler} step 8x4x128x128 fp32 cpu"
    benchmark(table[impl])
