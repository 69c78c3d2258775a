"""Classifier guidance at any scale lands in the requested component at the rate of the guided sampler's exact law.

For scales other than 0 and 1 the samplers do not sample the tilt ``p(x) p(y|x)^g`` (test_guided_guidance_rate.py),
so the oracle here is the law of the sampler itself: on the symmetric two-component mixture the first coordinate
``u`` runs a one-dimensional Markov chain (``pydiff.testing.guided.GuidedChain`` derives why), whose final law
is computed in float64 from the formulas, without pydiff: Alg. 1 by propagating the density of ``u`` on a grid
(quadrature of the Gaussian transition), Alg. 2 by pushing a grid of ``u_T`` through the deterministic map
``Phi`` and taking the N(0, 1) mass of ``{Phi > 0}``. The oracle runs on the sampler's own kept timesteps, so no
discretization bias is left: the sampled rate must be within 4 standard errors ``sqrt(rate (1 - rate)/n)`` over
n = 20 000 draws in one batch.

Data: means ``(-+1/4, 0)``, ``s = 1/2`` (more overlap than the guidance-rate test's ``-+1/2``, which puts Alg. 2 at
g = 3 at 0.99999, where 4 standard errors of 20 000 draws could not see a change of 1e-3). Exact rates (linear
schedule of 1000 steps; Alg. 1 on ``"100"``, Alg. 2 on ``"ddim50"``) against the tilt's, ``guided_rate``:

    g      tilt     Alg. 1 small   Alg. 1 large   Alg. 2
    0.5    0.6042   0.5876         0.5953         0.6016
    1      0.6915   0.6712         0.6854         0.7010
    2      0.8180   0.8121         0.8325         0.8656
    3      0.8953   0.9071         0.9247         0.9593

(the g = 1 columns differ from the tilt by the discretization bias of these coarse spacings). The grid error of
the oracle is below 4e-6 at these spacings (halving the grid spacing moves the rate by less than that).
"""
import numpy as np
import pytest
import torch

import pydiff.guided as pg
from pydiff.testing.guided import (GuidedChain, Mixture, MixtureClassifier, MixtureModel, beta_schedule,
                                   guided_chain_rate, guided_rate, spacing)

N = 20_000
DELTA = 0.5
MIX = Mixture(torch.tensor([-DELTA / 2, 0.0]), torch.tensor([DELTA / 2, 0.0]), 0.5)
BETAS = beta_schedule("linear", 1000)
ABAR = np.cumprod(1.0 - BETAS)
SPACING = {1: "100", 2: "ddim50"}


def diffusion(spec, var="FIXED_SMALL"):
    return pg.SpacedDiffusion(pg.space_timesteps(1000, spec), betas=BETAS, model_mean_type=pg.ModelMeanType.EPSILON,
                              model_var_type=getattr(pg.ModelVarType, var), loss_type=pg.LossType.MSE)


def sampled_rate(alg, scale, var="FIXED_SMALL", seed=0):
    d = diffusion(SPACING[alg], var)
    uncond = MixtureModel(MIX, ABAR)
    torch.manual_seed(seed)
    loop = d.p_sample_loop if alg == 1 else d.ddim_sample_loop
    x = loop(lambda x, t, y=None: uncond(x, t), (N, 2), clip_denoised=False,
             cond_fn=MixtureClassifier(MIX, ABAR, scale), model_kwargs={"y": torch.ones(N, dtype=torch.long)})
    return (x[:, 0] > 0).double().mean().item()


@pytest.mark.parametrize("alg,var", [(1, "FIXED_SMALL"), (1, "FIXED_LARGE"), (2, "FIXED_SMALL")])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, 3.0])
def test_guided_rate_matches_chain_law(alg, var, scale):
    want = guided_chain_rate(alg, scale, BETAS, spacing(1000, SPACING[alg]), delta=DELTA, var_type=var.lower())
    se = (want * (1 - want) / N) ** 0.5
    got = sampled_rate(alg, scale, var)
    assert abs(got - want) < 4 * se, (got, want, se)


def test_chain_law_is_not_the_tilt():
    """The test above can tell the two laws apart: at g = 3 the chain's rate is more than 4 SE from the tilt's."""
    tilt = guided_rate(DELTA, 0.5, 3.0)
    for alg in (1, 2):
        want = guided_chain_rate(alg, 3.0, BETAS, spacing(1000, SPACING[alg]), delta=DELTA)
        assert abs(want - tilt) > 4 * (want * (1 - want) / N) ** 0.5, (alg, want, tilt)


# ---- the oracle

