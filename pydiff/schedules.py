"""Noise schedules and timestep grids: the one place their formulas are written.

A diffusion process is ``x_t = alpha_t x_0 + sigma_t eps``. Everything a sampler's coefficients need is a
function of ``alpha_t``, ``sigma_t`` and the half log-SNR ``lambda_t = log alpha_t - log sigma_t``
(Kingma et al. 2021; Lu et al., DPM-Solver, arXiv:2206.00927, section 2). For a variance-preserving (VP)
process ``alpha^2 + sigma^2 = 1``, so all of them follow from ``log alpha_t``::

    sigma_t  = sqrt(1 - e^{2 log alpha_t}),    lambda_t = log alpha_t - 1/2 log(1 - e^{2 log alpha_t}),
    log alpha_t = -1/2 log(1 + e^{-2 lambda_t})                       (the inverse, given lambda)

Discrete (DDPM-style, Ho et al. 2020): ``alpha_bar_n = prod_{i<=n} (1 - beta_i)``, ``alpha_n = sqrt(alpha_bar_n)``.
Continuous VP (Song et al. 2021): linear ``log alpha_t = -(b1-b0) t^2/4 - b0 t/2``, cosine (Nichol &
Dhariwal 2021) ``alpha_t = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2)``; a discrete table placed in
continuous time with ``log alpha_t`` piecewise linear between its knots (the DPM-Solver authors' convention).
VE: ``sigma_t = smin (smax/smin)^t``.

The functions are written once for NumPy arrays and torch tensors alike (``_ops`` picks the namespace): the
plans evaluate them in float64 on the host, the authors'-API face (``pydiff.dpm_solver.NoiseScheduleVP``) on
tensors of any device and dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
CLIPPED_LAMBDA = -5.1  # the DPM-Solver authors' clip of a discrete table's trailing low-SNR entries


# ----------------------------------------------------------------------------- array namespace
class _NumpyOps:
    exp, log, sqrt, expm1, cos, arccos = np.exp, np.log, np.sqrt, np.expm1, np.cos, np.arccos

    @staticmethod
    def asarray(v):
        return np.asarray(v, dtype=np.float64)

    @staticmethod
    def softplus(v):
        return np.logaddexp(0.0, v)

    @staticmethod
    def segment(xp, x):
        """Index ``k`` of the knot interval ``[xp[k], xp[k+1])`` holding ``x``, clamped to ``[0, K-2]``."""
        return np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)


class _TorchOps:
    exp, log, sqrt, expm1, cos, arccos = torch.exp, torch.log, torch.sqrt, torch.expm1, torch.cos, torch.arccos
    softplus = staticmethod(torch.nn.functional.softplus)

    @staticmethod
    def asarray(v):
        return v

    @staticmethod
    def segment(xp, x):
        return (torch.searchsorted(xp.contiguous(), x.contiguous(), right=True) - 1).clamp(0, xp.shape[-1] - 2)


def _ops(v):
    return _TorchOps if isinstance(v, torch.Tensor) else _NumpyOps


# ----------------------------------------------------------------------------- the VP relations
def sigma_from_log_alpha(log_alpha):
    """``sigma = sqrt(1 - alpha^2)``, as ``sqrt(-expm1(2 log alpha))`` (no cancellation at alpha ~ 1)."""
    xp = _ops(log_alpha)
    return xp.sqrt(-xp.expm1(2.0 * log_alpha))


def lambda_from_log_alpha(log_alpha):
    """``lambda = log alpha - log sigma = log alpha - 1/2 log(1 - alpha^2)``."""
    xp = _ops(log_alpha)
    return log_alpha - 0.5 * xp.log(-xp.expm1(2.0 * log_alpha))


def log_alpha_from_lambda(lam):
    """``log alpha = -1/2 log(1 + e^{-2 lambda})`` (a softplus: finite for every finite lambda)."""
    return -0.5 * _ops(lam).softplus(-2.0 * lam)


def piecewise_linear(x, xp, fp):
    """``f(x)`` through the knots ``(xp, fp)`` (``xp`` increasing, 1-D), extended linearly past both ends."""
    ops = _ops(x)
    k = ops.segment(xp, x)
    x0, x1, y0, y1 = xp[k], xp[k + 1], fp[k], fp[k + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def low_snr_count(log_alphas, min_lambda: float = CLIPPED_LAMBDA) -> int:
    """How many entries of a (decreasing) ``log alpha`` table have ``lambda < min_lambda``: the trailing ones
    the DPM-Solver authors drop, so that cosine-type tables whose ``alpha`` reaches ~0 stay well conditioned."""
    return int((lambda_from_log_alpha(log_alphas) < min_lambda).sum())


def vp_from_ve_sigma(sig):
    """``(alpha, sigma, lambda)`` of the VP process whose noise-to-signal ratio is ``sig`` (diffusers' sigmas):
    ``alpha = 1/sqrt(sig^2 + 1)``, ``sigma = sig alpha``, ``lambda = log alpha - log sigma``.

    Evaluated in the precision of ``sig``, in diffusers' order of operations (``_sigma_to_alpha_sigma_t``):
    a float32 tensor gives diffusers' float32 rounding, a float64 array exact values.
    """
    xp = _ops(sig)
    alpha = 1 / ((sig ** 2 + 1) ** 0.5)
    sigma = sig * alpha
    with np.errstate(divide="ignore"):
        return alpha, sigma, xp.log(alpha) - xp.log(sigma)


# ----------------------------------------------------------------------------- schedules
class VPSchedule:
    """A VP schedule given by ``log_alpha(t)`` (and its inverse through ``lambda``); ``t`` in ``(0, T]``."""

    T = 1.0

    def log_alpha(self, t):
        raise NotImplementedError

    def alpha(self, t):
        la = self.log_alpha(t)
        return _ops(la).exp(la)

    def sigma(self, t):
        return sigma_from_log_alpha(self.log_alpha(t))

    def lambda_(self, t):
        return lambda_from_log_alpha(self.log_alpha(t))

    def inverse_lambda(self, lam):
        """The time ``t`` with ``lambda_t = lam``."""
        raise NotImplementedError


def _check_int(name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")


def make_betas(beta_schedule: str = "linear", num_train_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02, max_beta: float = 0.999) -> np.ndarray:
    """The beta sequences diffusers and the DDPM papers use, in float64.

    ``linear``: evenly spaced (Ho et al.); ``scaled_linear``: evenly spaced in sqrt(beta) (latent diffusion);
    ``squaredcos_cap_v2``: ``beta_i = min(1 - abar((i+1)/N)/abar(i/N), max_beta)`` with
    ``abar(t) = cos((t + 0.008)/1.008 * pi/2)^2`` (Nichol & Dhariwal, arXiv:2102.09672, eq. 17).
    """
    _check_int("num_train_timesteps", num_train_timesteps, 1)
    n = num_train_timesteps
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)], dtype=np.float64)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


class DiscreteSchedule(VPSchedule):
    """A discrete-time VP schedule, indexed by the training step ``n = 0..N-1``: ``alpha_bar_n`` and
    ``log alpha_n = 1/2 log alpha_bar_n`` (both kept: each is exact for the way the schedule was given)."""

    def __init__(self, alphas_cumprod, log_alphas=None):
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        with np.errstate(divide="ignore"):
            self.log_alphas = (0.5 * np.log(self.alphas_cumprod) if log_alphas is None
                               else np.asarray(log_alphas, dtype=np.float64))

    @classmethod
    def from_betas(cls, betas) -> "DiscreteSchedule":
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must lie in (0, 1]")
        with np.errstate(divide="ignore"):
            # the log form sums logs instead of taking the log of a product that underflows
            return cls(np.cumprod(1.0 - betas), 0.5 * np.cumsum(np.log1p(-betas)))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod) -> "DiscreteSchedule":
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or ac.size == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape {ac.shape}")
        if not np.all((ac >= 0) & (ac <= 1)):
            raise ValueError("alphas_cumprod must lie in [0, 1]")
        return cls(ac)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.size)

    def log_alpha(self, n):
        return self.log_alphas[np.asarray(n)]

    def inverse_lambda(self, lam):
        raise TypeError("a discrete schedule has no inverse in lambda; use .continuous()")

    def clip_lambda(self, min_lambda: float = CLIPPED_LAMBDA) -> "DiscreteSchedule":
        """The table without its trailing entries whose ``lambda < min_lambda`` (see ``low_snr_count``)."""
        n_low = low_snr_count(self.log_alphas, min_lambda)
        if n_low >= self.log_alphas.shape[0] - 1:
            raise ValueError(f"the schedule's logSNR is below the clip at lambda={min_lambda} almost everywhere")
        keep = self.log_alphas.shape[0] - n_low
        return DiscreteSchedule(self.alphas_cumprod[:keep], self.log_alphas[:keep])

    def continuous(self) -> "PiecewiseVP":
        """The table in continuous time: entry ``n`` at ``t_n = (n + 1)/N`` (the DPM-Solver authors')."""
        N = self.num_train_timesteps
        return PiecewiseVP(np.linspace(0.0, 1.0, N + 1)[1:], self.log_alphas)


class PiecewiseVP(VPSchedule):
    """``log alpha_t`` piecewise linear in ``t`` through knots ``(t_knots, log_alpha_knots)``, extended linearly."""

    def __init__(self, t_knots, log_alpha_knots):
        self.t_knots = np.asarray(t_knots, dtype=np.float64)
        self.log_alpha_knots = np.asarray(log_alpha_knots, dtype=np.float64)
        self.T = float(self.t_knots[-1])

    @property
    def N(self) -> int:
        return int(self.t_knots.shape[0])

    def log_alpha(self, t):
        return piecewise_linear(np.asarray(t, dtype=np.float64), self.t_knots, self.log_alpha_knots)

    def inverse_lambda(self, lam):
        la = log_alpha_from_lambda(np.asarray(lam, dtype=np.float64))
        return piecewise_linear(la, self.log_alpha_knots[::-1].copy(), self.t_knots[::-1].copy())


@dataclass(frozen=True)
class VPLinear(VPSchedule):
    """Continuous VP-SDE with linear beta(t) = b0 + (b1 - b0) t, t in [0, 1] (Song et al. 2021)."""

    beta_0: float = 0.1
    beta_1: float = 20.0
    T: float = 1.0

    def log_alpha(self, t):
        t = _ops(t).asarray(t)
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def inverse_lambda(self, lam):
        """Solve the quadratic in t for ``log alpha = -1/2 softplus(-2 lam)``."""
        lam = _ops(lam).asarray(lam)
        tmp = 2.0 * (self.beta_1 - self.beta_0) * _ops(lam).softplus(-2.0 * lam)
        delta = self.beta_0 ** 2 + tmp
        return tmp / (_ops(delta).sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)


@dataclass(frozen=True)
class VPCosine(VPSchedule):
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021), t in [0, T], T = 0.9946 (alpha stays > 0)."""

    s: float = 0.008
    T: float = 0.9946

    @property
    def log_alpha_0(self) -> float:
        return math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t):
        xp = _ops(t)
        t = xp.asarray(t)
        return xp.log(xp.cos((t + self.s) / (1.0 + self.s) * (math.pi / 2.0))) - self.log_alpha_0

    def inverse_lambda(self, lam):
        xp = _ops(lam)
        la = log_alpha_from_lambda(xp.asarray(lam))
        return xp.arccos(xp.exp(la + self.log_alpha_0)) * 2.0 * (1.0 + self.s) / math.pi - self.s


@dataclass(frozen=True)
class VEGeometric:
    """Variance-exploding SDE: alpha = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021)."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def alpha(self, t):
        return np.ones_like(np.asarray(t, dtype=np.float64))

    def sigma(self, t):
        t = np.asarray(t, dtype=np.float64)
        # exp/log form: sigma_min * (ratio ** t) overflows nowhere, unlike a float32 power of a large ratio
        return np.exp(math.log(self.sigma_min) + t * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    def lambda_(self, t):
        return -np.log(self.sigma(t))

    def inverse_lambda(self, lam):
        lam = np.asarray(lam, dtype=np.float64)
        return (-lam - math.log(self.sigma_min)) / (math.log(self.sigma_max) - math.log(self.sigma_min))


# ----------------------------------------------------------------------------- grids
def diffusers_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading",
                        steps_offset: int = 0) -> np.ndarray:
    """The descending int64 timesteps diffusers' DDIM/DDPM ``set_timesteps`` produce.

    ``leading``: ``arange(n) * (N // n) + steps_offset``; ``trailing``: ``round(arange(N, 0, -N/n)) - 1``;
    ``linspace``: ``round(linspace(0, N-1, n))`` (Lin et al., arXiv:2305.08891, table 2).
    """
    _check_int("num_train_timesteps", num_train_timesteps, 1)
    _check_int("num_inference_steps", num_inference_steps, 1, num_train_timesteps)
    N, n = num_train_timesteps, num_inference_steps
    if spacing == "linspace":
        ts = np.linspace(0, N - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, n) * (N // n)).round()[::-1].copy().astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(N, 0, -N / n)).astype(np.int64) - 1
    else:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    return ts


def time_grid(schedule, skip_type: str, t_from: float, t_to: float, n: int) -> np.ndarray:
    """``n + 1`` float64 times from ``t_from`` to ``t_to`` (either direction), spaced as ``skip_type`` says.

    ``time_uniform``: uniform in t; ``logSNR``: uniform in lambda_t (needs ``schedule.inverse_lambda``);
    ``time_quadratic``: uniform in sqrt(t), i.e. denser near t = 0 (the DPM-Solver authors' grids).
    """
    if skip_type == "logSNR":
        lam = np.linspace(float(schedule.lambda_(t_from)), float(schedule.lambda_(t_to)), n + 1)
        return schedule.inverse_lambda(lam)
    if skip_type == "time_uniform":
        return np.linspace(t_from, t_to, n + 1)
    if skip_type == "time_quadratic":
        return np.linspace(math.sqrt(t_from), math.sqrt(t_to), n + 1) ** 2
    raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")


def continuous_timesteps(schedule, steps: int, t_start: float, t_end: float, skip_type: str = "time_uniform"):
    """``steps + 1`` descending times from ``t_start`` to ``t_end`` for sampling (``time_grid``, checked)."""
    _check_int("steps", steps, 1)
    if not t_start > t_end:
        raise ValueError(f"t_start ({t_start}) must be greater than t_end ({t_end})")
    return time_grid(schedule, skip_type, t_start, t_end, steps)


# ----------------------------------------------------------------------------- score SDEs (Song et al. 2021)
class ScoreSDESchedule:
    """The coefficients of a score SDE ``dx = f(t) x dt + g(t) dw`` on ``t in [0, T]`` (Song, Sohl-Dickstein,
    Kingma, Kumar, Ermon, Poole, arXiv:2011.13456, section 3.4 and appendix B), with its marginal
    ``p_t(x | x0) = N(m(t) x0, std(t)^2 I)`` and its ``N``-step discretisation.

    Every method takes ``t`` as a float64 array or a torch tensor and computes in its precision (``_ops``):
    the plans evaluate them in float64, the score_sde face on the caller's tensors. ``drift_coef(t)`` is the
    scalar ``f(t)`` (the drift is ``f(t) x``); ``diffusion(t)`` is ``g(t)``.
    """

    T = 1.0

    def __init__(self, N: int):
        _check_int("N", N, 1)
        self.N = int(N)

    def drift_coef(self, t):
        raise NotImplementedError

    def diffusion(self, t):
        raise NotImplementedError

    def mean_coef(self, t):
        raise NotImplementedError

    def marginal_std(self, t):
        raise NotImplementedError

    def time_index(self, t):
        """The discretisation step of time ``t``: ``floor(t (N - 1) / T)``, in ``t``'s precision (score_sde
        truncates a float32 product; for ``t >= 0`` truncation is the floor)."""
        if isinstance(t, torch.Tensor):
            return (t * (self.N - 1) / self.T).long()
        return np.floor(np.asarray(t, dtype=np.float64) * (self.N - 1) / self.T).astype(np.int64)

    def euler_discretize(self, t):
        """``(f_i, G_i)`` of the Euler-Maruyama step over ``dt = T/N`` (score_sde's default ``discretize``):
        ``x_{i+1} = x_i + f_i x_i + G_i z`` with ``f_i = f(t) dt``, ``G_i = g(t) sqrt(dt)``."""
        dt = 1.0 / self.N
        return self.drift_coef(t) * dt, self.diffusion(t) * math.sqrt(dt)


class VPSDESchedule(ScoreSDESchedule):
    """Variance-preserving SDE: ``beta(t) = b0 + (b1 - b0) t``, ``f = -beta/2``, ``g = sqrt(beta)``;
    ``log m(t) = -(b1 - b0) t^2/4 - b0 t/2`` (``VPLinear.log_alpha``), ``std = sqrt(1 - m^2)``.
    Discrete (DDPM, Ho et al. 2020): ``beta_i = linspace(b0/N, b1/N, N)``, ``alpha_i = 1 - beta_i``; the step
    ``x_{i+1} = sqrt(alpha_i) x_i + sqrt(beta_i) z`` gives ``f_i = sqrt(alpha_i) - 1``, ``G_i = sqrt(beta_i)``
    (score_sde's ``VPSDE.discretize``)."""

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, N: int = 1000):
        super().__init__(N)
        self.beta_0, self.beta_1 = float(beta_0), float(beta_1)
        self._lin = VPLinear(self.beta_0, self.beta_1)

    def beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coef(self, t):
        return self._lin.log_alpha(t)

    def mean_coef(self, t):
        lm = self.log_mean_coef(t)
        return _ops(lm).exp(lm)

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        b = self.beta(t)
        return _ops(b).sqrt(b)

    def marginal_std(self, t):
        lm = self.log_mean_coef(t)
        return _ops(lm).sqrt(1.0 - _ops(lm).exp(2.0 * lm))

    @property
    def discrete_betas(self) -> np.ndarray:
        return np.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N, dtype=np.float64)

    @property
    def discrete_alphas(self) -> np.ndarray:
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.discrete_alphas)

    def ddpm_discretize(self, i):
        """``(f_i, G_i)`` of the DDPM step ``i`` (an int array)."""
        beta = self.discrete_betas[np.asarray(i)]
        return np.sqrt(1.0 - beta) - 1.0, np.sqrt(beta)


