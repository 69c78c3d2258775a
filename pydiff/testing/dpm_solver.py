"""DPM-Solver and DPM-Solver++ written out literally in float64 (a test oracle; slow, simple, no fusing).

Notation (both papers): ``alpha_t``, ``sigma_t`` with ``alpha^2 + sigma^2 = 1``, half-logSNR
``lambda_t = log(alpha_t / sigma_t)``, step ``h = lambda_t - lambda_s``. The diffusion ODE, written with the
noise predictor ``eps`` (DPM-Solver) or the data predictor ``x0 = (x - sigma eps)/alpha`` (DPM-Solver++), has
the exact solutions

    x_t = (alpha_t/alpha_s) x_s - alpha_t  int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda
    x_t = (sigma_t/sigma_s) x_s + sigma_t  int_{lambda_s}^{lambda_t} e^{ lambda} x0(lambda)  dlambda

and each solver below replaces ``eps``/``x0`` by a low-order Taylor or finite-difference approximation and
integrates the exponential exactly. ``expm1`` is used wherever ``e^z - 1`` appears.

Schedules are evaluated with Python floats (``math``), model values are float64 tensors. The sampling
driver ``sample`` follows the step-selection rules of the authors' ``dpm_solver_pytorch.py`` (time grids,
"DPM-Solver-fast" order mix, multistep warm-up, ``lower_order_final`` for fewer than 10 steps,
``denoise_to_zero``, dynamic thresholding, the adaptive DPM-Solver-12/23).
"""
from __future__ import annotations

import bisect
import math

import torch

# =============================================================================== schedules


class Schedule:
    """``log_alpha(t)``; everything else follows from it. ``T`` and ``N`` as in the authors' class."""

    T = 1.0
    N = 1000

    def log_alpha(self, t):
        raise NotImplementedError

    def alpha(self, t):
        return math.exp(self.log_alpha(t))

    def sigma(self, t):
        return math.sqrt(1.0 - math.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        return self.log_alpha(t) - math.log(self.sigma(t))

    def inverse_lam(self, lam):
        raise NotImplementedError


def _linear_through(x, xs, ys):
    """Piecewise-linear interpolation through ``(xs, ys)`` (``xs`` increasing), extended linearly at both ends."""
    k = bisect.bisect_right(xs, x) - 1
    k = min(max(k, 0), len(xs) - 2)
    return ys[k] + (x - xs[k]) * (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])


class DiscreteSchedule(Schedule):
    """DDPM table ``alphas_cumprod[n]`` at ``t_n = (n + 1)/N``, ``log alpha`` linear in ``t`` in between.

    Trailing entries with ``lambda < -5.1`` are removed first (then ``N`` is the remaining length).
    """

    def __init__(self, betas=None, alphas_cumprod=None):
        if betas is not None:
            log_alphas, acc = [], 0.0
            for b in [float(v) for v in betas]:
                acc += 0.5 * math.log(1.0 - b)
                log_alphas.append(acc)
        else:
            log_alphas = [0.5 * math.log(float(a)) for a in alphas_cumprod]
        while log_alphas:
            la = log_alphas[-1]
            if la - 0.5 * math.log(1.0 - math.exp(2.0 * la)) < -5.1:
                log_alphas.pop()
            else:
                break
        self.N = len(log_alphas)
        self.ts = [(n + 1) / self.N for n in range(self.N)]
        self.log_alphas = log_alphas

    def log_alpha(self, t):
        return _linear_through(t, self.ts, self.log_alphas)

    def inverse_lam(self, lam):
        log_alpha = -0.5 * math.log1p(math.exp(-2.0 * lam))
        return _linear_through(log_alpha, self.log_alphas[::-1], self.ts[::-1])


class LinearSchedule(Schedule):
    """VP-SDE with ``beta(t) = beta_0 + t (beta_1 - beta_0)``: ``log alpha_t = -t^2 (b1 - b0)/4 - t b0/2``."""

    def __init__(self, beta_0=0.1, beta_1=20.0):
        self.b0, self.b1 = beta_0, beta_1

    def log_alpha(self, t):
        return -0.25 * t * t * (self.b1 - self.b0) - 0.5 * t * self.b0

    def inverse_lam(self, lam):
        # solve (b1 - b0)/4 t^2 + b0/2 t = -log alpha = log(1 + e^{-2 lam})/2 for t >= 0
        c = 0.5 * math.log1p(math.exp(-2.0 * lam))
        a, b = 0.25 * (self.b1 - self.b0), 0.5 * self.b0
        return 2.0 * c / (b + math.sqrt(b * b + 4.0 * a * c))


