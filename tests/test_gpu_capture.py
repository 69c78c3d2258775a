"""GPU only: the drop-in loop is free of host syncs and replays correctly inside a CUDA graph."""
import pytest
import torch

import pydiff.diffusers as pd

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("cls", [pd.DDIMScheduler, pd.DDPMScheduler])
def test_loop_has_no_host_sync(cls):
    sched = cls(clip_sample=True)
    sched.set_timesteps(10, device="cuda")
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    ts = sched.timesteps
    sched.step(x * 0.5, ts[0], x)  # first call builds and uploads the coefficient table
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in ts:
            x = sched.step(x * 0.5, t, x).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert sched.last_fallback_reason is None
    assert torch.isfinite(x).all()


def test_ddim_step_replays_in_cuda_graph():
    sched = pd.DDIMScheduler(clip_sample=False)
    sched.set_timesteps(10, device="cuda")
    x = torch.randn(1, 4, 64, 64, device="cuda")
    m = torch.randn_like(x)
    t = sched.timesteps[3:4].clone()
    expect = sched.step(m, t, x).prev_sample
    static_out = torch.empty_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        sched.step(m, t, x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out.copy_(sched.step(m, t, x).prev_sample)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, expect)


@pytest.mark.parametrize("cls", [pd.DDIMScheduler, pd.DPMSolverMultistepScheduler])
def test_reduce_overhead_loop_replays_without_recompiles(cls):
    """torch.compile(mode="reduce-overhead") of a 20-step loop (model included): CUDA-graph replays, no recompile
    on later calls, the eager result."""
    torch._dynamo.reset()
    sched = cls()
    sched.set_timesteps(20, device="cuda")
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, device="cuda")

    def run(x):
        for t in sched.timesteps:
            x = sched.step(torch.tanh(conv(x)) * 0.3, t, x).prev_sample
        return x

    x = torch.randn(1, 4, 32, 32, device="cuda")
    with torch.no_grad():
        expect = run(x.clone())
        compiled = torch.compile(run, mode="reduce-overhead", fullgraph=True)
        sched.set_timesteps(20, device="cuda")  # a multistep solver's history starts over
        compiled(x.clone())
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(3):
                sched.set_timesteps(20, device="cuda")
                got = compiled(x.clone())
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
