"""Coefficient rows for diffusers' DPM-Solver schedulers (multistep and singlestep), in float64.

DPM-Solver (Lu et al., arXiv:2206.00927) and DPM-Solver++ (Lu et al., arXiv:2211.01095) updates are linear
in the sample and in the converted model outputs, so each one is a ``fused_step`` row: the kernel's
``w = clip(S (P x + Q m))`` is the converted output of the current step (``x0`` for the ``++`` variants, the
noise ``eps`` for ``dpmsolver``), the history tensors are earlier converted outputs, and the finite
differences ``D1 = (m0 - m1) / r0`` etc. of the papers are expanded here into fixed weights on
``m0, m1, m2``. Everything is computed in float64 from the scheduler's own ``sigmas`` (diffusers'
``sigma = sqrt((1 - abar) / abar)``, ``alpha_t = 1 / sqrt(1 + sigma^2)``, ``sigma_t = sigma alpha_t``,
``lambda = log alpha_t - log sigma_t``) — those three in float32 when the sigmas are float32, as diffusers
evaluates them (see ``alpha_sigma``).

Row layout, per scheduler:

* multistep, order ``o`` at step ``i``: ``x`` = the current sample, ``w`` = ``m_i``, ``h1 = m_{i-1}``,
  ``h2 = m_{i-2}``; ``x' = A x + B0 w + B1 h1 + B2 h2 + C z``.
* singlestep, order ``o`` at step ``i``: ``x`` = the current sample (it only enters through the conversion
  ``P x``), ``w = m_i``, ``h1 = m_{i-1}``, ``h2 = m_{i-2}`` and the sample at the start of the singlestep
  block (step ``i - o + 1``) in the last history slot: ``A`` (order 1, it is ``x``), ``B2`` (order 2) or
  ``B3`` (order 3).

Tables have shape ``(3, n, NCOEF)`` (order, step); combinations that no run can reach are NaN.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .ops import COL, NCOEF, coef_row

DPM_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DATA_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")  # w = x0
NOISE_ALGORITHMS = ("dpmsolver", "sde-dpmsolver")  # w = eps


def alpha_sigma(sig):
    """diffusers' ``_sigma_to_alpha_sigma_t`` for VP schedules: ``(alpha_t, sigma_t)`` as float64 arrays.

    ``alpha_t = 1 / sqrt(sigma^2 + 1)``, ``sigma_t = sigma alpha_t``, evaluated in the precision of ``sig``: a
    float32 array is evaluated with torch's float32 ops in diffusers' order (the drop-ins pass diffusers'
    float32 ``sigmas``: with float64 evaluation a singlestep-3 loop differed from diffusers by 1.15e-5,
    with float32 by 2e-6), anything else in float64.
    """
    if np.asarray(sig).dtype == np.float32:
        s = torch.from_numpy(np.array(sig, dtype=np.float32, ndmin=1))
        alpha = 1 / ((s ** 2 + 1) ** 0.5)
        return (alpha.double().numpy().reshape(np.shape(sig)), (s * alpha).double().numpy().reshape(np.shape(sig)))
    sig = np.asarray(sig, dtype=np.float64)
    alpha = 1.0 / np.sqrt(sig * sig + 1.0)
    return alpha, sig * alpha


def half_log_snr(sig):
    """``lambda = log alpha_t - log sigma_t`` (``+inf`` for ``sigma = 0``), in ``sig``'s precision as above."""
    if np.asarray(sig).dtype == np.float32:
        s = torch.from_numpy(np.array(sig, dtype=np.float32, ndmin=1))
        alpha = 1 / ((s ** 2 + 1) ** 0.5)
        return (torch.log(alpha) - torch.log(s * alpha)).double().numpy().reshape(np.shape(sig))
    alpha, sigma = alpha_sigma(sig)
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)