class CosineSchedule(Schedule):
    """``alpha_t = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2)``, ``s = 0.008``, ``T = 0.9946``."""

    T = 0.9946

    def __init__(self, s=0.008):
        self.s = s
        self.log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))

    def log_alpha(self, t):
        return math.log(math.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self.log_alpha_0

    def inverse_lam(self, lam):
        log_alpha = -0.5 * math.log1p(math.exp(-2.0 * lam))
        return math.acos(math.exp(log_alpha + self.log_alpha_0)) * 2.0 * (1.0 + self.s) / math.pi - self.s


# =============================================================================== model output conversions


def data_from_noise(x, eps, alpha, sigma):
    """``x0 = (x - sigma eps) / alpha``."""
    return (x - sigma * eps) / alpha


def dynamic_threshold(x0, ratio, floor):
    """Imagen's dynamic thresholding with the authors' bound: ``s = max(quantile(|x0_b|, ratio), floor)``,
    ``x0 <- clip(x0, -s, s) / s`` per sample ``b``."""
    B = x0.shape[0]
    q = torch.quantile(x0.abs().reshape(B, -1), ratio, dim=1)
    s = torch.clamp(q, min=floor).reshape((B,) + (1,) * (x0.dim() - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


# =============================================================================== update rules
# Each rule maps x at time s to x at time t. ``f(x, t)`` returns the converted model output (eps for
# DPM-Solver, x0 for DPM-Solver++); ``f_s`` is its value at (x, s).


def dpm_solver_1(sch, x, s, t, eps_s):
    """DPM-Solver-1 (= DDIM), arXiv:2206.00927 section 3.3:
    ``x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s``."""
    h = sch.lam(t) - sch.lam(s)
    return math.exp(sch.log_alpha(t) - sch.log_alpha(s)) * x - sch.sigma(t) * math.expm1(h) * eps_s


def dpm_solver_pp_1(sch, x, s, t, x0_s):
    """DPM-Solver++ first order (arXiv:2211.01095 section 4, the n = 0 case of its Taylor expansion):
    ``x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) x0_s``."""
    h = sch.lam(t) - sch.lam(s)
    return sch.sigma(t) / sch.sigma(s) * x - sch.alpha(t) * math.expm1(-h) * x0_s


def dpm_solver_2_singlestep(sch, x, s, t, f, eps_s, r1, solver_type):
    """Singlestep DPM-Solver-2, arXiv:2206.00927 Algorithm 1 (with a general r1, as in its appendix)::

        s1  = t_lambda(lambda_s + r1 h)
        u   = (alpha_s1/alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
        x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s - sigma_t/(2 r1) (e^h - 1) (eps(u, s1) - eps_s)

    ``'taylor'`` replaces the last coefficient by ``sigma_t/r1 ((e^h - 1)/h - 1)`` (the ``h^2 phi_2`` Taylor term).
    Returns ``(x_t, u, eps(u, s1))``.
    """
    lam_s, lam_t = sch.lam(s), sch.lam(t)
    h = lam_t - lam_s
    s1 = sch.inverse_lam(lam_s + r1 * h)
    u = math.exp(sch.log_alpha(s1) - sch.log_alpha(s)) * x - sch.sigma(s1) * math.expm1(r1 * h) * eps_s
    eps_s1 = f(u, s1)
    if solver_type == "dpmsolver":
        corr = sch.sigma(t) / (2.0 * r1) * math.expm1(h) * (eps_s1 - eps_s)
    else:
        corr = sch.sigma(t) / r1 * (math.expm1(h) / h - 1.0) * (eps_s1 - eps_s)
    x_t = math.exp(sch.log_alpha(t) - sch.log_alpha(s)) * x - sch.sigma(t) * math.expm1(h) * eps_s - corr
    return x_t, u, eps_s1


def dpm_solver_pp_2_singlestep(sch, x, s, t, f, x0_s, r1, solver_type):
    """DPM-Solver++(2S), arXiv:2211.01095 Algorithm 1::

        u   = (sigma_s1/sigma_s) x - alpha_s1 (e^{-r1 h} - 1) x0_s
        D   = (1 - 1/(2 r1)) x0_s + 1/(2 r1) x0(u, s1)
        x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) D

    ``'taylor'``: ``x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h}-1) x0_s + alpha_t/r1 ((e^{-h}-1)/h + 1)(x0(u) - x0_s)``.
    Returns ``(x_t, u, x0(u, s1))``.
    """
    lam_s, lam_t = sch.lam(s), sch.lam(t)
    h = lam_t - lam_s
    s1 = sch.inverse_lam(lam_s + r1 * h)
    u = sch.sigma(s1) / sch.sigma(s) * x - sch.alpha(s1) * math.expm1(-r1 * h) * x0_s
    x0_s1 = f(u, s1)
    base = sch.sigma(t) / sch.sigma(s) * x
    if solver_type == "dpmsolver":
        D = (1.0 - 1.0 / (2.0 * r1)) * x0_s + 1.0 / (2.0 * r1) * x0_s1
        return base - sch.alpha(t) * math.expm1(-h) * D, u, x0_s1
    x_t = (base - sch.alpha(t) * math.expm1(-h) * x0_s
           + sch.alpha(t) / r1 * (math.expm1(-h) / h + 1.0) * (x0_s1 - x0_s))
    return x_t, u, x0_s1


def dpm_solver_3_singlestep(sch, x, s, t, f, eps_s, r1, r2, solver_type, eps_s1=None):
    """Singlestep DPM-Solver-3, arXiv:2206.00927 Algorithm 2 (with general r1 < r2, as in its appendix)::

        u1  = (alpha_s1/alpha_s) x - sigma_s1 (e^{r1 h} - 1) eps_s
        D1  = eps(u1, s1) - eps_s
        u2  = (alpha_s2/alpha_s) x - sigma_s2 (e^{r2 h} - 1) eps_s
              - (sigma_s2 r2/r1) ((e^{r2 h} - 1)/(r2 h) - 1) D1
        D2  = eps(u2, s2) - eps_s
        x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s - (sigma_t/r2) ((e^h - 1)/h - 1) D2

    ``'taylor'`` uses both differences: with ``d_k = D_k / r_k`` the first and second derivative estimates
    ``E1 = (r2 d_1 - r1 d_2)/(r2 - r1)``, ``E2 = 2 (d_2 - d_1)/(r2 - r1)`` and
    ``x_t = ... - sigma_t ((e^h-1)/h - 1) E1 - sigma_t (((e^h-1)/h - 1)/h - 1/2) E2``.
    ``eps_s1`` may be given (the adaptive solver shares it). Returns ``(x_t, eps(u1, s1))``.
    """
    lam_s, lam_t = sch.lam(s), sch.lam(t)
    h = lam_t - lam_s
    s1, s2 = sch.inverse_lam(lam_s + r1 * h), sch.inverse_lam(lam_s + r2 * h)
    if eps_s1 is None:
        u1 = math.exp(sch.log_alpha(s1) - sch.log_alpha(s)) * x - sch.sigma(s1) * math.expm1(r1 * h) * eps_s
        eps_s1 = f(u1, s1)
    D1 = eps_s1 - eps_s
    u2 = (math.exp(sch.log_alpha(s2) - sch.log_alpha(s)) * x - sch.sigma(s2) * math.expm1(r2 * h) * eps_s
          - sch.sigma(s2) * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0) * D1)
    D2 = f(u2, s2) - eps_s
    lin = math.exp(sch.log_alpha(t) - sch.log_alpha(s)) * x - sch.sigma(t) * math.expm1(h) * eps_s
    g2 = math.expm1(h) / h - 1.0
    if solver_type == "dpmsolver":
        return lin - sch.sigma(t) / r2 * g2 * D2, eps_s1
    d1, d2 = D1 / r1, D2 / r2
    E1 = (r2 * d1 - r1 * d2) / (r2 - r1)
    E2 = 2.0 * (d2 - d1) / (r2 - r1)
    return lin - sch.sigma(t) * g2 * E1 - sch.sigma(t) * (g2 / h - 0.5) * E2, eps_s1


def dpm_solver_pp_3_singlestep(sch, x, s, t, f, x0_s, r1, r2, solver_type, x0_s1=None):
    """DPM-Solver++(3S) (arXiv:2211.01095 appendix; the authors' code), the data-prediction twin of
    DPM-Solver-3 with ``e^{-h}`` in place of ``e^h``::

        u1  = (sigma_s1/sigma_s) x - alpha_s1 (e^{-r1 h} - 1) x0_s
        D1  = x0(u1, s1) - x0_s
        u2  = (sigma_s2/sigma_s) x - alpha_s2 (e^{-r2 h} - 1) x0_s
              + (alpha_s2 r2/r1) ((e^{-r2 h} - 1)/(r2 h) + 1) D1
        D2  = x0(u2, s2) - x0_s
        x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) x0_s + (alpha_t/r2) ((e^{-h} - 1)/h + 1) D2

    ``'taylor'``: ``x_t = ... + alpha_t ((e^{-h}-1)/h + 1) E1 - alpha_t ((((e^{-h}-1)/h + 1)/h) - 1/2) E2`` with
    ``E1``, ``E2`` as in ``dpm_solver_3_singlestep``. Returns ``(x_t, x0(u1, s1))``.
    """
    lam_s, lam_t = sch.lam(s), sch.lam(t)
    h = lam_t - lam_s
    s1, s2 = sch.inverse_lam(lam_s + r1 * h), sch.inverse_lam(lam_s + r2 * h)
    if x0_s1 is None:
        u1 = sch.sigma(s1) / sch.sigma(s) * x - sch.alpha(s1) * math.expm1(-r1 * h) * x0_s
        x0_s1 = f(u1, s1)
    D1 = x0_s1 - x0_s
    u2 = (sch.sigma(s2) / sch.sigma(s) * x - sch.alpha(s2) * math.expm1(-r2 * h) * x0_s
          + sch.alpha(s2) * r2 / r1 * (math.expm1(-r2 * h) / (r2 * h) + 1.0) * D1)
    D2 = f(u2, s2) - x0_s
    lin = sch.sigma(t) / sch.sigma(s) * x - sch.alpha(t) * math.expm1(-h) * x0_s
    g2 = math.expm1(-h) / h + 1.0
    if solver_type == "dpmsolver":
        return lin + sch.alpha(t) / r2 * g2 * D2, x0_s1
    d1, d2 = D1 / r1, D2 / r2
    E1 = (r2 * d1 - r1 * d2) / (r2 - r1)
    E2 = 2.0 * (d2 - d1) / (r2 - r1)
    return lin + sch.alpha(t) * g2 * E1 - sch.alpha(t) * (g2 / h - 0.5) * E2, x0_s1


def dpm_solver_2_multistep(sch, x, ts, eps, t, solver_type):
    """Multistep DPM-Solver-2 (noise form of arXiv:2211.01095 Algorithm 2), from ``ts[-1]`` to ``t`` with the
    outputs ``eps[-2], eps[-1]`` at ``ts[-2], ts[-1]``; ``r = h_prev / h``::

        x_t = (alpha_t/alpha_prev) x - sigma_t (e^h - 1) [(1 + 1/(2r)) eps_{-1} - 1/(2r) eps_{-2}]

    ``'taylor'``: ``... - sigma_t (e^h - 1) eps_{-1} - sigma_t ((e^h - 1)/h - 1) (eps_{-1} - eps_{-2})/r``.
    """
    lam_p1, lam_p0, lam_t = sch.lam(ts[-2]), sch.lam(ts[-1]), sch.lam(t)
    h, h_prev = lam_t - lam_p0, lam_p0 - lam_p1
    r = h_prev / h
    lin = math.exp(sch.log_alpha(t) - sch.log_alpha(ts[-1])) * x
    if solver_type == "dpmsolver":
        D = (1.0 + 1.0 / (2.0 * r)) * eps[-1] - 1.0 / (2.0 * r) * eps[-2]
        return lin - sch.sigma(t) * math.expm1(h) * D
    return (lin - sch.sigma(t) * math.expm1(h) * eps[-1]
            - sch.sigma(t) * (math.expm1(h) / h - 1.0) * (eps[-1] - eps[-2]) / r)


def dpm_solver_pp_2_multistep(sch, x, ts, x0, t, solver_type):
    """DPM-Solver++(2M), arXiv:2211.01095 Algorithm 2, ``r = h_prev / h``::

        D   = (1 + 1/(2r)) x0_{-1} - 1/(2r) x0_{-2}
        x_t = (sigma_t/sigma_prev) x - alpha_t (e^{-h} - 1) D

    ``'taylor'``: ``... - alpha_t (e^{-h} - 1) x0_{-1} + alpha_t ((e^{-h} - 1)/h + 1) (x0_{-1} - x0_{-2})/r``.
    """
    lam_p1, lam_p0, lam_t = sch.lam(ts[-2]), sch.lam(ts[-1]), sch.lam(t)
    h, h_prev = lam_t - lam_p0, lam_p0 - lam_p1
    r = h_prev / h
    lin = sch.sigma(t) / sch.sigma(ts[-1]) * x
    if solver_type == "dpmsolver":
        D = (1.0 + 1.0 / (2.0 * r)) * x0[-1] - 1.0 / (2.0 * r) * x0[-2]
        return lin - sch.alpha(t) * math.expm1(-h) * D
    return (lin - sch.alpha(t) * math.expm1(-h) * x0[-1]
            + sch.alpha(t) * (math.expm1(-h) / h + 1.0) * (x0[-1] - x0[-2]) / r)


def _third_order_differences(sch, ts, vals, t, consistent):
    """Divided differences of the last three outputs, scaled by the step ``h``: ``(h, E1, E2)`` with
    ``E1 ~ h f'`` and ``E2 ~ h^2 f''`` (``consistent``) or ``h^2 f''/2`` (the authors' rule)."""
    lam2, lam1, lam0, lam_t = sch.lam(ts[-3]), sch.lam(ts[-2]), sch.lam(ts[-1]), sch.lam(t)
    h, h0, h1 = lam_t - lam0, lam0 - lam1, lam1 - lam2
    r0, r1 = h0 / h, h1 / h
    d0 = (vals[-1] - vals[-2]) / r0
    d1 = (vals[-2] - vals[-3]) / r1
    E1 = d0 + r0 / (r0 + r1) * (d0 - d1)
    E2 = (2.0 if consistent else 1.0) * (d0 - d1) / (r0 + r1)
    return h, E1, E2


def dpm_solver_3_multistep(sch, x, ts, eps, t, consistent=False):
    """Multistep DPM-Solver-3 (the authors' code), outputs ``eps[-3:]`` at ``ts[-3:]``::

        x_t = (alpha_t/alpha_prev) x - sigma_t (e^h - 1) eps_{-1} - sigma_t ((e^h-1)/h - 1) E1
              - sigma_t (((e^h-1)/h - 1)/h - 1/2) E2

    (``E1``, ``E2`` from ``_third_order_differences``; the authors' ``E2`` is half the second difference,
    which leaves the rule second order; ``consistent=True`` restores the factor 2.)
    """
    h, E1, E2 = _third_order_differences(sch, ts, eps, t, consistent)
    g2 = math.expm1(h) / h - 1.0
    return (math.exp(sch.log_alpha(t) - sch.log_alpha(ts[-1])) * x - sch.sigma(t) * math.expm1(h) * eps[-1]
            - sch.sigma(t) * g2 * E1 - sch.sigma(t) * (g2 / h - 0.5) * E2)


def dpm_solver_pp_3_multistep(sch, x, ts, x0, t, consistent=False):
    """DPM-Solver++(3M) (the authors' code)::

        x_t = (sigma_t/sigma_prev) x - alpha_t (e^{-h} - 1) x0_{-1} + alpha_t ((e^{-h}-1)/h + 1) E1
              - alpha_t ((((e^{-h}-1)/h + 1)/h) - 1/2) E2
    """
    h, E1, E2 = _third_order_differences(sch, ts, x0, t, consistent)
    g2 = math.expm1(-h) / h + 1.0
    return (sch.sigma(t) / sch.sigma(ts[-1]) * x - sch.alpha(t) * math.expm1(-h) * x0[-1]
            + sch.alpha(t) * g2 * E1 - sch.alpha(t) * (g2 / h - 0.5) * E2)


# =============================================================================== the authors' drivers


def time_steps(sch, skip_type, t_T, t_0, N):
    """``N + 1`` times from ``t_T`` to ``t_0``: uniform in ``lambda``, in ``t`` or in ``sqrt(t)``."""
    if skip_type == "logSNR":
        l_T, l_0 = sch.lam(t_T), sch.lam(t_0)
        return [sch.inverse_lam(l_T + (l_0 - l_T) * i / N) for i in range(N + 1)]
    if skip_type == "time_uniform":
        return [t_T + (t_0 - t_T) * i / N for i in range(N)] + [t_0]
    if skip_type == "time_quadratic":
        a, b = math.sqrt(t_T), math.sqrt(t_0)
        return [(a + (b - a) * i / N) ** 2 for i in range(N)] + [t_0]
    raise ValueError(skip_type)


def singlestep_orders(steps, order):
    """DPM-Solver-fast: orders of the outer steps using exactly ``steps`` evaluations."""
    if order == 1:
        return [1] * steps
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    K = steps // 3 + 1
    return {0: [3] * (K - 2) + [2, 1], 1: [3] * (K - 1) + [1], 2: [3] * (K - 1) + [2]}[steps % 3]


class _Model:
    """The converted model for one algorithm: ``eps`` for ``dpmsolver``, corrected ``x0`` for ``dpmsolver++``."""

    def __init__(self, noise_fn, sch, algorithm_type, x0_correction):
        self.noise_fn, self.sch, self.alg, self.fix = noise_fn, sch, algorithm_type, x0_correction
        self.nfe = 0

    def x0(self, x, t):
        self.nfe += 1
        x0 = data_from_noise(x, self.noise_fn(x, t), self.sch.alpha(t), self.sch.sigma(t))
        return self.fix(x0) if self.fix is not None else x0

    def __call__(self, x, t):
        if self.alg == "dpmsolver++":
            return self.x0(x, t)
        self.nfe += 1
        return self.noise_fn(x, t)


def _first(sch, alg, x, s, t, f_s):
    return (dpm_solver_pp_1 if alg == "dpmsolver++" else dpm_solver_1)(sch, x, s, t, f_s)


def _singlestep(sch, alg, f, x, s, t, order, solver_type, r1, r2):
    f_s = f(x, s)
    if order == 1:
        return _first(sch, alg, x, s, t, f_s)
    if order == 2:
        rule = dpm_solver_pp_2_singlestep if alg == "dpmsolver++" else dpm_solver_2_singlestep
        return rule(sch, x, s, t, f, f_s, r1, solver_type)[0]
    rule = dpm_solver_pp_3_singlestep if alg == "dpmsolver++" else dpm_solver_3_singlestep
    return rule(sch, x, s, t, f, f_s, r1, r2, solver_type)[0]


def _multistep(sch, alg, x, ts, vals, t, order, solver_type, consistent):
    if order == 1:
        return _first(sch, alg, x, ts[-1], t, vals[-1])
    if order == 2:
        rule = dpm_solver_pp_2_multistep if alg == "dpmsolver++" else dpm_solver_2_multistep
        return rule(sch, x, ts, vals, t, solver_type)
    rule = dpm_solver_pp_3_multistep if alg == "dpmsolver++" else dpm_solver_3_multistep
    return rule(sch, x, ts, vals, t, consistent)


def _adaptive(sch, alg, f, x, order, t_T, t_0, solver_type, atol, rtol, h_init=0.05, theta=0.9, t_err=1e-5):
    """DPM-Solver-12 / -23 (arXiv:2206.00927 section 4.2 and appendix): accept when the scaled RMS difference of the
    lower- and higher-order results is <= 1, then ``h <- min(theta h E^{-1/order}, lambda_0 - lambda_s)``."""
    s, lam_s, lam_0, h = t_T, sch.lam(t_T), sch.lam(t_0), h_init
    x_prev = x
    while abs(s - t_0) > t_err:
        t = sch.inverse_lam(lam_s + h)
        f_s = f(x, s)
        if order == 2:
            x_low = _first(sch, alg, x, s, t, f_s)
            rule = dpm_solver_pp_2_singlestep if alg == "dpmsolver++" else dpm_solver_2_singlestep
            x_high = rule(sch, x, s, t, f, f_s, 0.5, solver_type)[0]
        else:
            rule2 = dpm_solver_pp_2_singlestep if alg == "dpmsolver++" else dpm_solver_2_singlestep
            x_low, _, f_s1 = rule2(sch, x, s, t, f, f_s, 1.0 / 3.0, solver_type)
            rule3 = dpm_solver_pp_3_singlestep if alg == "dpmsolver++" else dpm_solver_3_singlestep
            x_high = rule3(sch, x, s, t, f, f_s, 1.0 / 3.0, 2.0 / 3.0, solver_type, f_s1)[0]
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        B = x.shape[0]
        E = ((x_high - x_low) / delta).reshape(B, -1).pow(2).mean(dim=1).sqrt().max().item()
        if E <= 1.0:
            x, x_prev, s, lam_s = x_high, x_low, t, sch.lam(t)
        h = min(theta * h * (math.inf if E == 0 else E ** (-1.0 / order)), lam_0 - lam_s)
    return x


def sample(noise_fn, sch, x, steps=20, t_start=None, t_end=None, order=2, skip_type="time_uniform",
           method="multistep", algorithm_type="dpmsolver++", solver_type="dpmsolver", lower_order_final=True,
           denoise_to_zero=False, thresholding=None, atol=0.0078, rtol=0.05, warmup="lower_order",
           third_order="authors"):
    """Sample with DPM-Solver(++) the way the authors' ``DPM_Solver.sample`` does, in float64.

    Args:
        noise_fn: ``noise_fn(x, t)`` with ``t`` a Python float, returning ``eps`` (float64 tensor).
        sch: a ``Schedule``. ``x``: float64 tensor at ``t_start`` (default ``sch.T``).
        thresholding: ``None``, ``(ratio, floor)`` for dynamic thresholding of every ``x0``, or a callable
            ``fix(x0) -> x0`` applied to every ``x0`` prediction.
        warmup, third_order: pydiff's optional multistep-3 variants (``'singlestep'`` warm-up, the
            ``'consistent'`` second difference); the defaults are the authors' rules.
        The other arguments mean what they mean for ``DPM_Solver.sample``.
    """
    t_0 = 1.0 / sch.N if t_end is None else t_end
    t_T = sch.T if t_start is None else t_start
    if thresholding is None or callable(thresholding):
        fix = thresholding
    else:
        fix = (lambda x0: dynamic_threshold(x0, *thresholding))
    f = _Model(noise_fn, sch, algorithm_type, fix)
    alg = algorithm_type
    if method == "adaptive":
        x = _adaptive(sch, alg, f, x, order, t_T, t_0, solver_type, atol, rtol)
    elif method == "multistep":
        ts_all = time_steps(sch, skip_type, t_T, t_0, steps)
        ts, vals = [ts_all[0]], [f(x, ts_all[0])]
        first = 1
        if warmup == "singlestep" and order == 3:
            # one first-order step to ts_all[1] (only to evaluate the model there), then a singlestep
            # DPM-Solver-2 step over [ts_all[0], ts_all[2]] with that evaluation as its midpoint
            x1 = _first(sch, alg, x, ts_all[0], ts_all[1], vals[0])
            ts.append(ts_all[1])
            vals.append(f(x1, ts_all[1]))
            r1 = (sch.lam(ts_all[1]) - sch.lam(ts_all[0])) / (sch.lam(ts_all[2]) - sch.lam(ts_all[0]))
            rule = dpm_solver_pp_2_singlestep if alg == "dpmsolver++" else dpm_solver_2_singlestep
            x = rule(sch, x, ts_all[0], ts_all[2], lambda *_: vals[1], vals[0], r1, solver_type)[0]
            ts.append(ts_all[2])
            vals.append(f(x, ts_all[2]) if steps > 2 else None)
            first = 3
        for i in range(first, steps + 1):
            if i < order:
                step_order = i
            elif lower_order_final and steps < 10:
                step_order = min(order, steps + 1 - i)
            else:
                step_order = order
            x = _multistep(sch, alg, x, ts[-3:], vals[-3:], ts_all[i], step_order, solver_type,
                           third_order == "consistent")
            ts.append(ts_all[i])
            vals.append(f(x, ts_all[i]) if i < steps else None)
    else:
        if method == "singlestep":
            orders = singlestep_orders(steps, order)
            if skip_type == "logSNR":
                outer = time_steps(sch, skip_type, t_T, t_0, len(orders))
            else:
                grid = time_steps(sch, skip_type, t_T, t_0, steps)
                idx = [sum(orders[:k]) for k in range(len(orders) + 1)]
                outer = [grid[i] for i in idx]
        else:
            orders = [order] * (steps // order)
            outer = time_steps(sch, skip_type, t_T, t_0, len(orders))
        for k, o in enumerate(orders):
            s, t = outer[k], outer[k + 1]
            inner = time_steps(sch, skip_type, s, t, o)
            lams = [sch.lam(v) for v in inner]
            r1 = (lams[1] - lams[0]) / (lams[-1] - lams[0]) if o > 1 else None
            r2 = (lams[2] - lams[0]) / (lams[-1] - lams[0]) if o > 2 else None
            x = _singlestep(sch, alg, f, x, s, t, o, solver_type, r1, r2)
    if denoise_to_zero:
        x = f.x0(x, t_0)
    return x
