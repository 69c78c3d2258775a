"""``NoiseScheduleVP``: the variance-preserving forward process ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``.

Three schedules, as in the DPM-Solver authors' ``dpm_solver_pytorch.py``:

* ``'discrete'``: a DDPM-style table (``betas`` or ``alphas_cumprod``, length N) placed at the
  continuous times ``t_n = (n + 1) / N``; ``log alpha_t`` is piecewise linear in ``t`` between them
  (linear extrapolation outside). Entries whose half-logSNR ``lambda`` is below ``-5.1`` are dropped
  from the end of the table first (this keeps cosine-type tables, whose ``alpha`` reaches ~0, stable),
  and the remaining N' entries are re-placed at ``(n + 1) / N'``.
* ``'linear'``: the continuous VP-SDE with ``beta(t) = beta_0 + t (beta_1 - beta_0)``, so
  ``log alpha_t = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2``, on ``t in (0, 1]``.
* ``'cosine'``: the continuous cosine schedule of improved DDPM (s = 0.008),
  ``alpha_t = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2)``, on ``t in (0, 0.9946]``.

``sigma_t = sqrt(1 - alpha_t^2)`` and ``lambda_t = log alpha_t - log sigma_t``; ``inverse_lambda`` maps
``lambda`` back to ``t``. The torch methods work on tensors of any device and dtype; the sampler's plan
compiler uses the float64 host versions (``_log_alpha64`` and friends), which evaluate the same functions.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_choice, check_number

SCHEDULES = ("discrete", "linear", "cosine")
CLIPPED_LAMBDA = -5.1


def expand_dims(v: torch.Tensor, dims: int) -> torch.Tensor:
    """View a ``(N,)`` tensor as ``(N, 1, ..., 1)`` with ``dims`` dimensions in all."""
    return v[(...,) + (None,) * (dims - 1)]


def interpolate_fn(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``y = f(x)`` through the keypoints ``(xp, yp)``, extrapolated linearly outside.

    Args:
        x: ``(N, C)`` query points.
        xp: ``(C, K)`` keypoints, increasing along ``K`` (K >= 2).
        yp: ``(C, K)`` values at the keypoints.

    Returns:
        ``(N, C)`` values. Differentiable in ``x`` and ``yp`` (the segment choice is not).
    """
    K = xp.shape[1]
    xq = x.transpose(0, 1).contiguous()                                   # (C, N)
    seg = torch.searchsorted(xp.contiguous(), xq, right=True) - 1
    seg = seg.clamp(0, K - 2)
    x0, x1 = torch.gather(xp, 1, seg), torch.gather(xp, 1, seg + 1)
    y0, y1 = torch.gather(yp, 1, seg), torch.gather(yp, 1, seg + 1)
    return (y0 + (xq - x0) * (y1 - y0) / (x1 - x0)).transpose(0, 1)


