"""Noise schedules and timestep grids, in float64 on the host.

A diffusion process is ``x_t = alpha_t x_0 + sigma_t eps``. Everything a sampler's coefficients need is a
function of ``alpha_t``, ``sigma_t`` and the half log-SNR ``lambda_t = log alpha_t - log sigma_t``
(Kingma et al. 2021; Lu et al., DPM-Solver, arXiv:2206.00927, section 2). The schedules here give those
in float64, so that coefficient plans are exact before they are rounded once to the kernel's dtype.

Discrete (DDPM-style, Ho et al. 2020): ``alpha_bar_n = prod_{i<=n} (1 - beta_i)``, ``alpha_n = sqrt(alpha_bar_n)``.
Continuous VP (Song et al. 2021): linear ``log alpha_t = -(b1-b0) t^2/4 - b0 t/2``, cosine (Nichol &
Dhariwal 2021) ``alpha_t = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2)``. VE: ``sigma_t = smin (smax/smin)^t``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")


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


def _check_int(name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete-time VP schedule given by ``alphas_cumprod`` (``alpha_bar_n``, n = 0..N-1)."""

    alphas_cumprod: np.ndarray

    @classmethod
    def from_betas(cls, betas) -> "DiscreteSchedule":
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas <= 1)):
            raise ValueError("betas must lie in (0, 1]")
        return cls(np.cumprod(1.0 - betas))

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

    def alpha(self, n):
        return np.sqrt(self.alphas_cumprod[np.asarray(n)])

    def sigma(self, n):
        return np.sqrt(1.0 - self.alphas_cumprod[np.asarray(n)])

    def lambda_(self, n):
        ac = self.alphas_cumprod[np.asarray(n)]
        return 0.5 * (np.log(ac) - np.log1p(-ac))


@dataclass(frozen=True)
class VPLinear:
    """Continuous VP-SDE with linear beta(t) = b0 + (b1 - b0) t, t in [0, 1] (Song et al. 2021)."""

    beta_0: float = 0.1
    beta_1: float = 20.0
    T: float = 1.0

    def log_alpha(self, t):
        t = np.asarray(t, dtype=np.float64)
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def sigma(self, t):
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def inverse_lambda(self, lam):
        """t with lambda_t = lam: solve the quadratic in t for log alpha = -0.5 log(1 + e^{-2 lam})."""
        lam = np.asarray(lam, dtype=np.float64)
        tmp = 2.0 * (self.beta_1 - self.beta_0) * np.logaddexp(-2.0 * lam, 0.0)
        delta = self.beta_0 ** 2 + tmp
        return tmp / (np.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)


@dataclass(frozen=True)
class VPCosine:
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021), t in [0, T], T = 0.9946 (alpha stays > 0)."""

    s: float = 0.008
    T: float = 0.9946

    def _log_alpha_0(self):
        return math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t):
        t = np.asarray(t, dtype=np.float64)
        return np.log(np.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0()

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def sigma(self, t):
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * np.log(-np.expm1(2.0 * la))

    def inverse_lambda(self, lam):
        lam = np.asarray(lam, dtype=np.float64)
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return 2.0 * (1.0 + self.s) / math.pi * np.arccos(np.exp(log_alpha + self._log_alpha_0())) - self.s


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


def continuous_timesteps(schedule, steps: int, t_start: float, t_end: float, skip_type: str = "time_uniform"):
    """``steps + 1`` descending times from ``t_start`` to ``t_end`` (DPM-Solver's grids).

    ``time_uniform``: uniform in t; ``logSNR``: uniform in lambda_t (needs ``schedule.inverse_lambda``);
    ``time_quadratic``: uniform in sqrt(t), i.e. denser near t_end.
    """
    _check_int("steps", steps, 1)
    if not t_start > t_end:
        raise ValueError(f"t_start ({t_start}) must be greater than t_end ({t_end})")
    if skip_type == "time_uniform":
        return np.linspace(t_start, t_end, steps + 1)
    if skip_type == "logSNR":
        lam = np.linspace(float(schedule.lambda_(t_start)), float(schedule.lambda_(t_end)), steps + 1)
        return schedule.inverse_lambda(lam)
    if skip_type == "time_quadratic":
        return np.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1) ** 2
    raise ValueError(f"skip_type must be one of ('time_uniform', 'logSNR', 'time_quadratic'), got {skip_type!r}")
