"""score_sde_pytorch's probability-flow ODE sampler (``sampling.get_ode_sampler``) on pydiff's fused kernels.

Song et al., arXiv:2011.13456, section 4.3 and appendix D.2: integrate the probability-flow ODE
(their eq. 13)

    dx/dt = f(x, t) - g(t)^2 s(x, t) / 2,        s = kappa(t) m(x, t)   (``m`` the raw model output)

from ``t = T`` (a prior sample) to ``t = eps``; ``denoise`` then takes the mean of one reverse-diffusion
predictor step at ``eps`` (the update without its noise), as the reference does. The drift is affine in ``x``
and ``m``: ``a(t) x + d(t) m`` with ``a = f(t)``, ``d = -g(t)^2 kappa(t) / 2`` from
``pydiff.plans.score_sde.flow_drift_coefs`` (float64, at the float32 time the model is given, so the score
scale is the one of the model's label).

Two solvers:

* ``solver='scipy'`` (the reference's): ``scipy.integrate.solve_ivp`` with ``method``, ``rtol``, ``atol`` on the
  flattened state, float64 on the host (scipy widens the reference's float32 arrays); each evaluation moves
  the state to ``device`` as float32, calls the model with the reference's labels and runs **one**
  ``fused_step`` (``out = A x + D m``, a float64 row for that ``t``). Same NFE as the reference.
* ``solver='rk45'``: ``pydiff.runtime.rk45`` -- Dormand-Prince 5(4) with scipy's RK45 step control and error
  norm, device-resident: every stage is one model call and one ``fused_step`` (the stage slope as ``w_out``,
  the next stage state as its output), the error norm is reduced on the device, and the host reads one
  number per step (**one host sync per accepted or rejected step**, two more for the first step). NFE is
  counted as scipy counts it. The state keeps the dtype of the prior sample / ``z`` (float32 or float64).

``ode_sampler(model, z=None) -> (x, nfe)``: ``z`` is the latent to decode (else a prior sample, drawn from
torch's generator as the reference draws it). With ``denoise`` the reference's reverse-diffusion step draws a
noise tensor it discards; it is drawn here too (after the model call, as there), so the generator stays in
step with the reference. ``nfe`` is the solver's count (the denoising call is not counted, as the
reference). After each call ``ode_sampler.last_run`` holds an ``ODERun`` (NFE, accepted and rejected
steps; the rejected count of scipy runs is known for RK45 only).

``continuous`` (a keyword beyond the reference, default the reference's ``True``): the reference always calls
the model with continuous labels; ``continuous=False`` gives a discretely trained model its step labels and
score scale (``pydiff.plans.score_sde.model_labels``/``score_scale``), which are piecewise constant in ``t``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from ..ops import compute_dtype, fused_step
from ..plans import score_sde as plan
from ..runtime import rk45 as _rk45
from . import utils as mutils

SOLVERS = ("scipy", "rk45")
METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")  # solve_ivp's named methods


class ODERun(NamedTuple):
    """Counters of the last ``ode_sampler`` call."""
    nfe: int
    n_accepted: int
    n_rejected: Optional[int]
    solver: str


def _check_method(method):
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS} (scipy.integrate.solve_ivp) or an OdeSolver subclass, "
                             f"got {method!r}")
        return method
    from scipy.integrate import OdeSolver
    if isinstance(method, type) and issubclass(method, OdeSolver):
        return method
    raise TypeError(f"method must be a solve_ivp method name {METHODS} or a scipy OdeSolver subclass, "
                    f"got {type(method).__name__}")


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5, method="RK45", eps=1e-3,
                    device="cuda", solver="scipy", backend=None, continuous=True):
    """The probability-flow ODE sampler (score_sde's ``get_ode_sampler``): ``ode_sampler(model, z=None) ->
    (x, nfe)``.

    Args (the reference's, then pydiff's):
        sde: a ``VPSDE``, ``subVPSDE`` or ``VESDE``.
        shape: the batch shape ``(B, ...)``.
        inverse_scaler: applied to the result (the data normaliser's inverse).
        denoise: finish with the mean of one reverse-diffusion predictor step at ``eps``.
        rtol, atol: the solver's tolerances (> 0).
        method: ``solve_ivp``'s method (a name in ``METHODS`` or an ``OdeSolver`` subclass); ``'RK45'`` only
            with ``solver='rk45'``.
        eps: the last time, in ``(0, T)``.
        device: where the model runs (and, with ``solver='rk45'``, the state lives).
        solver: ``'scipy'`` (host ``solve_ivp``, the reference) or ``'rk45'`` (the device-resident
            Dormand-Prince integrator), see the module.
        backend: the ``pydiff.ops`` backend (None: automatic).
        continuous: the model takes continuous times (the reference's only case) or step labels.

    Returns ``(inverse_scaler(x), nfe)``; ``x`` is float32 with ``solver='scipy'`` (as the reference), in the
    state's dtype with ``'rk45'``.
    """
    from .sampling import _check_choice, _check_number, _check_shape

    schedule = mutils.check_sde(sde)
    shape = _check_shape(shape)
    if not callable(inverse_scaler):
        raise TypeError(f"inverse_scaler must be callable, got {type(inverse_scaler).__name__}")
    rtol = _check_number("rtol", rtol)
    atol = _check_number("atol", atol)
    eps = _check_number("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    method = _check_method(method)
    _check_choice("solver", solver, SOLVERS)
    if solver == "rk45" and method != "RK45":
        raise ValueError(f"method must be 'RK45' with solver='rk45' (the device integrator is Dormand-Prince 5(4)), "
                         f"got {method!r}")
    denoise, continuous = bool(denoise), bool(continuous)
    B, T_end = shape[0], float(sde.T)

    def times32(t):
        """The reference's ``ones(B) * t``: float32 times (a float64 array in, ``(t32 tensor (n,), t64, i)``)."""
        t32 = torch.as_tensor(np.asarray(t, dtype=np.float64)).float().reshape(-1)
        return t32, t32.double().numpy(), schedule.time_index(t32).numpy()

    def coef_fn(t):
        _, t64, i = times32(t)
        return plan.flow_drift_coefs(schedule, t64, plan.score_scale(schedule, t64, i, continuous))

    # the denoising row: the reverse-diffusion predictor's mean at eps (no noise column is used)
    eps32, eps64, eps_i = times32(eps)
    denoise_row = plan.predictor_rows(schedule, "reverse_diffusion", eps64, eps_i,
                                      plan.score_scale(schedule, eps64, eps_i, continuous), False)[0]

    def ode_sampler(model, z=None):
        """Samples from ``model`` (or decodes the latent ``z``) and the number of function evaluations."""
        with torch.no_grad():
            if z is None:
                x = sde.prior_sampling(shape).to(device)
            else:
                if not isinstance(z, torch.Tensor):
                    raise TypeError(f"z must be a torch.Tensor of shape {shape}, got {type(z).__name__}")
                if tuple(z.shape) != shape:
                    raise ValueError(f"z must have the sampler's shape {shape}, got {tuple(z.shape)}")
                x = z
            model_fn = mutils.get_model_fn(model, train=False)

            def m_at(xt, t):
                t32 = torch.full((B,), float(t), dtype=torch.float32, device=xt.device)  # the reference's ones(B) * t
                out = model_fn(xt, plan.model_labels(schedule, t32, continuous))
                return mutils.check_model_output(out, xt).to(xt.dtype)

            if solver == "scipy":
                from scipy import integrate

                def ode_func(t, y):
                    xt = mutils.from_flattened_numpy(y, shape).to(device).type(torch.float32)
                    _, t64, i = times32(t)
                    row = plan.flow_drift_rows(schedule, t64, plan.score_scale(schedule, t64, i, continuous))
                    drift = fused_step(xt, m_at(xt, t), torch.as_tensor(row[0], dtype=torch.float32,
                                                                        device=xt.device), backend=backend)
                    return mutils.to_flattened_numpy(drift)

                sol = integrate.solve_ivp(ode_func, (T_end, eps), mutils.to_flattened_numpy(x), rtol=rtol, atol=atol,
                                          method=method)
                nfe = int(sol.nfev)
                n_acc = len(sol.t) - 1
                n_rej = (nfe - 2) // 6 - n_acc if method == "RK45" else None
                x = torch.tensor(sol.y[:, -1]).reshape(shape).to(device).type(torch.float32)
            else:
                y0 = x.to(device)
                if y0.dtype not in (torch.float32, torch.float64):
                    raise TypeError(f"z must be float32 or float64 for solver='rk45', got {y0.dtype}")
                res = _rk45.solve_rk45(m_at, coef_fn, y0, T_end, eps, rtol, atol, backend=backend)
                x, nfe, n_acc, n_rej = res.y, res.nfev, res.n_accepted, res.n_rejected
            if denoise:
                m = m_at(x, eps)
                # the reference's predictor draws its (discarded) noise here, on its float32 x (scipy's result is
                # cast to float32): the same draw keeps the generator where the reference leaves it
                mutils.randn_like(x if x.dtype == torch.float32 else x.float())
                row = torch.as_tensor(denoise_row, dtype=compute_dtype(x.dtype), device=x.device)
                x = fused_step(x, m, row, backend=backend)
            ode_sampler.last_run = ODERun(nfe, n_acc, n_rej, solver)
            return inverse_scaler(x), nfe

    ode_sampler.last_run = None
    return ode_sampler
