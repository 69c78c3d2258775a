"""Score-SDE sampler plans (Song et al., arXiv:2011.13456): per-step float64 coefficient rows for the
predictors, the annealed Langevin corrector and the host parts of the Langevin corrector.

The sampler state update of every predictor is affine in the sample ``x`` and the raw model output ``m``,
plus noise. With the score ``s = kappa m`` (``kappa = -1/std`` for VP/sub-VP models, which predict the
noise, 1 for VE models, which predict the score), a predictor step is

    x_mean = S (P x + Q m)        (column B0 = 1 makes w = x_mean the update; w_out returns it)
    x      = x_mean + C z

one ``fused_step`` row per step. The rows, with ``lam = 1/2`` for the probability flow and 1 otherwise,
``dt = T/N``, ``f(t) x`` the drift, ``g(t)`` the diffusion, ``(f_i, G_i)`` the SDE's discretisation:

    euler_maruyama     P = 1 - f(t) dt,  Q = lam g(t)^2 kappa dt,  C = g(t) sqrt(dt)   (0 for the flow)
    reverse_diffusion  P = 1 - f_i,      Q = lam G_i^2 kappa,      C = G_i             (0 for the flow)
    ancestral (VE)     P = 1,  Q = (s_i^2 - s_{i-1}^2) kappa,  C = sqrt(s_{i-1}^2 (s_i^2 - s_{i-1}^2) / s_i^2)
    ancestral (VP)     P = 1,  Q = beta_i kappa,  S = 1/sqrt(1 - beta_i),  C = sqrt(beta_i)

(Song et al. 2021, eqs. 6, 13, 45-47; for VP the reverse-diffusion rule is their Algorithm 3,
``x' = (2 - sqrt(1 - beta_i)) x + beta_i s``). The Langevin corrector (their Algorithms 4 and 5) steps by
``eps = 2 alpha (r ||z|| / ||s||)^2``: ``P = 1, Q = eps kappa, C = sqrt(2 eps)``, with the norms measured and
the row built by the ``pydiff.ops.langevin_step`` kernel from ``langevin_host``'s ``(c, kappa)``; the annealed Langevin corrector of NCSN uses ``eps = 2 alpha (r std(t))^2``
and is a host table (``ald_rows``).

The probability-flow ODE (eq. 13), ``dx/dt = f(t) x - g(t)^2 kappa m / 2``, is affine in ``x`` and ``m`` too:
``flow_drift_coefs`` gives its two coefficients (``A = f``, ``D = -g^2 kappa / 2``) for an ODE solver's
evaluation times, ``flow_drift_rows`` the rows ``out = A x + D m``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import COL
from ..schedules import SubVPSDESchedule, VESDESchedule, VPSDESchedule
from .rows import RowBuilder, check_finite

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
CORRECTORS = ("langevin", "ald", "none")
CORRECTOR_NORMS = ("batch", "sample")


def sde_kind(schedule) -> str:
    """``'vp'``, ``'subvp'`` or ``'ve'`` for a score-SDE schedule."""
    if isinstance(schedule, SubVPSDESchedule):
        return "subvp"
    if isinstance(schedule, VPSDESchedule):
        return "vp"
    if isinstance(schedule, VESDESchedule):
        return "ve"
    raise TypeError(f"expected a VP, sub-VP or VE score-SDE schedule, got {type(schedule).__name__}")


# ----------------------------------------------------------------------------- the time grid and the model's labels
def time_grid(schedule, eps: float):
    """score_sde's sampling grid: ``t = linspace(T, eps, N)`` in float32 (the reference's dtype, so that the
    step ``floor(t (N-1)/T)`` is the one it selects), as ``(t32 torch (N,), t float64 (N,), i int64 (N,))``."""
    t32 = torch.linspace(schedule.T, eps, schedule.N, dtype=torch.float32)
    return t32, t32.double().numpy(), schedule.time_index(t32).numpy()


def model_labels(schedule, t: torch.Tensor, continuous: bool) -> torch.Tensor:
    """The conditioning a score_sde model takes at time ``t`` (score_sde's ``get_score_fn``):
    VP continuous and sub-VP: ``999 t``; VP discrete: ``(N - 1) t`` (a float; the model's DDPM step);
    VE continuous: ``sigma(t)``; VE discrete: ``round((T - t)(N - 1))`` as int64 (NCSN's noise level index,
    which counts from the largest sigma)."""
    kind = sde_kind(schedule)
    if kind == "subvp" or (kind == "vp" and continuous):
        return t * 999
    if kind == "vp":
        return t * (schedule.N - 1)
    if continuous:
        return schedule.sigma(t)
    return torch.round((schedule.T - t) * (schedule.N - 1)).long()


def score_scale(schedule, t, i, continuous: bool) -> np.ndarray:
    """``kappa`` with ``score = kappa * model_output`` (float64): ``-1/std(t)`` for VP continuous and sub-VP
    models (noise predictors, Song et al. 2021, appendix B), ``-1/sqrt(1 - alpha_bar_i)`` for discrete VP
    (DDPM) models, 1 for VE models (which output the score)."""
    kind = sde_kind(schedule)
    t = np.asarray(t, dtype=np.float64)
    if kind == "ve":
        return np.ones_like(t)
    if kind == "subvp" or continuous:
        return -1.0 / schedule.marginal_std(t)
    return -1.0 / np.sqrt(1.0 - schedule.alphas_cumprod[np.asarray(i)])


def score_from_eps(m: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``score = -m / std`` (a noise prediction as the score, ``std`` per sample)."""
    return -m / std.reshape((-1,) + (1,) * (m.ndim - 1))


def reverse_terms(drift, diffusion, score, probability_flow: bool, x, discrete: bool = False):
    """The reverse-time SDE's terms from the forward ones (Song et al. 2021, eq. 6; eq. 13 for the flow):
    ``drift - g^2 s`` and ``g``, or ``drift - g^2 s / 2`` and 0. With ``discrete`` the same on a
    discretisation's ``(f, G)``. ``diffusion`` is per sample ``(B,)``; the zero diffusion is a tensor."""
    lam = 0.5 if probability_flow else 1.0
    g2 = (diffusion ** 2).reshape((-1,) + (1,) * (x.ndim - 1))
    rev = drift - g2 * score * lam
    return rev, (torch.zeros_like(diffusion) if probability_flow else diffusion)


# ----------------------------------------------------------------------------- predictor rows
def langevin_alpha(schedule, i) -> np.ndarray:
    """The Langevin step factor ``alpha_i`` (Song et al. 2021, Algorithm 5): ``1 - beta_i`` of the DDPM
    betas for VP; for sub-VP the same ``1 - beta_i`` -- the reference reads ``sde.alphas``, which its
    subVPSDE lacks; sub-VP has VP's drift and ``beta(t)``, so its per-step signal decay ``sqrt(1 - beta_i)``
    and thus its ``alpha_i`` are VP's; 1 for VE (Algorithm 4)."""
    i = np.asarray(i)
    if sde_kind(schedule) == "ve":
        return np.ones(i.shape)
    return schedule.discrete_alphas[i]


def predictor_rows(schedule, predictor: str, t, i, kappa, probability_flow: bool = False) -> np.ndarray:
    """``(n, NCOEF)`` float64 rows of ``predictor`` at times ``t`` (steps ``i``, score scales ``kappa``), as
    in the module docstring: ``w = x_mean`` (``B0 = 1``), ``out = x_mean + C z``."""
    if predictor not in PREDICTORS or predictor == "none":
        raise ValueError(f"predictor must be one of {PREDICTORS[:-1]} for a row, got {predictor!r}")
    kind = sde_kind(schedule)
    t = np.asarray(t, dtype=np.float64)
    i = np.asarray(i, dtype=np.int64)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=np.float64), t.shape)
    lam = 0.5 if probability_flow else 1.0
    noisy = 0.0 if probability_flow else 1.0
    S = np.ones_like(t)
    if predictor == "euler_maruyama":
        dt = 1.0 / schedule.N
        g = schedule.diffusion(t)
        P, Q, C = 1.0 - schedule.drift_coef(t) * dt, lam * g * g * kappa * dt, noisy * g * np.sqrt(dt)
    elif predictor == "reverse_diffusion":
        if kind == "vp":
            f, G = schedule.ddpm_discretize(i)
        elif kind == "ve":
            f, G = schedule.smld_discretize(i)
        else:
            f, G = schedule.euler_discretize(t)
        P, Q, C = 1.0 - f, lam * G * G * kappa, noisy * G
    else:
        if probability_flow:
            raise ValueError("probability_flow=True is not supported by ancestral sampling")
        if kind == "ve":
            s, adj = schedule.adjacent_sigmas(i)
            d = s * s - adj * adj
            P, Q, C = np.ones_like(t), d * kappa, np.sqrt(adj * adj * d / (s * s))
        elif kind == "vp":
            beta = schedule.discrete_betas[i]
            P, Q, S, C = np.ones_like(t), beta * kappa, 1.0 / np.sqrt(1.0 - beta), np.sqrt(beta)
        else:
            raise UnsupportedSDE("ancestral sampling supports VPSDE and VESDE only (it follows their DDPM/SMLD "
                                 "chains); sub-VP has none")
    b = RowBuilder()
    b.add(P=P, Q=Q, S=S, B0=1.0, C=C)
    rows = b.table()
    check_finite(rows, f"predictor {predictor!r}", [f"t={v:.6g}" for v in t])
    return rows


