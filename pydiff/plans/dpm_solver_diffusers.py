"""Coefficient rows for diffusers' DPM-Solver schedulers (multistep and singlestep), in float64.

DPM-Solver (Lu et al., arXiv:2206.00927) and DPM-Solver++ (Lu et al., arXiv:2211.01095) updates are linear
in the sample and in the converted model outputs, so each one is a ``fused_step`` row: the kernel's
``w = clip(S (P x + Q m))`` is the converted output of the current step (``x0`` for the ``++`` variants, the
noise ``eps`` for ``dpmsolver``), the history tensors are earlier converted outputs. The weights come from
the one rule set, ``pydiff.plans.dpm_solver``, applied to Points built from the scheduler's own ``sigmas``
(``points_from_sigmas``: diffusers' ``alpha_t = 1/sqrt(1 + sigma^2)``, ``sigma_t = sigma alpha_t``,
``lambda = log alpha_t - log sigma_t``, in float32 when the sigmas are float32, as diffusers evaluates
them): diffusers' ``c0, c1, c2`` forms with their ``D1``, ``D2`` differences are those rules, expanded
into fixed weights on ``m0, m1, m2``; diffusers' ``midpoint``/``heun`` are the authors' ``dpmsolver``/``taylor``.

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

from ..ops import NCOEF
from . import dpm_solver as rules
from .conversions import conversion as _conversion
from .conversions import eps_from_raw
from .rows import finite_rows, update_row

DPM_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DATA_ALGORITHMS = rules.DATA_ALGORITHMS  # w = x0
NOISE_ALGORITHMS = ("dpmsolver", "sde-dpmsolver")  # w = eps


def conversion(algorithm: str, prediction_type: str, alpha: float, sigma: float):
    """``(P, Q, S)`` with the converted output ``S (P x + Q m)``: ``x0`` for the ``++`` algorithms, else ``eps``."""
    if prediction_type not in DPM_PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {DPM_PREDICTION_TYPES} on the fused path, "
                         f"got {prediction_type!r}")
    return _conversion(rules.target(algorithm), prediction_type, alpha, sigma)


def _rule_args(algorithm, solver_type):
    if algorithm not in rules.ALGORITHMS + rules.SDE_ALGORITHMS:
        raise ValueError(f"algorithm_type {algorithm!r} has no fused rows")
    if solver_type not in rules.DIFFUSERS_SOLVER_TYPES:
        raise ValueError(f"solver_type must be one of {tuple(rules.DIFFUSERS_SOLVER_TYPES)}, got {solver_type!r}")
    return algorithm, rules.DIFFUSERS_SOLVER_TYPES[solver_type]


def multistep_row(sigmas, i: int, order: int, *, algorithm: str, solver_type: str, prediction_type: str,
                  thresholding: bool = False) -> np.ndarray:
    """The row of ``DPMSolverMultistepScheduler.step`` at step ``i`` with solver order ``order``.

    ``sigmas``: diffusers' ``scheduler.sigmas`` (length ``n + 1``). ``thresholding`` for ``dpmsolver``:
    ``w`` is then the thresholded ``x0`` and ``eps = (x - alpha_s w) / sigma_s`` (order 1 only: the history
    of a higher order would have to hold ``eps``, which the kernel cannot write besides ``w``).
    """
    alg, st = _rule_args(algorithm, solver_type)
    pts = rules.points_from_sigmas(sigmas)
    if alg == "sde-dpmsolver" and order == 3:
        raise ValueError("diffusers has no third-order sde-dpmsolver update")
    A, comb = rules.multistep(alg, st, order, [pts[i - j] for j in range(order)], pts[i + 1])
    C = rules.noise_weight(alg, pts[i], pts[i + 1])
    w = [comb.get(j, 0.0) for j in range(order)]
    s0 = pts[i]
    if thresholding and algorithm in NOISE_ALGORITHMS:
        if order != 1:
            raise ValueError("thresholding with algorithm_type 'dpmsolver' is fused for order 1 only")
        # w = clip(x0); the update uses eps = (x - alpha w) / sigma
        Ae, Be = eps_from_raw("x0", s0.alpha, s0.sigma)
        return update_row(_conversion("x0", prediction_type, s0.alpha, s0.sigma), A + w[0] * Ae, w[0] * Be, C=C)
    return update_row(conversion(alg, prediction_type, s0.alpha, s0.sigma), A, w[0], w[1:], C=C)


def singlestep_row(sigmas, i: int, order: int, *, algorithm: str, solver_type: str, prediction_type: str
                   ) -> np.ndarray:
    """The row of ``DPMSolverSinglestepScheduler.step`` at step ``i`` with order ``order`` (see module doc)."""
    alg, st = _rule_args(algorithm, solver_type)
    pts = rules.points_from_sigmas(sigmas)
    b = i - order + 1  # the step whose sample starts the block
    A, comb = rules.singlestep(alg, st, order, pts[b:i + 1], pts[i + 1])
    C = rules.noise_weight(alg, pts[b], pts[i + 1])
    # the block's outputs oldest first are s, s1, s2: the current one is w, the earlier ones h1, h2
    keys = ["s", "s1", "s2"][:order][::-1]
    w = [comb.get(k, 0.0) for k in keys]
    hist = w[1:] + [A]  # the block's starting sample in the last history slot (x itself at order 1)
    s0 = pts[i]
    conv = conversion(alg, prediction_type, s0.alpha, s0.sigma)
    if order == 1:
        return update_row(conv, A, w[0], C=C)
    return update_row(conv, 0.0, w[0], hist, C=C)


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
    return table


def multistep_order(i: int, n: int, *, solver_order: int, lower_order_final: bool, euler_at_final: bool,
                    final_sigmas_type: str, warm=None) -> int:
    """The order diffusers' multistep ``step`` uses at step ``i`` of ``n`` after ``warm`` earlier steps (its
    ``lower_order_nums``; None: a run long enough that the warm-up does not limit it).

    1 if ``solver_order == 1``, during the warm-up, or at the last step when ``euler_at_final``,
    ``lower_order_final`` with fewer than 15 steps, or ``final_sigmas_type == 'zero'``; at most 2 at the
    second-to-last step with ``lower_order_final`` and fewer than 15 steps, and in the warm-up's second step.
    """
    warm = math.inf if warm is None else warm
    lower_final = i == n - 1 and (euler_at_final or (lower_order_final and n < 15) or final_sigmas_type == "zero")
    lower_second = i == n - 2 and lower_order_final and n < 15
    if solver_order == 1 or warm < 1 or lower_final:
        return 1
    if solver_order == 2 or warm < 2 or lower_second:
        return 2
    return 3


def multistep_table(sigmas, *, solver_order: int, algorithm: str, solver_type: str, prediction_type: str,
                    thresholding: bool, lower_order_final: bool, euler_at_final: bool,
                    final_sigmas_type: str) -> np.ndarray:
    """Rows for every step and every order diffusers' multistep ``step`` can use there (from any start):
    up to ``multistep_order`` and, counting from the first step, ``i + 1``."""
    n = len(sigmas) - 1
    opts = dict(solver_order=solver_order, lower_order_final=lower_order_final, euler_at_final=euler_at_final,
                final_sigmas_type=final_sigmas_type)
    cap = [multistep_order(i, n, **opts) for i in range(n)]
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
    return bool(finite_rows(row))
