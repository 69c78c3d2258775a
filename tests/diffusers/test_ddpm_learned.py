"""The DDPM drop-in's learned variances (``variance_type='learned'`` / ``'learned_range'``) run fused.

The model output has twice the sample's channels, ``[:, :C]`` the prediction and ``[:, C:]`` the variance values,
split as diffusers' ``DDPMScheduler.step`` splits them. Checked against diffusers on the same generator, to the
tolerance of the DDPM parity grid (tests/diffusers/test_diffusers_parity.py: 1e-5 relative L2 in float32).
"""
import itertools
import logging

import pytest
import torch
import diffusers

import pydiff.diffusers as pd
from helpers import backend_params, rel_l2, toy_model

SHAPE = (2, 3, 8, 8)
VARIANCE_TYPES = ("learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def variance_channels(x, t, variance_type):
    """Variance values a learned-variance model would output: for ``learned_range`` the interpolation fraction
    ``v`` in about [-1, 1] (a smooth function of x, t); for ``learned`` diffusers reads the variance itself
    (std = sqrt(v)), so a positive value around the posterior variance."""
    v = torch.tanh(x.double() + 0.001 * float(t) - 0.3)
    if variance_type == "learned":
        v = 1e-3 * (1.5 + v) * (1 + float(t) / 100)
    return v.to(x.dtype)


def model_output(x, t, sched):
    return torch.cat([toy_model(x, t, sched), variance_channels(x, t, sched.config.variance_type)], dim=1)


def run_loop(cls, config, steps, dtype=torch.float32, backend=None, timesteps=None):
    sched = cls(**config)
    if backend is not None:
        sched.pydiff_backend = backend
    if timesteps is not None:
        sched.set_timesteps(timesteps=timesteps)
    else:
        sched.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    for t in sched.timesteps:
        out = sched.step(model_output(x, t, sched), t, x, generator=gen)
        assert getattr(sched, "last_fallback_reason", None) is None, sched.last_fallback_reason
        x = out.prev_sample
    return x, out.pred_original_sample


@pytest.mark.parametrize("variance_type,prediction_type,steps",
                         list(itertools.product(VARIANCE_TYPES, PREDICTION_TYPES, (10, 50))))
def test_learned_variance_loop_matches_diffusers(variance_type, prediction_type, steps):
    """A whole loop (its last step is t = 0, where no noise is added), same generator."""
    config = {"variance_type": variance_type, "prediction_type": prediction_type,
              "clip_sample": prediction_type != "v_prediction"}
    got, got_x0 = run_loop(pd.DDPMScheduler, config, steps)
    want, want_x0 = run_loop(diffusers.DDPMScheduler, config, steps)
    assert rel_l2(got, want) < 1e-5
    assert rel_l2(got_x0, want_x0) < 1e-5


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
@pytest.mark.parametrize("t_index", [0, 4, 9])  # 9: the last step, t = 0
@pytest.mark.parametrize("seed", [3, 4])
def test_one_step_matches_diffusers(variance_type, t_index, seed, backend):
    ours = pd.DDPMScheduler(variance_type=variance_type)
    ours.pydiff_backend = backend
    ref = diffusers.DDPMScheduler(variance_type=variance_type)
    for s in (ours, ref):
        s.set_timesteps(10)
    t = ours.timesteps[t_index]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    m = model_output(x, t, ours)
    a = ours.step(m, t, x, generator=torch.Generator().manual_seed(seed))
    b = ref.step(m, t, x, generator=torch.Generator().manual_seed(seed))
    assert ours.last_fallback_reason is None
    assert rel_l2(a.prev_sample, b.prev_sample) < 1e-6
    assert rel_l2(a.pred_original_sample, b.pred_original_sample) < 1e-6
    if int(t) == 0:
        # no noise at t = 0: the result does not depend on the generator or on the variance channels
        m2 = m.clone()
        m2[:, SHAPE[1]:] = 0.5
        c = ours.step(m2, t, x, generator=torch.Generator().manual_seed(seed + 10)).prev_sample
        torch.testing.assert_close(c, a.prev_sample, rtol=0, atol=0)


def test_the_variance_channels_set_the_noise():
    """The noise term is std(v) z per element: two variance maps give prev samples differing by (std1 - std2) z."""
    sched = pd.DDPMScheduler(variance_type="learned_range")
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    pred = toy_model(x, t, sched)
    lo = sched.step(torch.cat([pred, -torch.ones_like(pred)], 1), t, x, generator=torch.Generator().manual_seed(5))
    hi = sched.step(torch.cat([pred, torch.ones_like(pred)], 1), t, x, generator=torch.Generator().manual_seed(5))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    # v = -1: the posterior variance (beta tilde); v = +1: beta_t (Nichol & Dhariwal 2021, eq. 15), from diffusers'
    # own float32 alphas_cumprod
    tt = int(t)
    prev = int(sched.previous_timestep(tt))
    a_t, a_prev = sched.alphas_cumprod[tt].double(), sched.alphas_cumprod[prev].double()
    beta = 1 - a_t / a_prev
    beta_tilde = (1 - a_prev) / (1 - a_t) * beta
    diff = hi.prev_sample.double() - lo.prev_sample.double()
    torch.testing.assert_close(diff, (beta.sqrt() - beta_tilde.sqrt()) * z.double(), rtol=1e-4, atol=1e-6)


def test_no_fallback_warning(caplog):
    sched = pd.DDPMScheduler(variance_type="learned_range")
    with caplog.at_level(logging.WARNING, logger="pydiff.diffusers"):
        run_loop(pd.DDPMScheduler, {"variance_type": "learned_range"}, 10)
        sched.set_timesteps(10)
    assert not [r for r in caplog.records if r.name == "pydiff.diffusers"]
    import pydiff
    assert "configuration: fused" in str(pydiff.explain(sched))


def test_custom_timesteps_and_float64():
    config = {"variance_type": "learned_range"}
    ts = [999, 700, 400, 120, 5, 0]
    got, _ = run_loop(pd.DDPMScheduler, config, None, timesteps=ts)
    want, _ = run_loop(diffusers.DDPMScheduler, config, None, timesteps=ts)
    assert rel_l2(got, want) < 1e-5
    got64, _ = run_loop(pd.DDPMScheduler, config, 10, dtype=torch.float64)
    want64, _ = run_loop(diffusers.DDPMScheduler, config, 10, dtype=torch.float64)
    assert rel_l2(got64, want64) < 1e-5  # diffusers' scalars are float32 either way


def test_output_without_variance_channels_runs_diffusers():
    """diffusers then has no variance values: it fails for t > 0 (and we fail the same way), works at t = 0."""
    ours, ref = pd.DDPMScheduler(variance_type="learned_range"), diffusers.DDPMScheduler(variance_type="learned_range")
    for s in (ours, ref):
        s.set_timesteps(10)
    x = torch.randn(SHAPE)
    m = torch.randn(SHAPE)
    with pytest.raises(TypeError):
        ref.step(m, ref.timesteps[2], x)
    with pytest.raises(TypeError):
        ours.step(m, ours.timesteps[2], x)
    assert "variance channels" in ours.last_fallback_reason
    a = ours.step(m, ours.timesteps[-1], x).prev_sample
    torch.testing.assert_close(a, ref.step(m, ref.timesteps[-1], x).prev_sample, rtol=0, atol=0)


@pytest.mark.parametrize("variance_type", VARIANCE_TYPES)
def test_guided_learned_variance(variance_type):
    """CFG with a learned variance: the prediction channels combined, the variance channels the conditional
    output's (as diffusers' DeepFloyd IF pipeline combines them), against diffusers on that output."""
    ours, ref = pd.DDPMScheduler(variance_type=variance_type), diffusers.DDPMScheduler(variance_type=variance_type)
    for s in (ours, ref):
        s.set_timesteps(10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    t = ours.timesteps[2]
    cond = model_output(x, t, ours)
    uncond = model_output(x + 0.05, t, ours)
    a = ours.step(cond, t, x, generator=torch.Generator().manual_seed(2), model_output_uncond=uncond,
                  guidance_scale=4.0)
    assert ours.last_fallback_reason is None
    c = SHAPE[1]
    combined = torch.cat([uncond[:, :c] + 4.0 * (cond[:, :c] - uncond[:, :c]), cond[:, c:]], 1)
    b = ref.step(combined, t, x, generator=torch.Generator().manual_seed(2))
    assert rel_l2(a.prev_sample, b.prev_sample) < 1e-6


def test_compiled_learned_range_guided_loop_is_one_graph():
    """``torch.compile(fullgraph=True)``: a learned_range loop with classifier-free guidance traces as one graph (one
    fused_step per step) and equals the eager loop (both draw from the global RNG after the same seed)."""
    from test_compile import CountingBackend

    def loop(sched):
        def go(x):
            for t in sched.timesteps:
                cond = model_output(x, t, sched)
                uncond = model_output(x + 0.05, t, sched)
                x = sched.step(cond, t, x, model_output_uncond=uncond, guidance_scale=2.0).prev_sample
            return x
        return go

    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = pd.DDPMScheduler(variance_type="learned_range")
        eager.set_timesteps(6)
        torch.manual_seed(3)
        expected = loop(eager)(x)
        torch._dynamo.reset()
        backend = CountingBackend()
        sched = pd.DDPMScheduler(variance_type="learned_range")
        sched.set_timesteps(6)
        torch.manual_seed(3)
        got = torch.compile(loop(sched), backend=backend, fullgraph=True)(x)
    assert sched.last_fallback_reason is None
    assert backend.graphs == 1
    assert backend.ops.count("pydiff::fused_step") == 6, backend.ops
    assert rel_l2(got, expected) < 1e-6
