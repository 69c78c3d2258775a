"""Schedules and timestep grids against independent sources: diffusers' own arrays, closed forms and the
DPM-Solver transcription (pydiff.testing.dpm_solver)."""
import math

import numpy as np
import pytest
import diffusers

from pydiff.schedules import (DiscreteSchedule, PiecewiseVP, VEGeometric, VPCosine, VPLinear, continuous_timesteps,
                              diffusers_timesteps, make_betas, vp_from_ve_sigma)
from pydiff.testing import dpm_solver as R


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n_train,steps", [(1000, 1), (1000, 7), (1000, 10), (1000, 50), (1000, 999), (500, 33)])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers(spacing, n_train, steps, offset):
    ref = diffusers.DDIMScheduler(num_train_timesteps=n_train, timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    np.testing.assert_array_equal(diffusers_timesteps(n_train, steps, spacing, offset), ref.timesteps.numpy())


@pytest.mark.parametrize("schedule,kw", [("linear", {}), ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
                                         ("squaredcos_cap_v2", {})])
def test_betas_match_diffusers(schedule, kw):
    ref = diffusers.DDPMScheduler(beta_schedule=schedule, **kw).betas.double().numpy()
    ours = make_betas(schedule, 1000, **kw)
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-9)  # diffusers holds them in float32


def test_discrete_schedule_quantities():
    sched = DiscreteSchedule.from_betas(make_betas("linear"))
    n = np.arange(1000)
    a, s, lam = sched.alpha(n), sched.sigma(n), sched.lambda_(n)
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, rtol=1e-14)
    np.testing.assert_allclose(lam, np.log(a / s), rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(lam) < 0)
    with pytest.raises(ValueError, match="betas must lie"):
        DiscreteSchedule.from_betas([0.1, 1.5])


def test_vp_linear_matches_sde_marginals():
    # Song et al. 2021, eq. 33: mean coefficient exp(-t^2 (b1-b0)/4 - t b0/2), variance 1 - mean^2
    s = VPLinear(0.1, 20.0)
    t = np.linspace(1e-4, 1.0, 11)
    mean = np.exp(-0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1)
    np.testing.assert_allclose(s.alpha(t), mean, rtol=1e-14)
    np.testing.assert_allclose(s.sigma(t), np.sqrt(1 - mean ** 2), rtol=1e-12)


@pytest.mark.parametrize("sched", [VPLinear(), VPCosine(), VEGeometric()], ids=lambda s: type(s).__name__)
def test_inverse_lambda_round_trips(sched):
    t = np.linspace(1e-3, sched.T * 0.999, 101)
    np.testing.assert_allclose(sched.inverse_lambda(sched.lambda_(t)), t, rtol=1e-9, atol=1e-12)


def test_cosine_schedule_closed_form():
    s = VPCosine()
    t = np.linspace(0.0, s.T, 7)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2)  # noqa: E731
    np.testing.assert_allclose(s.alpha(t), [f(u) / f(0.0) for u in t], rtol=1e-13)


def test_ve_sigma_is_geometric_and_finite():
    s = VEGeometric(0.01, 348.0)
    t = np.linspace(0, 1, 5)
    np.testing.assert_allclose(s.sigma(t), 0.01 * (348.0 / 0.01) ** t, rtol=1e-12)
    assert np.isfinite(VEGeometric(1e-5, 1e5).sigma(np.array([0.0, 1.0]))).all()


@pytest.mark.parametrize("skip", ["time_uniform", "logSNR", "time_quadratic"])
def test_continuous_grids(skip):
    s = VPLinear()
    ts = continuous_timesteps(s, 10, 1.0, 1e-3, skip)
    assert ts.shape == (11,) and abs(ts[0] - 1.0) < 1e-12 and abs(ts[-1] - 1e-3) < 1e-12
    assert np.all(np.diff(ts) < 0)
    if skip == "logSNR":
        np.testing.assert_allclose(np.diff(s.lambda_(ts)), np.diff(s.lambda_(ts))[0], rtol=1e-9)
    if skip == "time_quadratic":
        np.testing.assert_allclose(np.diff(np.sqrt(ts)), np.diff(np.sqrt(ts))[0], rtol=1e-9)


# ------------------------------------------------------------------------------- the authors' conventions


@pytest.mark.parametrize("table", ["linear", "cosine"])
def test_clipped_continuous_discrete_schedule_matches_the_transcription(table):
    """Clipping at lambda < -5.1 and the piecewise-linear log alpha in t against pydiff.testing's literal form."""
    if table == "linear":
        betas = make_betas("linear")
        ours, ref = DiscreteSchedule.from_betas(betas), R.DiscreteSchedule(betas=betas)
    else:
        ac = np.cumprod(1.0 - make_betas("squaredcos_cap_v2"))  # alpha ~ 0 at the end: clipping engages
        ours, ref = DiscreteSchedule.from_alphas_cumprod(ac), R.DiscreteSchedule(alphas_cumprod=ac)
    vp = ours.clip_lambda().continuous()
    assert isinstance(vp, PiecewiseVP) and vp.N == ref.N
    assert table == "linear" or vp.N < 1000
    t = np.linspace(0.5 / ref.N, 1.0, 37)
    np.testing.assert_allclose(vp.log_alpha(t), [ref.log_alpha(v) for v in t], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(vp.lambda_(t), [ref.lam(v) for v in t], rtol=1e-12, atol=1e-12)
    lam = vp.lambda_(t)
    np.testing.assert_allclose(vp.inverse_lambda(lam), [ref.inverse_lam(v) for v in lam], rtol=1e-10, atol=1e-12)


def test_clip_lambda_rejects_a_schedule_that_is_all_noise():
    with pytest.raises(ValueError, match="lambda=-5.1"):
        DiscreteSchedule.from_alphas_cumprod(np.full(10, 1e-6)).clip_lambda()


def test_vp_from_ve_sigma_rounds_like_diffusers_in_float32():
    """diffusers' float32 alpha_t, sigma_t from its sigmas, bit for bit; float64 arrays give the exact values."""
    ref = diffusers.DPMSolverMultistepScheduler()
    ref.set_timesteps(20)
    sig = ref.sigmas[:-1]
    alpha, sigma, lam = vp_from_ve_sigma(sig)
    a_ref, s_ref = ref._sigma_to_alpha_sigma_t(sig)
    assert alpha.dtype == sig.dtype and bool((alpha == a_ref).all()) and bool((sigma == s_ref).all())
    assert bool((lam == (a_ref.log() - s_ref.log())).all())
    a64, s64, _ = vp_from_ve_sigma(sig.double().numpy())
    np.testing.assert_allclose(a64 ** 2 + s64 ** 2, 1.0, rtol=1e-15)
