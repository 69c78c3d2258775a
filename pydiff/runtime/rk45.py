"""A device-resident Dormand-Prince 5(4) integrator (``pydiff.plans.dopri``) with scipy's RK45 step control.

The problem is semi-linear, ``dy/dt = F(t, y) = p(t) y + q(t) m(y, t)`` with ``m`` a model output (the
probability-flow ODE of a score SDE is one): every stage is one model call and one ``fused_step``, which
writes the stage slope ``k_s`` (``w_out``) and the next stage state (its output; ``y`` and the earlier slopes
are its history tensors). The FSAL stage writes ``k_7`` and the error estimate ``err = h sum_j e_j k_j``
formed from the unrounded ``k_7`` in the same pass. The state stays on the device in its own dtype.

The step-size control is scipy's ``solve_ivp(method='RK45')`` (scipy 1.17's ``RungeKutta._step_impl`` and
``select_initial_step``; Hairer, Norsett & Wanner, *Solving ODEs I*, II.4):

* error norm ``||err / (atol + rtol max(|y|, |y_new|))||_rms`` over every element of the batch;
* accept when the norm is below 1; the next ``|h|`` is ``|h| min(MAX_FACTOR, SAFETY norm^(-1/5))``
  (``MAX_FACTOR`` for a zero norm; at most 1 after a rejection in the same step), a rejection multiplies
  ``|h|`` by ``max(MIN_FACTOR, SAFETY norm^(-1/5))``; ``SAFETY = 0.9``, ``MIN_FACTOR = 0.2``,
  ``MAX_FACTOR = 10``; the last step is cut to end exactly at ``t1``;
* the initial step: ``d0 = ||y0/sc||``, ``d1 = ||f0/sc||`` (``sc = atol + rtol |y0|``), ``h0 = 0.01 d0/d1``
  (``1e-6`` if either is below ``1e-5``) capped by the interval; one Euler step of ``h0`` and
  ``d2 = ||(F(t0 + h0, y0 + h0 f0) - f0)/sc|| / h0``; ``h1 = (0.01/max(d1, d2))^(1/5)`` (``max(1e-6,
  1e-3 h0)`` if both are below ``1e-15``); ``|h| = min(100 h0, h1, |t1 - t0|)``;
* a step below ``10 ulp(t)`` fails (scipy reports failure; this raises ``RuntimeError``), and so does a
  non-finite state or derivative at ``t0`` (where scipy's first step would be NaN).

The norms are reduced on the device (elementwise scale, one ``sumsq``); the host reads one number per
attempt: **one host sync per accepted or rejected step** (two more to choose the first step). The host
builds the attempt's seven float64 rows from that number and copies them to the device in one transfer.
NFE as scipy counts it: 2 for the start (``f0`` and the initial-step probe), 6 per attempt.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from pydiff.ops import compute_dtype, fused_step, sumsq
from pydiff.plans import dopri

SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
ERROR_EXPONENT = -1.0 / (dopri.ERROR_ORDER + 1)


class RK45Result(NamedTuple):
    """The end state, the time it reached, and scipy's counters."""
    y: torch.Tensor
    t: float
    nfev: int
    n_accepted: int
    n_rejected: int


def _sums_of_squares(tensors, scale, backend):
    """``[sum((v/scale)^2) for v in tensors]`` (1 or 2 tensors) on the device, a tensor of that length."""
    ratios = [v.to(scale.dtype) / scale for v in tensors]
    s = sumsq(*ratios, backend=backend)  # per-sample sums (B,) in the compute dtype, a pair for two tensors
    return torch.stack([v.sum() for v in (s if isinstance(s, tuple) else (s,))])


def _error_scale(y, y_new, atol, rtol, T):
    return torch.maximum(y.abs(), y_new.abs()).to(T).mul_(rtol).add_(atol)


