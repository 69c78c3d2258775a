"""Classifier-free guidance fused into the drop-ins' ``step`` (``model_output_uncond=``, ``guidance_scale=``).

The guided step must equal the plain step run on ``uncond + s (cond - uncond)`` (Ho & Salimans 2022): against
pydiff's own plain step on every backend (float32 rounding: the kernel forms ``(1 - s) uncond + s cond``), and
against diffusers' step on the combined output with the same generator (1e-5, as the other parity tests).
"""
import pytest
import torch
import diffusers

import pydiff.diffusers as pd
from helpers import TinyModel, backend_params, rel_l2, toy_model

SHAPE = (2, 3, 8, 8)
SCALE = 3.5
STEPS = 8

# (pydiff class, diffusers class, config, step kwargs)
CASES = [
    ("DDIMScheduler", {}, {}),
    ("DDIMScheduler", {"clip_sample": False}, {"eta": 1.0}),
    ("DDIMScheduler", {"thresholding": True, "prediction_type": "v_prediction"},
     {"eta": 0.5, "use_clipped_model_output": True}),
    ("DDPMScheduler", {}, {}),
    ("DDPMScheduler", {"prediction_type": "v_prediction", "clip_sample": False, "variance_type": "fixed_large"}, {}),
    ("DDPMScheduler", {"thresholding": True}, {}),
] + [
    ("DPMSolverMultistepScheduler", {"solver_order": o, "algorithm_type": a, "final_sigmas_type": "sigma_min"}, {})
    for a in ("dpmsolver++", "dpmsolver") for o in (1, 2, 3)
] + [
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("DPMSolverMultistepScheduler", {"thresholding": True, "prediction_type": "v_prediction"}, {}),
] + [
    ("DPMSolverSinglestepScheduler", {"solver_order": o, "algorithm_type": a, "final_sigmas_type": "sigma_min"}, {})
    for a in ("dpmsolver++", "dpmsolver") for o in (1, 2, 3)
] + [("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {})]


def case_id(case):
    cls, config, kw = case
    return "-".join([cls.replace("Scheduler", "")] + [f"{k}={v}" for k, v in {**config, **kw}.items()])


def outputs(x, t, sched):
    """A conditional and an unconditional output of the same consistent toy denoiser (the unconditional one
    sees a shifted sample), so the guided loop stays close to a contracting sampler. (With ``0.9 x + 0.05``
    DPM-Solver singlestep order 3 grew the sample to |x| ~ 34 and diffusers' own float32 rounding with it:
    2.4e-5 between diffusers and pydiff, against 2.2e-6 with this shift.)"""
    return toy_model(x, t, sched), toy_model(x + 0.05, t, sched)


def run(sched, guided: bool, kw=None, backend=None, dtype=torch.float32):
    """A short loop; ``guided``: the fused guided step, else the plain step on the torch-combined output."""
    if backend is not None:
        sched.pydiff_backend = backend
    sched.set_timesteps(STEPS)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    out = None
    for t in sched.timesteps:
        cond, uncond = outputs(x, t, sched)
        if guided:
            out = sched.step(cond, t, x, generator=gen, model_output_uncond=uncond, guidance_scale=SCALE, **(kw or {}))
            assert sched.last_fallback_reason is None, sched.last_fallback_reason
        else:
            out = sched.step(uncond + SCALE * (cond - uncond), t, x, generator=gen, **(kw or {}))
        x = out.prev_sample
    return x, out


def _make(cls, config, ours=True):
    return (getattr(pd, cls) if ours else getattr(diffusers, cls))(**config)


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fused_cfg_equals_combine_then_step(case, backend):
    """Same backend, same generator, in lockstep (both steps get the same sample every step, so rounding does not
    compound): the fused guided step against pydiff's plain step on the torch-combined output."""
    cls, config, kw = case
    a, b = _make(cls, config), _make(cls, config)
    for s in (a, b):
        s.pydiff_backend = backend
        s.set_timesteps(STEPS)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    worst = 0.0
    for t in a.timesteps:
        cond, uncond = outputs(x, t, a)
        got = a.step(cond, t, x, generator=ga, model_output_uncond=uncond, guidance_scale=SCALE, **kw)
        assert a.last_fallback_reason is None, a.last_fallback_reason
        want = b.step(uncond + SCALE * (cond - uncond), t, x, generator=gb, **kw)
        worst = max(worst, rel_l2(got.prev_sample, want.prev_sample))
        if hasattr(got, "pred_original_sample"):
            worst = max(worst, rel_l2(got.pred_original_sample, want.pred_original_sample))
        x = got.prev_sample
    # float32 rounding: the kernel forms (1 - s) uncond + s cond, torch uncond + s (cond - uncond). Measured
    # <= 7.9e-7 on every case (DDIM with eta = 1 the largest); with an unconditional output farther off (0.9 x +
    # 0.05) DPM-Solver singlestep order 3 (noise prediction) reached 2.3e-6, its differences of the block's
    # outputs dividing their rounding by the step fractions r1, r2.
    assert worst < 4e-6, worst


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_fused_cfg_matches_diffusers_on_the_combined_output(case):
    cls, config, kw = case
    got, _ = run(_make(cls, config), True, kw)
    want, _ = run(_make(cls, config, ours=False), False, kw)
    assert rel_l2(got, want) < 1e-5


def test_cfg_float64_is_exact_to_float64_rounding():
    sched_a, sched_b = pd.DDIMScheduler(), pd.DDIMScheduler()
    got, _ = run(sched_a, True, dtype=torch.float64)
    want, _ = run(sched_b, False, dtype=torch.float64)
    assert rel_l2(got, want) < 1e-13


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_history_holds_the_converted_guided_output(cls):
    """``model_outputs`` after a guided step is what diffusers stores when the caller combines first."""
    ours, ref = _make(cls, {"solver_order": 3}), _make(cls, {"solver_order": 3}, ours=False)
    for s in (ours, ref):
        s.set_timesteps(STEPS)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    xa = xb = x
    for t in ours.timesteps[:3]:
        ca, ua = outputs(xa, t, ours)
        cb, ub = outputs(xb, t, ref)
        xa = ours.step(ca, t, xa, model_output_uncond=ua, guidance_scale=SCALE).prev_sample
        xb = ref.step(ub + SCALE * (cb - ub), t, xb).prev_sample
    checked = 0
    for a, b in zip(ours.model_outputs, ref.model_outputs):
        if a is None or b is None:  # pydiff drops the entries no later step reads
            continue
        assert rel_l2(a, b) < 1e-5
        checked += 1
    assert checked >= 1


def test_scale_zero_and_one_select_one_output():
    """s = 0 is the unconditional output's step, s = 1 the conditional one's (the row's M1/M2 are 1/0 or 0/1)."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    cond, uncond = torch.randn(SHAPE), torch.randn(SHAPE)
    for s, which in ((0.0, uncond), (1.0, cond)):
        a, b = pd.DDIMScheduler(), pd.DDIMScheduler()
        a.set_timesteps(10)
        b.set_timesteps(10)
        t = a.timesteps[3]
        got = a.step(cond, t, x, model_output_uncond=uncond, guidance_scale=s).prev_sample
        torch.testing.assert_close(got, b.step(which, t, x).prev_sample, rtol=0, atol=0)


def test_a_fallback_step_runs_diffusers_on_the_combined_output():
    """A step diffusers runs (a float16 output with a float32 sample: mixed dtypes) gets the combined output."""
    ours, ref = pd.DDIMScheduler(), diffusers.DDIMScheduler()
    for s in (ours, ref):
        s.set_timesteps(10)
    x = torch.randn(SHAPE)
    cond, uncond = torch.randn(SHAPE).half(), torch.randn(SHAPE).half()
    t = ours.timesteps[2]
    got = ours.step(cond, t, x, model_output_uncond=uncond, guidance_scale=SCALE).prev_sample
    assert ours.last_fallback_reason is not None and "float16" in ours.last_fallback_reason
    want = ref.step(uncond + SCALE * (cond - uncond), t, x).prev_sample
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_channels_last_and_broadcast_outputs():
    """The pair follows the step's layout handling (a channels_last sample, a batch-1 output)."""
    ours, ref = pd.DDIMScheduler(), diffusers.DDIMScheduler()
    for s in (ours, ref):
        s.set_timesteps(10)
    x = torch.randn(SHAPE).to(memory_format=torch.channels_last)
    cond, uncond = torch.randn(1, *SHAPE[1:]), torch.randn(1, *SHAPE[1:])
    t = ours.timesteps[4]
    got = ours.step(cond, t, x, model_output_uncond=uncond, guidance_scale=SCALE).prev_sample
    assert ours.last_fallback_reason is None
    want = ref.step(uncond + SCALE * (cond - uncond), t, x).prev_sample
    assert got.stride() == want.stride()
    assert rel_l2(got, want) < 1e-6


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                 "DPMSolverSinglestepScheduler"])
def test_bad_guidance_arguments(cls):
    sched = _make(cls, {})
    sched.set_timesteps(10)
    t = sched.timesteps[0]
    x, m = torch.randn(SHAPE), torch.randn(SHAPE)
    with pytest.raises(ValueError, match="guidance_scale"):
        sched.step(m, t, x, model_output_uncond=m, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        sched.step(m, t, x, model_output_uncond=m, guidance_scale=float("nan"))
    with pytest.raises(TypeError, match="guidance_scale"):
        sched.step(m, t, x, model_output_uncond=m, guidance_scale=True)
    with pytest.raises(TypeError, match="guidance_scale"):
        sched.step(m, t, x, model_output_uncond=m, guidance_scale="7.5")
    with pytest.raises(TypeError, match="model_output_uncond"):
        sched.step(m, t, x, guidance_scale=7.5)
    with pytest.raises(TypeError, match="guidance_scale"):
        sched.step(m, t, x, model_output_uncond=m)
    with pytest.raises(TypeError, match="model_output_uncond"):
        sched.step(m, t, x, model_output_uncond=m.numpy(), guidance_scale=7.5)
    with pytest.raises(ValueError, match="model_output_uncond has shape"):
        sched.step(m, t, x, model_output_uncond=m[:1], guidance_scale=7.5)
    with pytest.raises(TypeError, match="model_output_uncond is torch.float64"):
        sched.step(m, t, x, model_output_uncond=m.double(), guidance_scale=7.5)
    with pytest.raises(ValueError, match="model_output_uncond is on meta"):
        sched.step(m, t, x, model_output_uncond=torch.empty(SHAPE, device="meta"), guidance_scale=7.5)
    # nothing ran: the first step still gives diffusers' result with a valid scale from a numpy / tensor number
    import numpy as np
    out = sched.step(m, t, x, model_output_uncond=m, guidance_scale=np.float32(2.0)).prev_sample
    assert torch.isfinite(out).all()


def test_guided_step_under_autograd_gives_the_combined_gradient():
    """The fused op's backward carries the pair: d/d(cond) and d/d(uncond) of the guided step equal those of the
    plain step on the torch-combined output."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    grads = []
    for guided in (True, False):
        sched = pd.DDIMScheduler(clip_sample=False)
        sched.set_timesteps(10)
        cond = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        uncond = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        t = sched.timesteps[3]
        if guided:
            out = sched.step(cond, t, x, model_output_uncond=uncond, guidance_scale=SCALE).prev_sample
        else:
            out = sched.step(uncond + SCALE * (cond - uncond), t, x).prev_sample
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((cond.grad, uncond.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_compiled_guided_loop_is_one_graph(cls):
    """Under ``torch.compile(fullgraph=True)`` the guided step breaks no graph (the plain one does not either,
    tests/diffusers/test_compile.py), one fused_step per step, and equals the eager guided loop. (Not to 4 ulps as
    there: this guided toy loop amplifies rounding; the same loop with a torch combine and the plain step measured
    54 ulps between compiled and eager, the guided one 73 ulps, 9e-6 relative.)"""
    from test_compile import CountingBackend, make_sample

    model = TinyModel()

    def loop(sched):
        def go(x):
            for t in sched.timesteps:
                cond = model(x, t)
                uncond = model(0.9 * x, t)
                x = sched.step(cond, t, x, model_output_uncond=uncond, guidance_scale=SCALE).prev_sample
            return x
        return go

    x = make_sample()
    with torch.no_grad():
        eager = getattr(pd, cls)()
        eager.set_timesteps(6)
        expected = loop(eager)(x)
        torch._dynamo.reset()
        backend = CountingBackend()
        sched = getattr(pd, cls)()
        sched.set_timesteps(6)
        got = torch.compile(loop(sched), backend=backend, fullgraph=True)(x)
    assert sched.last_fallback_reason is None
    assert backend.graphs == 1
    assert backend.ops.count("pydiff::fused_step") == 6, backend.ops
    assert rel_l2(got, expected) < 1e-5


@pytest.mark.parametrize("sampler", ["ddim_cfg", "ddpm_cfg", "dpm2m_cfg"])
def test_bench_cfg_rows_are_checked_candidates(sampler):
    """``pydiff bench``'s guided rows: diffusers after a torch combine, and per backend the plain fused step, the
    torch combine + fused step and the fused guided step, each checked against diffusers before it is timed
    (``step_callables`` raises on a disagreement)."""
    from pydiff import bench

    calls = bench.step_callables(sampler, (1, 3, 8, 8), torch.float32, "cpu", backends=["cpu"])
    assert list(calls) == ["diffusers", "pydiff-cpu plain", "pydiff-cpu combine", "pydiff-cpu cfg"]
    assert sampler in bench.SAMPLERS
