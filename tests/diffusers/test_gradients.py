"""Autograd through the diffusers drop-ins: gradients of a sampling loop equal those of diffusers' own schedulers.

A short loop in float64 (a small conv model with parameters), the same config for the drop-in and for diffusers'
class, the same noise: the gradient of a fixed linear functional of the final sample with respect to ``x_T`` and
to the model's parameters. diffusers' step is plain torch arithmetic, so its gradient is autograd's; the drop-in's
comes from the fused backward op. The two forward runs agree to ~1e-7 (DPM-Solver: diffusers' float32 sigmas)
or ~1e-16 (DDIM, DDPM).
"""
import diffusers
import pytest
import torch

import pydiff.diffusers as pd
from helpers import TinyModel

STEPS = 5
SHAPE = (2, 3, 6, 6)


def fixed(seed, shape=SHAPE, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run_loop(sched, model, x, step_kw, noise_kw=None):
    """``STEPS`` steps from ``x``; ``noise_kw(i)``: per-step keyword arguments that fix the noise."""
    sched.set_timesteps(STEPS)
    for i, t in enumerate(sched.timesteps):
        extra = dict(step_kw, **(noise_kw(i) if noise_kw else {}))
        x = sched.step(model(x, t), t, x, **extra).prev_sample
    return x


def grads(lib, cls, config, step_kw=None, noise_kw=None):
    """(final sample, d/dx_T, d/dparams) of ``<final sample, w>`` for ``lib.cls(**config)``."""
    model = TinyModel(dtype=torch.float64)
    x = fixed(1).requires_grad_(True)
    out = run_loop(getattr(lib, cls)(**config), model, x, step_kw or {}, noise_kw)
    loss = (out * fixed(2)).sum()
    g = torch.autograd.grad(loss, [x, *model.parameters()])
    return out.detach(), g


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def ddpm_noise(i):
    return {"generator": torch.Generator().manual_seed(100 + i)}


def ddim_noise(i):
    return {"variance_noise": fixed(100 + i)}


def sde_noise(i):
    return {"variance_noise": fixed(100 + i)}


CASES = [
    ("DDIMScheduler", {}, {}, None),
    ("DDIMScheduler", {"prediction_type": "v_prediction", "clip_sample": False}, {"eta": 0.6}, ddim_noise),
    ("DDPMScheduler", {}, {}, ddpm_noise),
    ("DPMSolverMultistepScheduler", {}, {}, None),  # DPM-Solver++ 2M
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "prediction_type": "v_prediction"}, {}, None),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}, sde_noise),
    ("DPMSolverSinglestepScheduler", {}, {}, None),  # order 2
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}, {}, None),
]


def case_id(case):
    cls, config, step_kw, _ = case
    return "-".join([cls.replace("Scheduler", "")] + [f"{k}={v}" for k, v in {**config, **step_kw}.items()])


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_loop_gradients_match_diffusers(case):
    cls, config, step_kw, noise_kw = case
    ref_out, ref = grads(diffusers, cls, config, step_kw, noise_kw)
    out, got = grads(pd, cls, config, step_kw, noise_kw)
    assert rel(out, ref_out) < 1e-6
    for g, r in zip(got, ref):
        assert rel(g, r) < 1e-5


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                 "DPMSolverSinglestepScheduler"])
def test_outputs_require_grad_like_diffusers(cls):
    model = TinyModel()
    sched = getattr(pd, cls)()
    sched.set_timesteps(STEPS)
    x = fixed(1, dtype=torch.float32)
    t = sched.timesteps[0]
    out = sched.step(model(x, t), t, x)  # the model's parameters require grad
    assert out.prev_sample.requires_grad
    if hasattr(out, "pred_original_sample"):
        assert out.pred_original_sample.requires_grad
    assert sched.last_fallback_reason is None
    with torch.no_grad():
        sched.set_timesteps(STEPS)
        assert not sched.step(model(x, t), t, x).prev_sample.requires_grad


