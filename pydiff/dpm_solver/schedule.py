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
``lambda`` back to ``t``. The formulas are ``pydiff.schedules``' (written once for tensors and arrays): the
torch methods here evaluate them on tensors of any device and dtype, with the ``'discrete'`` tables rounded
to ``dtype`` as the authors store them; the plans use the float64 schedule in ``.vp``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import schedules as sch
from ._checks import check_choice, check_number

SCHEDULES = ("discrete", "linear", "cosine")
CLIPPED_LAMBDA = sch.CLIPPED_LAMBDA


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
    return torch.stack([sch.piecewise_linear(x[:, c], xp[c], yp[c]) for c in range(xp.shape[0])], dim=1)


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
        vp: the float64 ``pydiff.schedules`` schedule the plans are computed from.
    """

    def __init__(self, schedule="discrete", betas=None, alphas_cumprod=None, continuous_beta_0=0.1,
                 continuous_beta_1=20., dtype=torch.float32):
        check_choice("schedule", schedule, SCHEDULES)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.schedule = schedule
        self.dtype = dtype
        if schedule == "discrete":
            self.vp = self._discrete(betas, alphas_cumprod).clip_lambda(CLIPPED_LAMBDA).continuous()
            self.T = 1.
            self.total_N = self.vp.N
            self.log_alpha_array = torch.from_numpy(self.vp.log_alpha_knots.copy()).reshape(1, -1).to(dtype)
            self.t_array = torch.from_numpy(self.vp.t_knots.copy()).reshape(1, -1).to(dtype)
            return
        if betas is not None or alphas_cumprod is not None:
            raise ValueError(f"betas/alphas_cumprod are only used by schedule='discrete', not {schedule!r}")
        self.total_N = 1000
        self.beta_0 = check_number("continuous_beta_0", continuous_beta_0, low=0.0)
        self.beta_1 = check_number("continuous_beta_1", continuous_beta_1, low=0.0)
        if schedule == "linear":
            if not self.beta_1 > self.beta_0:
                raise ValueError(f"continuous_beta_1 must exceed continuous_beta_0, got {self.beta_0}, {self.beta_1}")
            self.vp = sch.VPLinear(self.beta_0, self.beta_1)
        else:
            self.vp = sch.VPCosine()
            self.cosine_s = self.vp.s
            self.cosine_beta_max = 999.
            self.cosine_t_max = (math.atan(self.cosine_beta_max * (1. + self.cosine_s) / math.pi)
                                 * 2. * (1. + self.cosine_s) / math.pi - self.cosine_s)
            self.cosine_log_alpha_0 = self.vp.log_alpha_0
        self.T = self.vp.T  # 0.9946 for cosine: alpha_t -> 0 at t = 1; this end keeps lambda finite

    # ----------------------------------------------------------------- construction helpers
    @staticmethod
    def _discrete(betas, alphas_cumprod):
        """The float64 ``pydiff.schedules.DiscreteSchedule`` of the given table, after the authors' checks."""
        if betas is None and alphas_cumprod is None:
            raise ValueError("schedule='discrete' needs betas or alphas_cumprod")
        if betas is not None:
            b = _table("betas", betas)
            if not np.all((b > 0) & (b < 1)):
                raise ValueError("betas must all lie in (0, 1)")
            table = sch.DiscreteSchedule.from_betas(b)
            if alphas_cumprod is not None:
                ac = _table("alphas_cumprod", alphas_cumprod)
                if ac.shape != b.shape or not np.allclose(0.5 * np.log(ac), table.log_alphas, rtol=1e-4, atol=1e-6):
                    raise ValueError("betas and alphas_cumprod were both given and disagree; give one of them")
            return table
        ac = _table("alphas_cumprod", alphas_cumprod)
        if not np.all((ac > 0) & (ac <= 1)):
            raise ValueError("alphas_cumprod must all lie in (0, 1]")
        if not np.all(np.diff(ac) < 0):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        return sch.DiscreteSchedule.from_alphas_cumprod(ac)

    def numerical_clip_alpha(self, log_alphas, clipped_lambda=-5.1):
        """``log_alphas`` (a 1-D tensor) without its trailing entries whose ``lambda < clipped_lambda``."""
        n_low = sch.low_snr_count(log_alphas, clipped_lambda)
        return log_alphas[: log_alphas.shape[0] - n_low] if n_low else log_alphas

    def _tables(self, like):
        """The discrete knots as tensors on ``like``'s device, in the wider of its dtype and ``self.dtype``."""
        t_arr = self.t_array.to(like.device, torch.promote_types(like.dtype, self.dtype)).reshape(-1)
        return t_arr, self.log_alpha_array.to(t_arr).reshape(-1)

    # ----------------------------------------------------------------- torch API
    def marginal_log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha_t`` for continuous times ``t`` (tensor)."""
        if self.schedule == "discrete":
            t_arr, la = self._tables(t)
            return sch.piecewise_linear(t.reshape(-1).to(t_arr), t_arr, la)
        return self.vp.log_alpha(t)

    def marginal_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_t``."""
        return torch.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t = sqrt(1 - alpha_t^2)``."""
        return sch.sigma_from_log_alpha(self.marginal_log_mean_coeff(t))

    def marginal_lambda(self, t: torch.Tensor) -> torch.Tensor:
        """Half-logSNR ``lambda_t = log alpha_t - log sigma_t``."""
        return sch.lambda_from_log_alpha(self.marginal_log_mean_coeff(t))

    def inverse_lambda(self, lamb: torch.Tensor) -> torch.Tensor:
        """The time ``t`` whose half-logSNR is ``lamb``."""
        if self.schedule == "discrete":
            t_arr, la = self._tables(lamb)
            log_alpha = sch.log_alpha_from_lambda(lamb.reshape(-1).to(la))
            return sch.piecewise_linear(log_alpha, torch.flip(la, [0]), torch.flip(t_arr, [0]))
        return self.vp.inverse_lambda(lamb)

    # ----------------------------------------------------------------- float64 host values (the runtime's)
    def _lambda64(self, t):
        return self.vp.lambda_(t)

    def __repr__(self):
        return f"NoiseScheduleVP(schedule={self.schedule!r}, T={self.T}, total_N={self.total_N})"