class UnsupportedSDE(NotImplementedError, ValueError):
    """An SDE a sampler does not support (a ``NotImplementedError``, like the reference's, and a ``ValueError``)."""


def ald_rows(schedule, t, i, kappa, snr: float) -> np.ndarray:
    """Annealed Langevin dynamics (NCSN, Song & Ermon 2019, Algorithm 1 in score_sde's form):
    ``eps = 2 alpha_i (r std(t))^2``, ``x_mean = x + eps s``, ``x = x_mean + sqrt(2 eps) z``."""
    t = np.asarray(t, dtype=np.float64)
    eps = 2.0 * langevin_alpha(schedule, i) * (snr * schedule.marginal_std(t)) ** 2
    b = RowBuilder()
    b.add(P=1.0, Q=eps * np.asarray(kappa, dtype=np.float64), B0=1.0, C=np.sqrt(2.0 * eps))
    rows = b.table()
    check_finite(rows, "the annealed Langevin corrector", [f"t={v:.6g}" for v in t])
    return rows


def langevin_host(schedule, i, kappa, snr: float) -> np.ndarray:
    """``(n, 2)`` float64 ``(2 alpha_i r^2 / kappa^2, kappa)``: the host part of the Langevin step
    ``eps = 2 alpha (r ||z|| / ||kappa m||)^2 = [2 alpha r^2 / kappa^2] (||z|| / ||m||)^2``."""
    kappa = np.broadcast_to(np.asarray(kappa, dtype=np.float64), np.shape(i))
    alpha = langevin_alpha(schedule, i)
    if (alpha < 0).any():
        # the step eps = 2 alpha (...)^2 would be negative and sqrt(2 eps) NaN (the reference returns NaN)
        raise ValueError(f"the Langevin corrector's step factor alpha_i = 1 - beta_i is negative "
                         f"(min {alpha.min():.6g}): the discrete betas of this SDE reach beta_max/N > 1, so N must "
                         f"be at least beta_max")
    return np.stack([2.0 * alpha * snr * snr / (kappa * kappa), kappa], axis=-1)