def test_history_is_not_overwritten_while_recording():
    """Without autograd the multistep drop-in rotates ``solver_order - 1`` history buffers in place; recording,
    every step's converted output is a new tensor (the autograd graph refers to the old ones)."""
    model = TinyModel()
    x = fixed(1, dtype=torch.float32)
    seen = {}
    for grad in (False, True):
        sched = pd.DPMSolverMultistepScheduler(solver_order=3)
        sched.set_timesteps(8)
        kept = []  # held, so that no freed buffer's memory is handed out again
        with torch.set_grad_enabled(grad):
            xx = x
            for t in sched.timesteps:
                xx = sched.step(model(xx, t), t, xx).prev_sample
                kept.append(sched.model_outputs[-1])
        assert sched.last_fallback_reason is None
        seen[grad] = len({t.data_ptr() for t in kept})
    assert seen[False] == 2
    assert seen[True] == 8


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                 "DPMSolverSinglestepScheduler"])
def test_thresholding_under_autograd_runs_diffusers_step(cls):
    """pydiff's dynamic_threshold has no backward: while autograd records, a thresholding step is diffusers' own
    (said through the fallback mechanism), so the gradient is diffusers'. Without autograd it stays fused."""
    config = {"thresholding": True}
    noise_kw = ddpm_noise if cls == "DDPMScheduler" else None
    ref_out, ref = grads(diffusers, cls, config, noise_kw=noise_kw)
    out, got = grads(pd, cls, config, noise_kw=noise_kw)
    assert rel(out, ref_out) < 1e-6
    for g, r in zip(got, ref):
        assert rel(g, r) < 1e-5
    sched = getattr(pd, cls)(**config)
    sched.set_timesteps(STEPS)
    x = fixed(1).requires_grad_(True)
    t = sched.timesteps[0]
    sched.step(x * 0.1, t, x, **(noise_kw(0) if noise_kw else {}))
    assert "autograd" in sched.last_fallback_reason
    assert any("autograd" in k for k in sched._pydiff_fallbacks)
    with torch.no_grad():
        sched.set_timesteps(STEPS)
        sched.step(x * 0.1, t, x, **(noise_kw(0) if noise_kw else {}))
    assert sched.last_fallback_reason is None


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_one_ddim_step(backend):
    sched = pd.DDIMScheduler(clip_sample=False)
    sched.pydiff_backend = backend
    sched.set_timesteps(STEPS)
    t = sched.timesteps[1]
    x = fixed(1, (1, 2, 3, 3)).requires_grad_(True)
    m = fixed(2, (1, 2, 3, 3)).requires_grad_(True)

    def step(x, m):
        out = sched.step(m, t, x)
        return out.prev_sample, out.pred_original_sample

    assert torch.autograd.gradcheck(step, (x, m))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_two_multistep_steps(backend):
    """The second DPM-Solver++ 2M step reads the first one's converted output from the history: gradients flow
    through both."""
    m0 = fixed(3, (1, 2, 3, 3))

    def two_steps(x, m):
        sched = pd.DPMSolverMultistepScheduler()
        sched.pydiff_backend = backend
        sched.set_timesteps(STEPS)
        t0, t1 = sched.timesteps[:2]
        x1 = sched.step(m0 + 0.5 * x, t0, x).prev_sample
        return sched.step(m, t1, x1).prev_sample

    x = fixed(1, (1, 2, 3, 3)).requires_grad_(True)
    m = fixed(2, (1, 2, 3, 3)).requires_grad_(True)
    assert torch.autograd.gradcheck(two_steps, (x, m))


def test_compiled_forward_and_backward_equal_eager():
    """torch.compile and autograd together: the compiled loop's gradients (AOTAutograd traces the backward
    through the fused backward op) equal the eager ones."""
    def run(cls_config, compile_):
        model = TinyModel(dtype=torch.float64)
        sched = pd.DPMSolverMultistepScheduler(**cls_config)
        sched.set_timesteps(STEPS)
        x = fixed(1).requires_grad_(True)

        def loop(x):
            for t in sched.timesteps:
                x = sched.step(model(x, t), t, x).prev_sample
            return x

        f = torch.compile(loop, backend="aot_eager", fullgraph=True) if compile_ else loop
        out = f(x)
        assert sched.last_fallback_reason is None
        return out.detach(), torch.autograd.grad((out * fixed(2)).sum(), [x, *model.parameters()])

    torch._dynamo.reset()
    out_e, g_e = run({}, False)
    out_c, g_c = run({}, True)
    assert rel(out_c, out_e) < 1e-12
    for a, b in zip(g_c, g_e):
        assert rel(a, b) < 1e-12


@pytest.mark.parametrize("kind", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                  "DPMSolverSinglestepScheduler"])
def test_a_tensor_guidance_scale_gets_its_gradient(kind):
    """A guidance_scale tensor that requires grad (learned or tuned guidance): the fused row would treat it as a
    constant, so the step runs diffusers' own on the combined output and d/d(scale) is diffusers'."""
    D = torch.float64
    grads = []
    for lib in (diffusers, pd):
        sched = getattr(lib, kind)()
        sched.set_timesteps(5)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=D)
        m, mu = 0.5 * torch.sin(x), 0.3 * torch.cos(x)
        scale = torch.tensor(3.0, dtype=D, requires_grad=True)
        t = sched.timesteps[1]
        if lib is diffusers:
            out = sched.step(mu + scale * (m - mu), t, x, generator=torch.Generator().manual_seed(1))
        else:
            out = sched.step(m, t, x, model_output_uncond=mu, guidance_scale=scale,
                             generator=torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(out.prev_sample.sum(), [scale])[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


def test_a_tensor_eta_gets_its_gradient():
    D = torch.float64
    grads = []
    for lib in (diffusers, pd):
        sched = lib.DDIMScheduler()
        sched.set_timesteps(5)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=D)
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=D)
        eta = torch.tensor(0.5, dtype=D, requires_grad=True)
        out = sched.step(0.5 * torch.sin(x), sched.timesteps[1], x, eta=eta, variance_noise=noise)
        grads.append(torch.autograd.grad(out.prev_sample.sum(), [eta])[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=0)


def test_score_sde_ve_corrector_under_autograd_runs_diffusers():
    """pydiff's langevin_step has no backward: under autograd the corrector is diffusers' own (differentiable)."""
    grads = []
    for lib in (diffusers, pd):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        sched = lib.ScoreSdeVeScheduler()
        sched.set_timesteps(4)
        sched.set_sigmas(4)
        out = sched.step_correct(-0.1 * x, x, generator=torch.Generator().manual_seed(1)).prev_sample
        grads.append(torch.autograd.grad(out.sum(), [x])[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