def test_one_dimensional_reduction():
    """The exact 2-D eps and classifier gradient split as GuidedChain says: the u parts are its 1-D formulas (and
    ignore w), the w part of eps is sqrt(1 - abar) w / v, the gradient has no w part."""
    chain = GuidedChain(BETAS, range(1000), 1.0, delta=DELTA)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 2, generator=g, dtype=torch.float64) * 3
    for i in (0, 10, 300, 999):
        a = torch.full((500,), ABAR[i], dtype=torch.float64)
        eps, grad = MIX.eps(x, a), MIX.grad_log_posterior(x, a, torch.ones(500, dtype=torch.long))
        v = ABAR[i] * 0.25 + 1 - ABAR[i]
        np.testing.assert_allclose(eps[:, 0].numpy(), chain.eps(x[:, 0].numpy(), i), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(eps[:, 1].numpy(), np.sqrt(1 - ABAR[i]) * x[:, 1].numpy() / v, rtol=1e-12)
        np.testing.assert_allclose(grad[:, 0].numpy(), chain.grad(x[:, 0].numpy(), i), rtol=1e-12, atol=1e-12)
        assert torch.all(grad[:, 1] == 0)


@pytest.mark.parametrize("var", ["FIXED_SMALL", "FIXED_LARGE"])
def test_ancestral_step_is_the_chain_step(var):
    """One guided ancestral step of pydiff on float64 input, any second coordinate: its u mean is the chain's mu(u)
    and its variance the chain's Sigma, at the first, a middle and the last step."""
    d = diffusion(SPACING[1], var)
    chain = GuidedChain(BETAS, spacing(1000, SPACING[1]), 2.0, delta=DELTA, var_type=var.lower())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64) * 2
    kw = {"y": torch.ones(300, dtype=torch.long)}
    model = MixtureModel(MIX, ABAR)
    for i in (99, 40, 1, 0):
        t = torch.full((300,), i, dtype=torch.long)
        out = d.p_mean_variance(lambda x, t, y=None: model(x, t), x, t, clip_denoised=False, model_kwargs=kw)
        mean = d.condition_mean(MixtureClassifier(MIX, ABAR, 2.0), out, x, t, model_kwargs=kw)
        # condition_mean and the fixed variances are float32, as in guided-diffusion
        np.testing.assert_allclose(mean[:, 0].numpy(), chain.ancestral_mean(x[:, 0].numpy(), i), rtol=1e-6,
                                   atol=1e-6)
        np.testing.assert_allclose(out["variance"][:, 0].numpy(), chain.sigma2[i], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_ddim_loop_is_the_chain_map(scale):
    """pydiff's guided DDIM loop in float64 from a grid of u_T (random second coordinate) ends at Phi(u_T), and
    Phi is increasing (so {Phi > 0} is a half-line)."""
    u = torch.linspace(-4, 4, 401, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    xT = torch.stack([u, 3 * torch.randn(401, generator=g, dtype=torch.float64)], 1)
    model = MixtureModel(MIX, ABAR)
    x = diffusion(SPACING[2]).ddim_sample_loop(lambda x, t, y=None: model(x, t), (401, 2), noise=xT,
                                               clip_denoised=False, cond_fn=MixtureClassifier(MIX, ABAR, scale),
                                               model_kwargs={"y": torch.ones(401, dtype=torch.long)})
    phi = GuidedChain(BETAS, spacing(1000, SPACING[2]), scale, delta=DELTA).ddim_map(u.numpy())
    np.testing.assert_allclose(x[:, 0].numpy(), phi, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(phi) > 0)


@pytest.mark.parametrize("alg", [1, 2])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_chain_oracle_grid_converges(alg, scale):
    ts = spacing(1000, SPACING[alg])
    if alg == 1:
        coarse, fine = ({"h": h} for h in (0.002, 0.001))
    else:
        coarse, fine = ({"n": n} for n in (20001, 40001))
    a = guided_chain_rate(alg, scale, BETAS, ts, delta=DELTA, **coarse)
    b = guided_chain_rate(alg, scale, BETAS, ts, delta=DELTA, **fine)
    assert abs(a - b) < 1e-4, (a, b)


def test_chain_oracle_at_scales_0_and_1():
    """Without guidance the chain is symmetric (rate 1/2); at g = 1 the chain samples the tilt up to the
    discretization bias, which shrinks with the number of steps (Alg. 1: -0.0121 at 250 steps, -0.0062 at 500,
    -0.0032 at 1000; Alg. 2: +0.0020 at 250, -0.00004 at 1000)."""
    tilt = guided_rate(1.0, 0.5, 1.0)
    for alg in (1, 2):
        assert guided_chain_rate(alg, 0.0, BETAS, range(1000)) == pytest.approx(0.5, abs=1e-8)
    bias = [guided_chain_rate(1, 1.0, BETAS, spacing(1000, str(k))) - tilt for k in (250, 500, 1000)]
    assert bias[0] < bias[1] < bias[2] < 0 and bias[2] > -0.005, bias
    assert abs(guided_chain_rate(2, 1.0, BETAS, range(1000)) - tilt) < 2e-4


def test_chain_oracle_bad_input():
    with pytest.raises(ValueError, match="alg"):
        guided_chain_rate(3, 1.0, BETAS, range(10))
    with pytest.raises(ValueError, match="var_type"):
        GuidedChain(BETAS, range(10), 1.0, var_type="learned")
    with pytest.raises(ValueError, match="timesteps"):
        GuidedChain(BETAS, [5], 1.0)
    with pytest.raises(ValueError, match="betas"):
        GuidedChain(np.array([0.1, 1.5]), [0, 1], 1.0)