# ----------------------------------------------------------------------------- the probability-flow ODE
def flow_drift_coefs(schedule, t, kappa):
    """``(a, d)`` float64 with the probability-flow drift (Song et al. 2021, eq. 13)
    ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 = a x + d m``: ``a = f(t)`` (the linear drift coefficient),
    ``d = -g(t)^2 kappa / 2`` (``s = kappa m``, ``kappa`` from ``score_scale`` at the same times ``t``)."""
    t = np.asarray(t, dtype=np.float64)
    kappa = np.broadcast_to(np.asarray(kappa, dtype=np.float64), t.shape)
    g = schedule.diffusion(t)
    a = np.broadcast_to(schedule.drift_coef(t), t.shape).astype(np.float64)
    return a, -0.5 * g * g * kappa


def flow_drift_rows(schedule, t, kappa) -> np.ndarray:
    """``(n, NCOEF)`` float64 rows of the probability-flow drift as a fused step's output,
    ``out = A x + D m`` with ``(A, D) = flow_drift_coefs(...)`` (no ``w`` term)."""
    a, d = flow_drift_coefs(schedule, t, kappa)
    b = RowBuilder()
    b.add(A=a, D=d)
    rows = b.table()
    check_finite(rows, "the probability-flow drift", [f"t={v:.6g}" for v in np.atleast_1d(t)])
    return rows


# ----------------------------------------------------------------------------- diffusers' ScoreSdeVe/VpScheduler
def ve_sigmas(t, sigma_min: float, sigma_max: float) -> np.ndarray:
    """``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (float64), evaluated as
    ``exp(log sigma_min + t (log sigma_max - log sigma_min))``.

    The power form overflows as soon as its base does: in float32 (diffusers' dtype) ``sigma_max / sigma_min``
    is inf beyond 3.4e38 (``sigma_min = 1e-20, sigma_max = 1e20``), and every ``sigma(t)`` with it, although
    each value lies in ``[sigma_min, sigma_max]``. In log space no intermediate exceeds ``max(|log sigma|)``,
    so the result is finite whenever ``sigma_min`` and ``sigma_max`` are.
    """
    t = np.asarray(t, dtype=np.float64)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return np.exp(lo + t * (hi - lo))