def solve_rk45(model_fn, coef_fn, y0: torch.Tensor, t0: float, t1: float, rtol: float, atol: float,
               backend=None) -> RK45Result:
    """Integrate ``dy/dt = p(t) y + q(t) m(y, t)`` from ``t0`` to ``t1`` (either direction) with Dormand-Prince
    5(4) and scipy's RK45 error control (module docstring). Returns ``RK45Result`` (the final state only; no
    dense output).

    Args:
        model_fn: ``model_fn(y, t) -> m``, ``t`` a Python float; ``m`` shaped like ``y``.
        coef_fn: ``coef_fn(t) -> (p, q)``, float64 arrays for a float64 array of times.
        y0: the initial state ``(B, ...)``, float32 or float64 (the integrator's working dtype).
        t0, t1: the interval.
        rtol, atol: scipy's tolerances (> 0).
        backend: the ``pydiff.ops`` backend (None: automatic).
    """
    t0, t1 = float(t0), float(t1)
    y = y0.contiguous().clone()
    n = y.numel()
    T = compute_dtype(y.dtype)
    dev = y.device
    if t1 == t0:
        return RK45Result(y, t0, 0, 0, 0)
    direction = 1.0 if t1 > t0 else -1.0
    interval = abs(t1 - t0)

    def device_row(row):
        return torch.as_tensor(row, dtype=T, device=dev)

    def model(x, t):
        m = model_fn(x, t)
        return m if m.dtype == x.dtype else m.to(x.dtype)

    def rms(sums):
        return [math.sqrt(v / n) for v in sums.tolist()]  # the host sync

    # ---- f0 and the initial step (select_initial_step)
    p, q = coef_fn(np.array([t0]))
    k1 = fused_step(y, model(y, t0), device_row(dopri.derivative_row(p[0], q[0])), backend=backend)
    scale0 = y.abs().to(T).mul_(rtol).add_(atol)
    d0, d1 = rms(_sums_of_squares((y, k1), scale0, backend))
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise RuntimeError(f"solve_rk45: non-finite state or derivative at t0 = {t0!r} (rms {d0:.3g}, {d1:.3g})")
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, interval)
    t_probe = t0 + h0 * direction
    y1 = fused_step(y, k1, device_row(dopri.euler_row(h0 * direction)), backend=backend)
    p, q = coef_fn(np.array([t_probe]))
    diff = fused_step(y1, model(y1, t_probe), device_row(dopri.derivative_change_row(p[0], q[0])), hist=(k1,),
                      backend=backend)
    d2 = rms(_sums_of_squares((diff,), scale0, backend))[0] / h0
    del y1, diff, scale0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (dopri.ERROR_ORDER + 1))
    h_abs = min(100 * h0, h1, interval)
    nfev = 2

    # ---- the steps
    ks = [k1] + [torch.empty_like(y) for _ in range(6)]
    ys = torch.empty_like(y)  # the stage state, overwritten in place stage after stage; ends as y_new
    err = torch.empty_like(y)
    t, n_acc, n_rej = t0, 0, 0
    while direction * (t - t1) < 0:
        min_step = 10 * abs(np.nextafter(t, direction * np.inf) - t)
        h_abs = max(h_abs, min_step)
        rejected = False
        while True:
            if h_abs < min_step:
                raise RuntimeError(f"solve_rk45: the step size fell below 10 ulp of t = {t!r} (|h| = {h_abs:.3g}); "
                                   f"the error norm did not drop below 1 (a non-finite derivative?)")
            h = h_abs * direction
            t_new = t + h
            if direction * (t_new - t1) > 0:
                t_new = t1
            h = t_new - t
            h_abs = abs(h)
            times = t + dopri.STAGE_TIMES * h
            p, q = coef_fn(times)
            rows = device_row(dopri.attempt_rows(h, p, q))
            fused_step(y, ks[0], rows[0], out=ys, backend=backend)
            for s in range(1, 7):
                hist = tuple(y if j == "y" else ks[j] for j in dopri.HIST[s - 1])
                fused_step(ys, model(ys, float(times[s - 1])), rows[s], out=(ys if s < 6 else err), w_out=ks[s],
                           hist=hist, backend=backend)
            nfev += 6
            norm = rms(_sums_of_squares((err,), _error_scale(y, ys, atol, rtol, T), backend))[0]
            if norm < 1:
                factor = MAX_FACTOR if norm == 0 else min(MAX_FACTOR, SAFETY * norm ** ERROR_EXPONENT)
                if rejected:
                    factor = min(1.0, factor)
                h_abs *= factor
                break
            h_abs *= max(MIN_FACTOR, SAFETY * norm ** ERROR_EXPONENT)
            rejected = True
            n_rej += 1
        n_acc += 1
        t = t_new
        y, ys = ys, y
        ks[0], ks[6] = ks[6], ks[0]
    return RK45Result(y, t, nfev, n_acc, n_rej)