def conversion(algorithm: str, prediction_type: str, alpha: float, sigma: float):
    """``(P, Q, S)`` with the converted output ``S (P x + Q m)``: ``x0`` for the ``++`` algorithms, else ``eps``.

    A division comes last (column ``S``), as diffusers divides last: ``x0 = (x - sigma eps) / alpha`` keeps its
    float32 error at the cancellation error of ``x - sigma eps`` over ``alpha`` (docs/ops.md, column S).
    """
    if prediction_type not in DPM_PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {DPM_PREDICTION_TYPES} on the fused path, "
                         f"got {prediction_type!r}")
    if algorithm in DATA_ALGORITHMS:
        if prediction_type == "epsilon":
            return 1.0, -sigma, 1.0 / alpha
        if prediction_type == "sample":
            return 0.0, 1.0, 1.0
        return alpha, -sigma, 1.0  # v_prediction: x0 = alpha x - sigma v
    if prediction_type == "epsilon":
        return 0.0, 1.0, 1.0
    if prediction_type == "sample":
        return 1.0, -alpha, 1.0 / sigma  # eps = (x - alpha m) / sigma
    return sigma, alpha, 1.0  # v_prediction: eps = alpha v + sigma x


def _solver_coefficients(algorithm, solver_type, order, h, alpha_t, sigma_t, singlestep):
    """``(c0, c1, c2, C)``: the weights of ``D0, D1, D2`` and of the noise in diffusers' update formulas.

    For the singlestep third order with ``midpoint``, ``c1`` is the weight of ``D1_1`` (diffusers' form).
    """
    c1 = c2 = C = 0.0
    if algorithm == "dpmsolver++":
        phi = -math.expm1(-h)  # 1 - e^{-h}
        c0 = alpha_t * phi
        if order >= 2:
            c1_heun = alpha_t * (1.0 - phi / h) if math.isfinite(h) else alpha_t
            if order == 2:
                c1 = 0.5 * c0 if solver_type == "midpoint" else c1_heun
            else:
                c1 = c1_heun
                if not (singlestep and solver_type == "midpoint"):
                    c2 = -alpha_t * ((h - phi) / (h * h) - 0.5)
    elif algorithm == "dpmsolver":
        E = math.expm1(h)
        c0 = -sigma_t * E
        if order >= 2:
            c1_heun = -sigma_t * (E / h - 1.0)
            if order == 2:
                c1 = 0.5 * c0 if solver_type == "midpoint" else c1_heun
            else:
                c1 = c1_heun
                if not (singlestep and solver_type == "midpoint"):
                    c2 = -sigma_t * ((E - h) / (h * h) - 0.5)
    elif algorithm == "sde-dpmsolver++":
        F = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        c0 = alpha_t * F
        C = sigma_t * math.sqrt(F)
        if order >= 2:
            c1_heun = alpha_t * (F / (-2.0 * h) + 1.0) if math.isfinite(h) else alpha_t
            if order == 2:
                c1 = 0.5 * c0 if solver_type == "midpoint" else c1_heun
            else:
                c1 = c1_heun
                if not (singlestep and solver_type == "midpoint"):
                    c2 = alpha_t * ((F - 2.0 * h) / (4.0 * h * h) - 0.5)
    elif algorithm == "sde-dpmsolver":
        E = math.expm1(h)
        c0 = -2.0 * sigma_t * E
        C = sigma_t * math.sqrt(math.expm1(2.0 * h))
        if order == 2:
            c1 = -sigma_t * E if solver_type == "midpoint" else -2.0 * sigma_t * (E / h - 1.0)
        elif order == 3:
            raise ValueError("diffusers has no third-order sde-dpmsolver update")
    else:
        raise ValueError(f"algorithm_type {algorithm!r} has no fused rows")
    return c0, c1, c2, C


def _ratio(sig_t, sig_s, algorithm, h):
    """The weight of the sample the step starts from: ``sigma_t/sigma_s`` (x ``e^{-h}`` for sde-++), or
    ``alpha_t/alpha_s`` for the noise-prediction algorithms."""
    a_t, s_t = alpha_sigma(sig_t)
    a_s, s_s = alpha_sigma(sig_s)
    if algorithm == "dpmsolver++":
        return float(s_t / s_s)
    if algorithm == "sde-dpmsolver++":
        return float(s_t / s_s * math.exp(-h))
    return float(a_t / a_s)