def smld_step_rows(discrete_sigmas) -> np.ndarray:
    """``(n, NCOEF)`` rows of diffusers' VE predictor (``ScoreSdeVeScheduler.step_pred``), one per noise level
    ``i``: the SMLD reverse-diffusion step (Song et al. 2021, eq. 47) with the score as the model output,

        g_i    = sqrt(sigma_i^2 - sigma_{i-1}^2)          (sigma_{-1} = 0)
        x_mean = x + g_i^2 m                              (P = 1, Q = g_i^2, B0 = 1: w_out = x_mean)
        x      = x_mean + g_i z                           (C = g_i)

    ``discrete_sigmas``: the scheduler's float32 levels. ``g_i`` and ``g_i^2`` are rounded to float32 after each
    operation, as diffusers' float32 tensor arithmetic rounds them, so the float32 kernel multiplies by the very
    scalars diffusers multiplies by (and a float64 run by diffusers' float32 values, which it promotes).
    """
    s = np.asarray(discrete_sigmas, dtype=np.float32)
    adj = np.concatenate([np.zeros(1, np.float32), s[:-1]])
    with np.errstate(over="ignore", invalid="ignore"):
        g = np.sqrt(s * s - adj * adj)
        g2 = g * g
    b = RowBuilder()
    b.add(P=1.0, Q=g2.astype(np.float64), B0=1.0, C=g.astype(np.float64))
    rows = b.table()
    check_finite(rows, "the VE predictor (sigma_max too large for float32: sigma_max^2 overflows)",
                 [f"noise level {k} (sigma={float(v):.6g})" for k, v in enumerate(s)])
    return rows


def unit_rows(base: dict, columns, dtype, device) -> torch.Tensor:
    """``(1 + k, NCOEF)`` device rows: the row with ``base``'s columns set, then the unit row of each name in
    ``columns``. ``units[0] + v @ units[1:]`` is the row with those columns set to ``v`` (``(..., k)``): one
    small matmul builds per-step or per-sample rows on the device, with no host round trip."""
    b = RowBuilder()
    b.add(**base)
    rows = [b.table()[0]]
    for name in columns:
        e = np.zeros_like(rows[0])
        e[COL[name]] = 1.0
        rows.append(e)
    return torch.as_tensor(np.stack(rows), dtype=dtype, device=device)


def vp_euler_rows(units: torch.Tensor, t: torch.Tensor, beta_min: float, beta_max: float, n: int) -> torch.Tensor:
    """diffusers' VP predictor rows (``ScoreSdeVpScheduler.step_pred``): one Euler-Maruyama step of the
    reverse VP SDE (Song et al. 2021, eqs. 6 and 11) with a noise-predicting model (``score = -m / std(t)``),
    ``dt = -1/n`` (``n`` the number of inference steps), on the device from the time tensor ``t``:

        beta   = beta_min + t (beta_max - beta_min),   log_mean = -t^2 (beta_max - beta_min)/4 - t beta_min/2
        std    = sqrt(1 - exp(2 log_mean))
        x_mean = (1 - beta dt / 2) x + (dt beta / std) m      (P, Q, B0 = 1: w_out = x_mean)
        x      = x_mean + sqrt(beta) sqrt(-dt) z              (C)

    ``units``: ``unit_rows({"B0": 1}, ("P", "Q", "C"))``. ``beta``, ``std``, ``sqrt(beta)``, its square and
    ``C`` are computed in ``t``'s dtype by the same operations as diffusers (at ``t = 1e-3``, float32 ``1 - exp(2
    log_mean)`` cancels to a 3e-4 relative error in ``std``: it is diffusers' value, so it is mirrored, not
    corrected). One row for a one-element ``t``, else ``(len(t), NCOEF)``.
    """
    width = beta_max - beta_min
    log_mean = -0.25 * t ** 2 * width - 0.5 * t * beta_min
    std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean))
    beta = beta_min + t * width
    g = torch.sqrt(beta)
    g2 = g ** 2
    dt = -1.0 / n
    c = g * math.sqrt(-dt)
    T = units.dtype
    beta, std, g2, c = (v.to(T).reshape(-1) for v in (beta, std, g2, c))
    p = 1.0 - 0.5 * beta * dt
    q = dt * g2 / std
    rows = torch.addmm(units[0], torch.stack([p, q, c], dim=-1), units[1:])
    return rows[0] if rows.shape[0] == 1 else rows
