"""The SDEs of score_sde_pytorch's ``sde_lib``: ``SDE``, ``VPSDE``, ``subVPSDE``, ``VESDE``.

Same constructors, attributes, methods and tensor dtypes as Song et al.'s reference (score SDE,
arXiv:2011.13456): torch tensors in, torch tensors out, in the precision of ``t`` (float32 in their sampler).
The formulas are ``pydiff.schedules``' ``VPSDESchedule``, ``SubVPSDESchedule`` and ``VESDESchedule``; these
classes only shape tensors. Differences from the reference, all where it fails:

* the batch axis is broadcast over any rank (the reference indexes ``[:, None, None, None]``, 4-D only);
* ``subVPSDE`` has ``discrete_betas`` and ``alphas`` (VP's), which the Langevin correctors read -- the
  reference's correctors raise ``AttributeError`` on a subVPSDE;
* ``reverse(score_fn, probability_flow=True).sde`` returns a zero diffusion *tensor* (the reference returns
  the float ``0.``, on which its Euler-Maruyama predictor fails).
"""
from __future__ import annotations

import abc

import numpy as np
import torch

from .. import schedules
from ..plans import score_sde as plan


def batch_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample ``(B,)`` tensor viewed as ``(B, 1, ..., 1)`` to broadcast against ``x``."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _as_time(t, x=None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    return t


class SDE(abc.ABC):
    """An SDE ``dx = f(x, t) dt + g(t) dw`` on ``[0, T]``, discretised in ``N`` steps; methods take a batch."""

    def __init__(self, N):
        super().__init__()
        schedules._check_int("N", N, 1)
        self.N = N

    @property
    @abc.abstractmethod
    def T(self):
        """End time of the SDE."""

    @abc.abstractmethod
    def sde(self, x, t):
        """``(drift, diffusion)``: ``f(x, t)`` shaped like ``x`` and ``g(t)`` of shape ``(B,)``."""

    @abc.abstractmethod
    def marginal_prob(self, x, t):
        """``(mean, std)`` of ``p_t(x_t | x_0 = x)``."""

    @abc.abstractmethod
    def prior_sampling(self, shape):
        """One draw from the prior ``p_T`` (torch's global generator, float32 on the CPU, as the reference)."""

    @abc.abstractmethod
    def prior_logp(self, z):
        """Log-density of the prior at ``z``, per sample."""

    def discretize(self, x, t):
        """``(f, G)`` of ``x_{i+1} = x_i + f + G z`` (Euler-Maruyama over ``dt = 1/N``, ``schedules``)."""
        _as_time(t)
        f_coef, G = self._schedule.euler_discretize(t)
        return batch_view(f_coef, x) * x, G

    def reverse(self, score_fn, probability_flow=False):
        """The reverse-time SDE ``dx = [f - g^2 s] dt + g dw-bar`` or, with ``probability_flow``, the ODE
        ``dx = [f - g^2 s / 2] dt`` (Song et al. 2021, eqs. 6 and 13), as an object of a subclass of this
        SDE's class with ``sde(x, t)`` and ``discretize(x, t)`` (and ``N``, ``T``, ``probability_flow``)."""
        forward = self
        base = type(self)

        class RSDE(base):
            def __init__(self):  # noqa: D401  (no parent init: the forward SDE holds the state)
                self.__dict__.update(forward.__dict__)
                self.probability_flow = probability_flow

            def sde(self, x, t):
                drift, diffusion = forward.sde(x, t)
                return plan.reverse_terms(drift, diffusion, score_fn(x, t), probability_flow, x)

            def discretize(self, x, t):
                f, G = forward.discretize(x, t)
                return plan.reverse_terms(f, G, score_fn(x, t), probability_flow, x, discrete=True)

        RSDE.__name__ = RSDE.__qualname__ = f"Reverse{base.__name__}"
        return RSDE()


def _prior_logp_gauss(z, var):
    n = int(np.prod(z.shape[1:]))
    return -n / 2.0 * np.log(2 * np.pi * var) - torch.sum(z.reshape(z.shape[0], -1) ** 2, dim=1) / (2.0 * var)