def _sigmas(sigmas) -> np.ndarray:
    """Keep float32 sigmas float32 (diffusers' arithmetic, see alpha_sigma); anything else as float64."""
    sig = np.asarray(sigmas)
    return sig if sig.dtype == np.float32 else sig.astype(np.float64)


def multistep_row(sigmas, i: int, order: int, *, algorithm: str, solver_type: str, prediction_type: str,
                  thresholding: bool = False) -> np.ndarray:
    """The row of ``DPMSolverMultistepScheduler.step`` at step ``i`` with solver order ``order``.

    ``sigmas``: diffusers' ``scheduler.sigmas`` (length ``n + 1``). ``thresholding`` for ``dpmsolver``:
    ``w`` is then the thresholded ``x0`` and ``eps = (x - alpha_s w) / sigma_s`` (order 1 only: the history
    of a higher order would have to hold ``eps``, which the kernel cannot write besides ``w``).
    """
    sig = _sigmas(sigmas)
    lam = half_log_snr(sig)
    a_t, s_t = (float(v) for v in alpha_sigma(sig[i + 1]))
    a_s0, s_s0 = (float(v) for v in alpha_sigma(sig[i]))
    h = float(lam[i + 1] - lam[i])
    c0, c1, c2, C = _solver_coefficients(algorithm, solver_type, order, h, a_t, s_t, singlestep=False)
    # weights of m0 (current), m1, m2
    if order == 1:
        w = (c0, 0.0, 0.0)
    elif order == 2:
        r0 = float(lam[i] - lam[i - 1]) / h
        w = (c0 + c1 / r0, -c1 / r0, 0.0)
    else:
        r0 = float(lam[i] - lam[i - 1]) / h
        r1 = float(lam[i - 1] - lam[i - 2]) / h
        k0 = c1 * (1.0 + r0 / (r0 + r1)) + c2 / (r0 + r1)  # weight of D1_0 = (m0 - m1) / r0
        k1 = -c1 * r0 / (r0 + r1) - c2 / (r0 + r1)  # weight of D1_1 = (m1 - m2) / r1
        w = (c0 + k0 / r0, -k0 / r0 + k1 / r1, -k1 / r1)
    A = _ratio(sig[i + 1], sig[i], algorithm, h)
    if thresholding and algorithm in NOISE_ALGORITHMS:
        if order != 1:
            raise ValueError("thresholding with algorithm_type 'dpmsolver' is fused for order 1 only")
        # w = clip(x0), x0 = (x - sigma eps_raw) / alpha; the update uses eps = (x - alpha w) / sigma
        Pe, Qe, Se = conversion(algorithm, prediction_type, a_s0, s_s0)
        P, Q = 1.0 - s_s0 * Se * Pe, -s_s0 * Se * Qe
        return coef_row(P=P, Q=Q, S=1.0 / a_s0, A=A + w[0] / s_s0, B0=-w[0] * a_s0 / s_s0, C=C)
    P, Q, Sc = conversion(algorithm, prediction_type, a_s0, s_s0)
    return coef_row(P=P, Q=Q, S=Sc, A=A, B0=w[0], B1=w[1], B2=w[2], C=C)