class SubVPSDESchedule(VPSDESchedule):
    """sub-VP SDE (Song et al. 2021, eq. 29): VP's drift, ``g = sqrt(beta(t) (1 - e^{-2 int_0^t beta}))``;
    ``m(t)`` as VP, ``std = 1 - m(t)^2`` (the marginal variance is ``(1 - m^2)^2``, below VP's ``1 - m^2``).
    ``int_0^t beta = b0 t + (b1 - b0) t^2 / 2 = -2 log m(t)``, so the discount is ``1 - m^4``. Its
    discretisation is Euler-Maruyama (score_sde defines no other); its discrete betas are VP's, kept for
    the Langevin corrector's ``alpha`` (see ``pydiff.score_sde.sampling``)."""

    def diffusion(self, t):
        discount = 1.0 - _ops(t).exp(4.0 * self.log_mean_coef(t))
        v = self.beta(t) * discount
        return _ops(v).sqrt(v)

    def marginal_std(self, t):
        lm = self.log_mean_coef(t)
        return 1.0 - _ops(lm).exp(2.0 * lm)


class VESDESchedule(ScoreSDESchedule):
    """Variance-exploding SDE: ``sigma(t) = smin (smax/smin)^t``, ``f = 0``,
    ``g = sigma(t) sqrt(2 log(smax/smin))`` (so that ``d sigma^2/dt = g^2``), ``m = 1``, ``std = sigma(t)``.
    Discrete (SMLD/NCSN, Song & Ermon 2019): ``sigma_i = exp(linspace(log smin, log smax, N))``, the step
    ``x_{i+1} = x_i + sqrt(sigma_i^2 - sigma_{i-1}^2) z`` with ``sigma_{-1} = 0``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t):
        # score_sde's form smin * (smax/smin)**t, in t's precision (a float32 power for float32 t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def mean_coef(self, t):
        return t * 0.0 + 1.0

    def drift_coef(self, t):
        return t * 0.0

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    def marginal_std(self, t):
        return self.sigma(t)

    @property
    def discrete_sigmas(self) -> np.ndarray:
        return np.exp(np.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N, dtype=np.float64))

    def adjacent_sigmas(self, i):
        """``(sigma_i, sigma_{i-1})`` for int steps ``i``, with ``sigma_{-1} = 0``."""
        i = np.asarray(i)
        s = self.discrete_sigmas
        return s[i], np.where(i == 0, 0.0, s[np.maximum(i - 1, 0)])

    def smld_discretize(self, i):
        """``(f_i, G_i) = (0, sqrt(sigma_i^2 - sigma_{i-1}^2))`` of the SMLD step ``i``."""
        s, adj = self.adjacent_sigmas(i)
        return np.zeros_like(s), np.sqrt(s * s - adj * adj)
