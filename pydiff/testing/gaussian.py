"""Closed-form Gaussian data: exact model predictions and the exact probability-flow ODE solution.

Data ``x0 ~ N(mu, s^2)`` elementwise (``mu``, ``s`` scalars or tensors broadcastable to the sample). Under a
VP forward process ``x_t = alpha_t x0 + sigma_t eps`` the marginal is ``N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2)``,
so every prediction a network could learn is known exactly (``v = alpha eps - sigma x0``, score ``-eps/sigma``)::

    eps(x, t)  = sigma_t (x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2)
    x0(x, t)   = mu + alpha_t s^2 (x - alpha_t mu) / (alpha_t^2 s^2 + sigma_t^2)

and the probability-flow ODE keeps ``(x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2)`` constant.

Every function takes ``alpha``/``sigma`` as numbers or tensors (e.g. shape ``(B, 1, ..., 1)``; ``bcast`` makes
that from ``(B,)``), so the helper does not depend on any schedule implementation.
"""
from __future__ import annotations

import torch


def bcast(v, x):
    """A ``(B,)`` tensor as ``(B, 1, ..., 1)`` matching ``x``; numbers and 0-d tensors pass through."""
    if isinstance(v, torch.Tensor) and v.dim() == 1 and x.dim() > 1:
        return v.reshape((-1,) + (1,) * (x.dim() - 1))
    return v


def _var(alpha, sigma, s):
    return alpha * alpha * s * s + sigma * sigma


def eps_pred(x, alpha, sigma, mu, s):
    """The exact noise prediction ``E[eps | x_t = x]``."""
    return sigma * (x - alpha * mu) / _var(alpha, sigma, s)


def x0_pred(x, alpha, sigma, mu, s):
    """The exact data prediction ``E[x0 | x_t = x]``."""
    return mu + alpha * s * s * (x - alpha * mu) / _var(alpha, sigma, s)


def v_pred(x, alpha, sigma, mu, s):
    """The exact velocity prediction ``alpha eps - sigma x0``."""
    return alpha * eps_pred(x, alpha, sigma, mu, s) - sigma * x0_pred(x, alpha, sigma, mu, s)


def score_pred(x, alpha, sigma, mu, s):
    """The exact score ``grad log p_t(x) = -(x - alpha mu) / (alpha^2 s^2 + sigma^2)``."""
    return -(x - alpha * mu) / _var(alpha, sigma, s)


PREDICTIONS = {"noise": eps_pred, "x_start": x0_pred, "v": v_pred, "score": score_pred}


def ode_solution(x_from, alpha_from, sigma_from, alpha_to, sigma_to, mu, s):
    """The exact probability-flow ODE solution at the target time, started from ``x_from``."""
    z = (x_from - alpha_from * mu) / torch.sqrt(torch.as_tensor(_var(alpha_from, sigma_from, s)))
    return alpha_to * mu + z * torch.sqrt(torch.as_tensor(_var(alpha_to, sigma_to, s)))


def make_data(shape, seed=0, dtype=torch.float64, mu_range=(-1.0, 1.0), s_range=(0.1, 1.0)):
    """Per-element ``mu`` and ``s`` (shape ``shape[1:]``) spread over the given ranges, deterministic."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape[1:]:
        n *= d
    mu = torch.linspace(*mu_range, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
    s = torch.linspace(*s_range, n, dtype=torch.float64)[torch.randperm(n, generator=g)]
    return mu.reshape(shape[1:]).to(dtype), s.reshape(shape[1:]).to(dtype)


def vp_ode_problem(noise_schedule, shape, t_end, seed=0):
    """A sampling problem with a known answer, on a DPM-Solver ``NoiseScheduleVP``: Gaussian data
    (``make_data(shape, seed)``), ``x_T ~ N(0, I)`` (generator seed ``seed + 1``), the exact noise prediction as the
    model, and the exact probability-flow ODE solution at ``t_end`` (``ode_solution``), all in float64.

    Returns ``(model_fn, x_T, exact)``; ``model_fn(x, t)`` takes continuous times as DPM_Solver gives them.
    """
    mu, s = make_data(shape, seed=seed)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)

    def scalars(t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return noise_schedule.marginal_alpha(t), noise_schedule.marginal_std(t)

    def model_fn(x, t):
        a, sg = scalars(t)
        return eps_pred(x, bcast(a, x), bcast(sg, x), mu, s)

    exact = ode_solution(x_T, *scalars(noise_schedule.T), *scalars(t_end), mu, s)
    return model_fn, x_T, exact