def singlestep_row(sigmas, i: int, order: int, *, algorithm: str, solver_type: str, prediction_type: str
                   ) -> np.ndarray:
    """The row of ``DPMSolverSinglestepScheduler.step`` at step ``i`` with order ``order`` (see module doc)."""
    sig = _sigmas(sigmas)
    lam = half_log_snr(sig)
    a_t, s_t = (float(v) for v in alpha_sigma(sig[i + 1]))
    a_s0, s_s0 = (float(v) for v in alpha_sigma(sig[i]))
    b = i - order + 1  # the step whose sample starts the block
    h = float(lam[i + 1] - lam[b])
    c0, c1, c2, C = _solver_coefficients(algorithm, solver_type, order, h, a_t, s_t, singlestep=True)
    if order == 1:
        w = (c0, 0.0, 0.0)
    elif order == 2:
        r0 = float(lam[i] - lam[i - 1]) / h  # D0 = m1, D1 = (m0 - m1) / r0
        w = (c1 / r0, c0 - c1 / r0, 0.0)
    else:
        r0 = float(lam[i] - lam[i - 2]) / h
        r1 = float(lam[i - 1] - lam[i - 2]) / h
        # D0 = m2, D1_0 = (m1 - m2)/r1, D1_1 = (m0 - m2)/r0,
        # D1 = (r0 D1_0 - r1 D1_1)/(r0 - r1), D2 = 2 (D1_1 - D1_0)/(r0 - r1)
        if solver_type == "midpoint":
            g0, g1 = 0.0, c1  # x = ... + c1 D1_1
        else:
            g0 = c1 * r0 / (r0 - r1) - 2.0 * c2 / (r0 - r1)
            g1 = -c1 * r1 / (r0 - r1) + 2.0 * c2 / (r0 - r1)
        w = (g1 / r0, g0 / r1, c0 - g0 / r1 - g1 / r0)
    A = _ratio(sig[i + 1], sig[b], algorithm, h)
    P, Q, Sc = conversion(algorithm, prediction_type, a_s0, s_s0)
    start = {1: "A", 2: "B2", 3: "B3"}[order]
    vals = dict(P=P, Q=Q, S=Sc, B0=w[0], B1=w[1], C=C)
    if order == 3:
        vals["B2"] = w[2]
    vals[start] = vals.get(start, 0.0) + A
    return coef_row(**vals)


def _table(n: int, reachable, build) -> np.ndarray:
    """``(3, n, NCOEF)``: ``build(i, o)`` where ``reachable(i, o)``, NaN elsewhere."""
    table = np.full((3, n, NCOEF), np.nan)
    with np.errstate(all="ignore"):
        for o in (1, 2, 3):
            for i in range(n):
                if reachable(i, o):
                    try:
                        table[o - 1, i] = build(i, o)
                    except (ZeroDivisionError, OverflowError, ValueError):
                        pass  # stays NaN: that step falls back to diffusers
    # CLIP (+inf) is the only column allowed to be non-finite
    return table


def multistep_table(sigmas, *, solver_order: int, algorithm: str, solver_type: str, prediction_type: str,
                    thresholding: bool, lower_order_final: bool, euler_at_final: bool,
                    final_sigmas_type: str) -> np.ndarray:
    """Rows for every step and every order diffusers' multistep ``step`` can use there (from any start).

    diffusers' order at step ``i``: 1 if ``solver_order == 1``, during the warm-up, or at the last step when
    ``euler_at_final``, ``lower_order_final`` with fewer than 15 steps, or ``final_sigmas_type == 'zero'``;
    at most 2 at the second-to-last step with ``lower_order_final`` and fewer than 15 steps.
    """
    n = len(sigmas) - 1
    cap = [min(solver_order, 3)] * n
    if n >= 1 and (euler_at_final or (lower_order_final and n < 15) or final_sigmas_type == "zero"):
        cap[n - 1] = 1
    if n >= 2 and lower_order_final and n < 15:
        cap[n - 2] = min(cap[n - 2], 2)
    kw = dict(algorithm=algorithm, solver_type=solver_type, prediction_type=prediction_type,
              thresholding=thresholding)
    return _table(n, lambda i, o: o <= cap[i] and o <= i + 1,
                  lambda i, o: multistep_row(sigmas, i, o, **kw))


def singlestep_table(sigmas, order_list, *, algorithm: str, solver_type: str, prediction_type: str) -> np.ndarray:
    """Rows for every step ``i`` and every order up to ``order_list[i]`` (lower when a run starts mid-block)."""
    n = len(sigmas) - 1
    kw = dict(algorithm=algorithm, solver_type=solver_type, prediction_type=prediction_type)
    return _table(n, lambda i, o: i < len(order_list) and o <= order_list[i] and o <= i + 1,
                  lambda i, o: singlestep_row(sigmas, i, o, **kw))


def row_is_finite(row: np.ndarray) -> bool:
    """Every column but CLIP finite (a NaN row marks an unreachable or degenerate step)."""
    return bool(np.isfinite(np.delete(row, COL["CLIP"])).all())
