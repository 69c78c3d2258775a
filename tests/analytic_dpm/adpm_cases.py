"""Shared Gaussian problems for the Analytic-DPM tests: data x_0 ~ N(mu, s^2) per element, the exact models."""
import torch

from pydiff.testing import analytic_dpm as oracle
from pydiff.testing.gaussian import make_data

SHAPE = (4, 2, 3, 3)
MU, S = make_data(SHAPE, seed=0, mu_range=(-0.8, 0.8), s_range=(0.2, 1.0))
_BETAS = {}


def betas(name, N):
    if (name, N) not in _BETAS:
        _BETAS[name, N] = oracle.named_betas(name, N)
    return _BETAS[name, N]


def problem(name, N, rescale=False, shift1=False):
    """``(betas, eps_model, d_model, exact ms_eps)``."""
    b = betas(name, N)
    eps_model = oracle.gaussian_eps_model(b, MU, S, rescale, shift1)
    return b, eps_model, oracle.gaussian_x0_model(b, MU, S, rescale, shift1), oracle.gaussian_ms_eps(b, S)


def x_init(seed, dtype=torch.float64, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def max_rel(a, b):
    """max |a - b| / max |b| (a worst-element relative error)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def same_noise(fn, seed=1234):
    torch.manual_seed(seed)
    return fn()