def _interp64(x, xp, fp):
    """float64 numpy twin of ``interpolate_fn`` for one channel (``xp`` increasing)."""
    x = np.asarray(x, dtype=np.float64)
    seg = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    x0, x1, y0, y1 = xp[seg], xp[seg + 1], fp[seg], fp[seg + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def _table(name, value):
    if isinstance(value, torch.Tensor):
        arr = value.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a 1-D tensor or array of floats, got {type(value).__name__}") from None
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 entries, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


class NoiseScheduleVP:
    """The VP forward process of a diffusion model: ``alpha_t``, ``sigma_t``, ``lambda_t`` and its inverse.

    Args:
        schedule: ``'discrete'`` (a DDPM table), ``'linear'`` or ``'cosine'`` (continuous time).
        betas: for ``'discrete'``: the DDPM betas, each in (0, 1). Give this or ``alphas_cumprod``.
        alphas_cumprod: for ``'discrete'``: DDPM's ``alpha-bar_n = prod(1 - beta)``, strictly decreasing in
            (0, 1]. Note ``alpha_{t_n} = sqrt(alphas_cumprod[n])``.
        continuous_beta_0, continuous_beta_1: the ``'linear'`` schedule's ``beta(0)`` and ``beta(1)``.
        dtype: dtype of the stored ``t_array`` / ``log_alpha_array`` tables (``'discrete'``).

    Attributes:
        T: the largest time (1, or 0.9946 for ``'cosine'``); ``total_N``: the table length after clipping
        (``'discrete'``), else 1000. Sampling runs by default from ``T`` to ``1 / total_N``.
    """

    def __init__(self, schedule="discrete", betas=None, alphas_cumprod=None, continuous_beta_0=0.1,
                 continuous_beta_1=20., dtype=torch.float32):
        check_choice("schedule", schedule, SCHEDULES)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.schedule = schedule
        self.dtype = dtype
        if schedule == "discrete":
            log_alphas = self._discrete_log_alphas(betas, alphas_cumprod)
            log_alphas = self._clip64(log_alphas)
            self.T = 1.
            self.total_N = int(log_alphas.shape[0])
            self._t64 = np.linspace(0., 1., self.total_N + 1)[1:]
            self._log_alpha_tab64 = log_alphas
            self.log_alpha_array = torch.from_numpy(log_alphas.copy()).reshape(1, -1).to(dtype)
            self.t_array = torch.from_numpy(self._t64.copy()).reshape(1, -1).to(dtype)
            return
        if betas is not None or alphas_cumprod is not None:
            raise ValueError(f"betas/alphas_cumprod are only used by schedule='discrete', not {schedule!r}")
        self.total_N = 1000
        self.beta_0 = check_number("continuous_beta_0", continuous_beta_0, low=0.0)
        self.beta_1 = check_number("continuous_beta_1", continuous_beta_1, low=0.0)
        if schedule == "linear":
            if not self.beta_1 > self.beta_0:
                raise ValueError(f"continuous_beta_1 must exceed continuous_beta_0, got {self.beta_0}, {self.beta_1}")
            self.T = 1.
        else:
            self.cosine_s = 0.008
            self.cosine_beta_max = 999.
            self.cosine_t_max = (math.atan(self.cosine_beta_max * (1. + self.cosine_s) / math.pi)
                                 * 2. * (1. + self.cosine_s) / math.pi - self.cosine_s)
            self.cosine_log_alpha_0 = math.log(math.cos(self.cosine_s / (1. + self.cosine_s) * math.pi / 2.))
            self.T = 0.9946  # alpha_t -> 0 at t = 1; this end keeps lambda finite

    # ----------------------------------------------------------------- construction helpers
    @staticmethod
    def _discrete_log_alphas(betas, alphas_cumprod):
        if betas is None and alphas_cumprod is None:
            raise ValueError("schedule='discrete' needs betas or alphas_cumprod")
        if betas is not None:
            b = _table("betas", betas)
            if not np.all((b > 0) & (b < 1)):
                raise ValueError("betas must all lie in (0, 1)")
            log_alphas = 0.5 * np.cumsum(np.log1p(-b))
            if alphas_cumprod is not None:
                ac = _table("alphas_cumprod", alphas_cumprod)
                if ac.shape != b.shape or not np.allclose(0.5 * np.log(ac), log_alphas, rtol=1e-4, atol=1e-6):
                    raise ValueError("betas and alphas_cumprod were both given and disagree; give one of them")
            return log_alphas
        ac = _table("alphas_cumprod", alphas_cumprod)
        if not np.all((ac > 0) & (ac <= 1)):
            raise ValueError("alphas_cumprod must all lie in (0, 1]")
        if not np.all(np.diff(ac) < 0):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        return 0.5 * np.log(ac)

    @staticmethod
    def _clip64(log_alphas):
        """Drop the trailing entries whose lambda is below -5.1 (see the module docstring)."""
        lambdas = log_alphas - 0.5 * np.log(-np.expm1(2.0 * log_alphas))
        n_low = int(np.count_nonzero(lambdas < CLIPPED_LAMBDA))
        if n_low >= log_alphas.shape[0] - 1:
            raise ValueError("the schedule's logSNR is below the clip at lambda=-5.1 almost everywhere")
        return log_alphas[: log_alphas.shape[0] - n_low] if n_low else log_alphas

    def numerical_clip_alpha(self, log_alphas, clipped_lambda=-5.1):
        """``log_alphas`` (a 1-D tensor) without its trailing entries whose ``lambda < clipped_lambda``."""
        lambdas = log_alphas - 0.5 * torch.log(-torch.expm1(2. * log_alphas))
        n_low = int((lambdas < clipped_lambda).sum())
        return log_alphas[: log_alphas.shape[0] - n_low] if n_low else log_alphas

    # ----------------------------------------------------------------- torch API
    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha_t`` for continuous times ``t`` (tensor)."""
        if self.schedule == "discrete":
            t_arr = self.t_array.to(t.device, torch.promote_types(t.dtype, self.dtype))
            la = self.log_alpha_array.to(t_arr)
            return interpolate_fn(t.reshape(-1, 1).to(t_arr), t_arr, la).reshape(-1)
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        angle = (t + self.cosine_s) / (1. + self.cosine_s) * (math.pi / 2.)
        return torch.log(torch.cos(angle)) - self.cosine_log_alpha_0

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_t``."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t = sqrt(1 - alpha_t^2)``."""
        return torch.sqrt(-torch.expm1(2. * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Half-logSNR ``lambda_t = log alpha_t - log sigma_t``."""
        log_alpha = self.marginal_log_mean_coeff(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2. * log_alpha))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The time ``t`` whose half-logSNR is ``lamb``."""
        log_alpha = -0.5 * torch.nn.functional.softplus(-2. * lamb)   # log(1/sqrt(1 + e^{-2 lambda}))
        if self.schedule == "linear":
            tmp = 2. * (self.beta_1 - self.beta_0) * torch.nn.functional.softplus(-2. * lamb)
            delta = self.beta_0 ** 2 + tmp
            return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)
        if self.schedule == "discrete":
            la = torch.flip(self.log_alpha_array, [1]).to(lamb.device, torch.promote_types(lamb.dtype, self.dtype))
            ta = torch.flip(self.t_array, [1]).to(la)
            return interpolate_fn(log_alpha.reshape(-1, 1).to(la), la, ta).reshape(-1)
        return (torch.arccos(torch.exp(log_alpha + self.cosine_log_alpha_0)) * 2. * (1. + self.cosine_s) / math.pi
                - self.cosine_s)

    # ----------------------------------------------------------------- float64 host versions (plans)
    def _log_alpha64(self, t):
        t = np.asarray(t, dtype=np.float64)
        if self.schedule == "discrete":
            return _interp64(t, self._t64, self._log_alpha_tab64)
        if self.schedule == "linear":
            return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        return np.log(np.cos((t + self.cosine_s) / (1. + self.cosine_s) * (math.pi / 2.))) - self.cosine_log_alpha_0

    def _lambda64(self, t):
        la = self._log_alpha64(t)
        return la - 0.5 * np.log(-np.expm1(2. * la))

    def _inverse_lambda64(self, lam):
        lam = np.asarray(lam, dtype=np.float64)
        softplus = np.logaddexp(0., -2. * lam)
        log_alpha = -0.5 * softplus
        if self.schedule == "linear":
            tmp = 2. * (self.beta_1 - self.beta_0) * softplus
            return tmp / (np.sqrt(self.beta_0 ** 2 + tmp) + self.beta_0) / (self.beta_1 - self.beta_0)
        if self.schedule == "discrete":
            return _interp64(log_alpha, self._log_alpha_tab64[::-1].copy(), self._t64[::-1].copy())
        return (np.arccos(np.exp(log_alpha + self.cosine_log_alpha_0)) * 2. * (1. + self.cosine_s) / math.pi
                - self.cosine_s)

    def __repr__(self):
        return f"NoiseScheduleVP(schedule={self.schedule!r}, T={self.T}, total_N={self.total_N})"
