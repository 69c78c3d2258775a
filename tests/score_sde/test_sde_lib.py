"""The SDE classes against the float64 formulas of the transcription (pydiff.testing.score_sde), and the
score functions against the model wrappers' definition."""
import math

import numpy as np
import pytest
import torch

from pydiff.score_sde import VESDE, VPSDE, get_model_fn, get_score_fn, subVPSDE
from pydiff.testing import score_sde as oracle
from sde_cases import KINDS, face_sde, rel_l2, toy

N = 50


def t_and_x(B=5):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, generator=g) * 0.98 + 0.01, torch.randn(B, 2, 3, 3, generator=g)


@pytest.mark.parametrize("kind", KINDS)
def test_sde_and_marginals(kind):
    sde, osde = face_sde(kind, N), oracle.OracleSDE(kind, N=N)
    t, x = t_and_x()
    drift, diffusion = sde.sde(x, t)
    rd, rg = osde.sde(x.double(), t.double())
    assert drift.dtype == diffusion.dtype == torch.float32 and diffusion.shape == (5,)
    assert rel_l2(drift, rd) < 1e-6 if kind != "ve" else torch.all(drift == 0)
    assert rel_l2(diffusion, rg) < 1e-6
    mean, std = sde.marginal_prob(x, t)
    m = torch.exp(osde.log_mean(t.double())) if kind != "ve" else torch.ones(5, dtype=torch.float64)
    assert rel_l2(mean, oracle.bv(m, x) * x.double()) < 1e-6
    assert rel_l2(std, osde.std(t.double())) < 1e-6
    assert sde.T == 1 and sde.N == N


@pytest.mark.parametrize("kind", KINDS)
def test_marginal_variance_solves_the_sde(kind):
    """d var/dt = 2 f var + g^2 for the marginal of x0 = 0 (the moment ODE of a linear SDE), by central
    differences: ties sde() to marginal_prob() without restating either."""
    sde = face_sde(kind, N)
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    h = 1e-5
    var = lambda tt: sde._schedule.marginal_std(tt.numpy()) ** 2  # noqa: E731
    dvar = (var(t + h) - var(t - h)) / (2 * h)
    f = sde._schedule.drift_coef(t.numpy())
    g = sde._schedule.diffusion(t.numpy())
    np.testing.assert_allclose(dvar, 2 * f * var(t) + g * g, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_discretize_and_prior(kind):
    sde, osde = face_sde(kind, N), oracle.OracleSDE(kind, N=N)
    t, x = t_and_x()
    f, G = sde.discretize(x, t)
    rf, rG = osde.discretize(x.double(), t.double(), osde.index(t))
    assert rel_l2(f, rf) < 1e-5 and rel_l2(G, rG) < 1e-5
    torch.manual_seed(0)
    z = sde.prior_sampling((4, 3))
    torch.manual_seed(0)
    assert torch.equal(z, torch.randn(4, 3) * (50 if kind == "ve" else 1)) and z.dtype == torch.float32
    var = 50.0 ** 2 if kind == "ve" else 1.0
    logp = torch.distributions.Normal(0.0, math.sqrt(var)).log_prob(x.double()).sum(dim=(1, 2, 3))
    assert rel_l2(sde.prior_logp(x), logp) < 1e-6


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pf", [False, True])
def test_reverse(kind, pf):
    sde = face_sde(kind, N)
    t, x = t_and_x()
    score = lambda xx, tt: -xx * 0.5  # noqa: E731
    rsde = sde.reverse(score, pf)
    assert isinstance(rsde, type(sde)) and rsde.N == N and rsde.T == 1 and rsde.probability_flow == pf
    drift, diffusion = rsde.sde(x, t)
    fd, fg = sde.sde(x, t)
    lam = 0.5 if pf else 1.0
    torch.testing.assert_close(drift, fd - oracle.bv(fg, x) ** 2 * score(x, t) * lam)
    assert isinstance(diffusion, torch.Tensor)
    torch.testing.assert_close(diffusion, torch.zeros_like(fg) if pf else fg)
    rf, rG = rsde.discretize(x, t)
    f, G = sde.discretize(x, t)
    torch.testing.assert_close(rf, f - oracle.bv(G, x) ** 2 * score(x, t) * lam)
    torch.testing.assert_close(rG, torch.zeros_like(G) if pf else G)


def test_class_hierarchy_and_tables():
    assert not isinstance(subVPSDE(), VPSDE) and not isinstance(VPSDE(), subVPSDE)
    vp = VPSDE(N=1000)
    betas = np.linspace(0.1 / 1000, 20 / 1000, 1000)
    np.testing.assert_allclose(vp.discrete_betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(vp.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-6)
    np.testing.assert_allclose(vp.sqrt_1m_alphas_cumprod.numpy(), np.sqrt(1 - np.cumprod(1 - betas)), rtol=1e-6)
    np.testing.assert_allclose(subVPSDE(N=1000).alphas.numpy(), 1 - betas, rtol=1e-6)
    ve = VESDE(N=10)
    np.testing.assert_allclose(ve.discrete_sigmas.numpy(), np.geomspace(0.01, 50, 10), rtol=1e-6)
    assert vp.beta_0 == 0.1 and vp.beta_1 == 20 and ve.sigma_min == 0.01 and ve.sigma_max == 50


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("continuous", [True, False])
def test_score_fn(kind, continuous):
    sde, osde, model = toy(kind, N, continuous)
    t, x = t_and_x()
    s = get_score_fn(sde, model, continuous=continuous)(x, t)
    ref = oracle.score_fn(osde, model, x.double(), t.double(), t, continuous)
    assert rel_l2(s, ref) < 1e-5
    assert model.train_calls == 0
    get_score_fn(sde, model, train=True, continuous=continuous)(x, t)
    assert model.train_calls == 1


def test_model_fn_labels_reach_the_model():
    seen = []
    fn = get_model_fn(lambda x, labels: seen.append(labels) or x)
    x = torch.ones(2, 1)
    assert fn(x, torch.tensor([3, 4])) is x and seen[0].tolist() == [3, 4]
    sde = VESDE(N=11)
    get_score_fn(sde, lambda x, labels: seen.append(labels) or x)(x, torch.tensor([1.0, 0.3]))
    assert seen[-1].tolist() == [0, 7] and seen[-1].dtype == torch.int64  # round((1 - t)(N - 1))