class _VPFamily(SDE):
    """What VPSDE and subVPSDE share: ``beta(t)``, the drift ``-beta(t) x / 2``, the mean ``e^{log m(t)} x``."""

    _schedule_cls = schedules.VPSDESchedule

    def __init__(self, beta_min=0.1, beta_max=20, N=1000):
        super().__init__(N)
        self.beta_0 = beta_min
        self.beta_1 = beta_max
        self._schedule = self._schedule_cls(beta_min, beta_max, N)
        self.discrete_betas = torch.from_numpy(self._schedule.discrete_betas).float()
        self.alphas = torch.from_numpy(self._schedule.discrete_alphas).float()

    @property
    def T(self):
        return 1

    def sde(self, x, t):
        _as_time(t)
        s = self._schedule
        return batch_view(s.drift_coef(t), x) * x, s.diffusion(t)

    def marginal_prob(self, x, t):
        _as_time(t)
        s = self._schedule
        return batch_view(s.mean_coef(t), x) * x, s.marginal_std(t)

    def prior_sampling(self, shape):
        return torch.randn(*shape)

    def prior_logp(self, z):
        return _prior_logp_gauss(z, 1.0)


class VPSDE(_VPFamily):
    """Variance-preserving SDE, ``beta(t) = beta_min + t (beta_max - beta_min)``; its discretisation is DDPM
    with ``beta_i = linspace(beta_min/N, beta_max/N, N)`` (tables as float32 tensors, like the reference)."""

    def __init__(self, beta_min=0.1, beta_max=20, N=1000):
        super().__init__(beta_min, beta_max, N)
        ac = self._schedule.alphas_cumprod
        # N < beta_max gives betas > 1 and NaN tables, as in the reference; a sampler that needs them raises
        # (the plans check every row), continuous-time use is unaffected
        with np.errstate(invalid="ignore"):
            self._sqrt_tables = (np.sqrt(ac), np.sqrt(1.0 - ac))
        self.alphas_cumprod = torch.from_numpy(ac).float()
        self.sqrt_alphas_cumprod = torch.from_numpy(self._sqrt_tables[0]).float()
        self.sqrt_1m_alphas_cumprod = torch.from_numpy(self._sqrt_tables[1]).float()

    def discretize(self, x, t):
        """DDPM discretisation at step ``i = floor(t (N-1)/T)``: ``f = (sqrt(alpha_i) - 1) x``, ``G = sqrt(beta_i)``."""
        _as_time(t)
        i = self._schedule.time_index(t)
        f_coef = torch.sqrt(self.alphas.to(x.device)[i]) - 1.0
        return batch_view(f_coef, x) * x, torch.sqrt(self.discrete_betas.to(x.device)[i])


class subVPSDE(_VPFamily):
    """The sub-VP SDE (Song et al. 2021, eq. 29): VP's drift, diffusion ``sqrt(beta(t)(1 - e^{-2 int beta}))``,
    marginal std ``1 - e^{-int beta}``; good likelihoods. Discretised by Euler-Maruyama (``SDE.discretize``).

    Like the reference it is not a ``VPSDE`` (``isinstance`` tells them apart). Unlike it, it carries VP's
    ``discrete_betas`` and ``alphas``: the Langevin correctors' step factor (see ``pydiff.score_sde.sampling``).
    """

    _schedule_cls = schedules.SubVPSDESchedule


class VESDE(SDE):
    """Variance-exploding SDE, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``; its discretisation is SMLD
    with ``discrete_sigmas = exp(linspace(log sigma_min, log sigma_max, N))`` (float32, like the reference)."""

    def __init__(self, sigma_min=0.01, sigma_max=50, N=1000):
        super().__init__(N)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._schedule = schedules.VESDESchedule(sigma_min, sigma_max, N)
        self.discrete_sigmas = torch.from_numpy(self._schedule.discrete_sigmas).float()

    @property
    def T(self):
        return 1

    def sde(self, x, t):
        _as_time(t)
        return torch.zeros_like(x), self._schedule.diffusion(t)

    def marginal_prob(self, x, t):
        _as_time(t)
        return x, self._schedule.marginal_std(t)

    def prior_sampling(self, shape):
        return torch.randn(*shape) * self.sigma_max

    def prior_logp(self, z):
        return _prior_logp_gauss(z, float(self.sigma_max) ** 2)

    def discretize(self, x, t):
        """SMLD discretisation at step ``i = floor(t (N-1)/T)``: ``f = 0``, ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)``
        (``sigma_{-1} = 0``)."""
        _as_time(t)
        i = self._schedule.time_index(t)
        sig = self.discrete_sigmas.to(x.device)
        adj = torch.where(i == 0, torch.zeros_like(t), sig[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sig[i] ** 2 - adj ** 2)
