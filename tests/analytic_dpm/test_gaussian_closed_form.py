"""The Gaussian closed forms the oracle rests on, checked by Monte Carlo (not by the code they test).

x_0 ~ N(mu, s^2), x_n = alpha x_0 + sigma eps: (eps, x_n) is jointly Gaussian with Cov(eps, x_n) = sigma and
Var(x_n) = alpha^2 s^2 + sigma^2, so E[eps | x_n] is the linear regression sigma (x_n - alpha mu)/(alpha^2 s^2 +
sigma^2); its mean square is sigma^2/(alpha^2 s^2 + sigma^2), and Var[x_0 | x_n] = s^2 sigma^2/(alpha^2 s^2 + sigma^2)
= (sigma^2/alpha^2)(1 - ms_eps): the covariance the optimal variance uses is exact for Gaussian data.
"""
import numpy as np
import pytest
import torch

from pydiff.testing import analytic_dpm as oracle
from pydiff.testing.gaussian import eps_pred

M = 400_000


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 30, 70, 100])
def test_eps_model_is_the_conditional_mean(n):
    betas = oracle.named_betas("cosine", 100)
    a2 = np.cumprod(1 - betas)[n]
    alpha, sigma, mu, s = a2 ** 0.5, (1 - a2) ** 0.5, 0.3, 0.6
    g = torch.Generator().manual_seed(n)
    x0 = mu + s * torch.randn(M, generator=g, dtype=torch.float64)
    eps = torch.randn(M, generator=g, dtype=torch.float64)
    xn = alpha * x0 + sigma * eps
    # least squares of eps on (1, x_n) is the conditional mean for jointly Gaussian variables
    X = torch.stack([torch.ones_like(xn), xn], 1)
    coef = torch.linalg.lstsq(X, eps[:, None]).solution[:, 0]
    f = eps_pred(xn, alpha, sigma, mu, s)
    resid = eps - f
    se = (resid.std() / xn.std() / M ** 0.5).item()  # standard error of the slope
    slope = sigma / (alpha ** 2 * s ** 2 + sigma ** 2)
    assert abs(coef[1].item() - slope) < 5 * se
    # the residual is uncorrelated with any function of x_n (checked against x_n^2 and sin(x_n))
    for h in (xn ** 2, torch.sin(xn)):
        c = (resid * (h - h.mean())).mean() / (resid.std() * h.std())
        assert abs(c.item()) < 5 / M ** 0.5
    # the mean square of the prediction and the posterior variance of x_0
    ms = oracle.gaussian_ms_eps(betas, torch.tensor([s]))[n]
    assert abs(f.pow(2).mean().item() - ms) < 5 * f.pow(2).std().item() / M ** 0.5
    x0_hat = (xn - sigma * f) / alpha
    post = (x0 - x0_hat).pow(2)
    want = sigma ** 2 / alpha ** 2 * (1 - ms)
    assert abs(post.mean().item() - want) < 5 * post.std().item() / M ** 0.5
