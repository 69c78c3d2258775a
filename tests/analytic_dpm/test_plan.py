"""The plan's optimal variance and sigma cap, checked against independent derivations (not the transcription)."""
import math

import numpy as np
import pytest

from pydiff.ops import COL
from pydiff.plans import analytic_dpm as plan
from pydiff.testing import analytic_dpm as oracle


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("s_data", [0.1, 0.5, 1.0])
def test_ddpm_optimal_variance_is_the_true_reverse_variance(name, s_data):
    """Gaussian data N(mu, s^2): (x_s, x_r) is jointly Gaussian with Var(x_n) = abar_n s^2 + bbar_n and
    Cov(x_s, x_r) = sqrt(abar_s abar_r) s^2 + sqrt(a_{r|s}) bbar_s (x_r = sqrt(a_{r|s}) x_s + noise), so
    Var[x_s | x_r] = Var(x_s) - Cov^2/Var(x_r): Theorem 1 with the exact ms_eps must give exactly that."""
    N = 200
    betas = oracle.named_betas(name, N)
    ms = oracle.gaussian_ms_eps(betas, [s_data])
    ab = np.cumprod(1 - betas)
    bb = 1 - ab
    for s, r in [(1, 2), (1, 50), (10, 11), (30, 90), (100, 200), (199, 200), (5, 200)]:
        a_rs = ab[r] / ab[s]
        var_s, var_r = ab[s] * s_data ** 2 + bb[s], ab[r] * s_data ** 2 + bb[r]
        cov = math.sqrt(ab[s] * ab[r]) * s_data ** 2 + math.sqrt(a_rs) * bb[s]
        want = var_s - cov ** 2 / var_r
        got = plan.optimal_variance("ddpm", s, r, betas, ms)
        # 1 - ms_eps[r] is all the variance needs, and at r = N of the cosine betas (abar_N ~ 6e-9) it is ~6e-10: a
        # float64 ms_eps holds it to ~2e-7 relative (measured worst 7.4e-9 on the result); elsewhere ~1e-12
        assert math.isclose(got, want, rel_tol=1e-6 if r == N else 1e-10), (s, r, got, want)


def test_optimal_variance_lies_between_the_bounds():
    """The paper's bounds: beta-tilde <= sigma*^2 <= beta-tilde + abar_s b_{r|s}^2 / bbar_r^2 (cov <= 1)."""
    N = 100
    betas = oracle.named_betas("cosine", N)
    ms = oracle.gaussian_ms_eps(betas, np.linspace(0.1, 1, 7))
    ab = np.cumprod(1 - betas)
    bb = 1 - ab
    for s in range(1, N):
        for r in (s + 1, min(N, s + 17), N):
            b_rs = 1 - ab[r] / ab[s]
            lo = b_rs * bb[s] / bb[r]
            v = plan.optimal_variance("ddpm", s, r, betas, ms)
            assert lo * (1 - 1e-12) <= v <= lo + ab[s] * b_rs ** 2 / bb[r] ** 2 + 1e-15


@pytest.mark.parametrize("sampler", ["ddpm_ms_eps", "ddim_ms_eps", "ddpm_naive"])
@pytest.mark.parametrize("idx", [0, 1, 2, 5, -1])
def test_sigma_cap_acts_on_the_steps_below_tau_idx(sampler, idx):
    N, K, pixel = 100, 10, 1.5
    betas = oracle.named_betas("linear", N)
    ms = oracle.gaussian_ms_eps(betas, [0.5])
    kw = dict(steps_type="power2", sample_steps=K, ms_eps=ms, clip_pixel=pixel)
    free = plan.sampler_plan(sampler, betas, clip_sigma_idx=0, **kw)
    capped = plan.sampler_plan(sampler, betas, clip_sigma_idx=idx, **kw)
    cap = (pixel * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    bound = free.steps[idx]
    assert free.steps == capped.steps
    for (s, r), v0, v1 in zip(free.pairs, free.sigma2, capped.sigma2):
        if s == 0:
            assert v0 == v1 == 0.0  # the last step returns the mean
        elif s < bound:
            assert v1 == min(v0, cap)
        else:
            assert v1 == v0
    assert np.allclose(capped.rows[:, COL["C"]], np.sqrt(capped.sigma2))
    if idx not in (0,):
        assert any(v1 < v0 for v0, v1 in zip(free.sigma2, capped.sigma2))  # the cap engaged somewhere


def test_rows_hold_the_x0_clamp_and_the_mean():
    betas = oracle.named_betas("cosine", 50)
    p = plan.sampler_plan("ddpm_ms_eps", betas, sample_steps=5, ms_eps=oracle.gaussian_ms_eps(betas, [0.5]))
    assert (p.rows[:, COL["CLIP"]] == 1).all() and p.noisy == [True] * 4 + [False]
    naive = plan.sampler_plan("ddpm_naive", betas, sample_steps=5, clip_denoise=False)
    assert np.isinf(naive.rows[:, COL["CLIP"]]).all()
    # the DDPM posterior-mean weights of x0 and x sum to the weights of a noiseless x_r = sqrt(a_{r|s}) x_s:
    # b_{r|s} sqrt(abar_s)/bbar_r + sqrt(a_{r|s}) bbar_s/bbar_r sqrt(abar_r) = sqrt(abar_s)
    ab = np.cumprod(1 - betas)
    for (s, r), row in zip(p.pairs, p.rows):
        assert math.isclose(row[COL["B0"]] + row[COL["A"]] * math.sqrt(ab[r]), math.sqrt(ab[s]), rel_tol=1e-12)
