"""DPM-Solver(++) update rules as float64 weights: ``x_t = A x_s + sum_j b_j w_j``.

``w_j`` is the *converted* model output at the j-th point: ``x_0`` for ``'dpmsolver++'`` (Lu et al.,
arXiv:2211.01095), ``eps`` for ``'dpmsolver'`` (arXiv:2206.00927). With ``h = lambda_t - lambda_s`` the
exponential-integrator updates are (``++`` / noise form)::

    first order   x_t = (sigma_t/sigma_s) x - alpha_t expm1(-h) x0_s
                  x_t = (alpha_t/alpha_s) x - sigma_t expm1(h)  eps_s

and the higher orders add divided differences of ``w`` (``D1``, ``D2``) times ``phi_2``, ``phi_3``. Every rule
here returns ``(A, {key: b})``, keys naming the outputs it combines: ``'s'``, ``'s1'``, ``'s2'`` for a
singlestep step from ``s`` (intermediate points ``s1``, ``s2``), ``0``, ``1``, ``2`` for a multistep step
(``0`` = newest). The differences are expanded into these weights, so one fused step applies them.
An independent, literal transcription of the same rules lives in ``pydiff.reference.dpm_solver``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ALGORITHMS = ("dpmsolver++", "dpmsolver")
SOLVER_TYPES = ("dpmsolver", "taylor")


@dataclass(frozen=True)
class Point:
    """Schedule values at one time: ``t``, ``lambda``, ``log alpha``, ``alpha``, ``sigma`` (float64)."""
    t: float
    lam: float
    log_alpha: float
    alpha: float
    sigma: float


def point(ns, t) -> Point:
    la = float(ns._log_alpha64(t))
    sigma = math.sqrt(-math.expm1(2.0 * la))
    return Point(float(t), la - math.log(sigma), la, math.exp(la), sigma)


def point_at_lambda(ns, lam) -> Point:
    return point(ns, float(ns._inverse_lambda64(lam)))


class Lin(dict):
    """A linear combination of named outputs, ``{key: weight}``, with ``+``, ``-`` and scalar ``*``."""

    def __add__(self, other):
        out = Lin(self)
        for k, v in other.items():
            out[k] = out.get(k, 0.0) + v
        return out

    def __sub__(self, other):
        return self + other * -1.0

    def __mul__(self, c):
        return Lin({k: v * c for k, v in self.items()})

    __rmul__ = __mul__


def _w(key):
    return Lin({key: 1.0})


def _base(alg, s: Point, t: Point):
    """``(A, c, sign)``: ``A`` weighs ``x_s``, ``c`` (``alpha_t`` or ``sigma_t``) every output term, and ``sign``
    is the sign of the ``phi_2`` terms (``+`` for ``++``, ``-`` for the noise form)."""
    if alg == "dpmsolver++":
        return t.sigma / s.sigma, t.alpha, 1.0
    return math.exp(t.log_alpha - s.log_alpha), t.sigma, -1.0


def _phis(alg, h):
    """``phi_1, phi_2, phi_3`` in the authors' sign conventions for each algorithm."""
    if alg == "dpmsolver++":
        p1 = math.expm1(-h)
        p2 = p1 / h + 1.0
    else:
        p1 = math.expm1(h)
        p2 = p1 / h - 1.0
    return p1, p2, p2 / h - 0.5


def first_order(alg, s: Point, t: Point):
    """DPM-Solver-1 (= DDIM): ``x_t = A x_s - c phi_1 w_s``."""
    A, c, _ = _base(alg, s, t)
    p1, _, _ = _phis(alg, t.lam - s.lam)
    return A, Lin({"s": -c * p1})


def singlestep_second(alg, solver_type, s: Point, t: Point, r1: float):
    """Singlestep DPM-Solver-2 final update from ``s`` to ``t`` using ``w_s`` and ``w_s1`` (at ``lambda_s + r1 h``)."""
    A, c, sign = _base(alg, s, t)
    h = t.lam - s.lam
    p1, _, _ = _phis(alg, h)
    diff = _w("s1") - _w("s")
    comb = _w("s") * (-c * p1)
    if solver_type == "dpmsolver":
        comb = comb + diff * (-(0.5 / r1) * c * p1)
    elif alg == "dpmsolver++":
        comb = comb + diff * ((1.0 / r1) * c * (p1 / h + 1.0))
    else:
        comb = comb + diff * (-(1.0 / r1) * c * (p1 / h - 1.0))
    return A, comb


def singlestep_third_mid(alg, s: Point, s2: Point, h: float, r1: float, r2: float):
    """Singlestep DPM-Solver-3's second intermediate point ``x_s2`` (``h``: the whole step) from ``w_s``, ``w_s1``."""
    A, c, sign = _base(alg, s, s2)
    if alg == "dpmsolver++":
        p12 = math.expm1(-r2 * h)
        p22 = math.expm1(-r2 * h) / (r2 * h) + 1.0
    else:
        p12 = math.expm1(r2 * h)
        p22 = math.expm1(r2 * h) / (r2 * h) - 1.0
    comb = _w("s") * (-c * p12) + (_w("s1") - _w("s")) * (sign * (r2 / r1) * c * p22)
    return A, comb


def singlestep_third(alg, solver_type, s: Point, t: Point, r1: float, r2: float):
    """Singlestep DPM-Solver-3 final update from ``s`` to ``t`` using ``w_s``, ``w_s1``, ``w_s2``."""
    A, c, sign = _base(alg, s, t)
    h = t.lam - s.lam
    p1, p2, p3 = _phis(alg, h)
    comb = _w("s") * (-c * p1)
    if solver_type == "dpmsolver":
        return A, comb + (_w("s2") - _w("s")) * (sign * (1.0 / r2) * c * p2)
    d1_0 = (_w("s1") - _w("s")) * (1.0 / r1)
    d1_1 = (_w("s2") - _w("s")) * (1.0 / r2)
    d1 = (d1_0 * r2 - d1_1 * r1) * (1.0 / (r2 - r1))
    d2 = (d1_1 - d1_0) * (2.0 / (r2 - r1))
    return A, comb + d1 * (sign * c * p2) + d2 * (-c * p3)


def multistep_second(alg, solver_type, p0: Point, p1_: Point, t: Point):
    """Multistep DPM-Solver-2 from ``p0`` (newest, output ``0``) to ``t`` with the previous output ``1`` at ``p1_``."""
    A, c, sign = _base(alg, p0, t)
    h = t.lam - p0.lam
    r0 = (p0.lam - p1_.lam) / h
    ph1, _, _ = _phis(alg, h)
    d1_0 = (_w(0) - _w(1)) * (1.0 / r0)
    comb = _w(0) * (-c * ph1)
    if solver_type == "dpmsolver":
        return A, comb + d1_0 * (-0.5 * c * ph1)
    if alg == "dpmsolver++":
        return A, comb + d1_0 * (c * (ph1 / h + 1.0))
    return A, comb + d1_0 * (-c * (ph1 / h - 1.0))


def multistep_third(alg, p0: Point, p1_: Point, p2_: Point, t: Point, consistent=False):
    """Multistep DPM-Solver-3 (the authors use the same rule for both solver types).

    The authors' ``D2 = (D1_0 - D1_1)/(r0 + r1)`` approximates ``h^2 w''/2``, while the ``phi_3`` term needs
    ``h^2 w''``: their rule is consistent only to second order (measured global order ~2).
    ``consistent=True`` uses ``D2 = 2 (D1_0 - D1_1)/(r0 + r1)``, which makes it third order.
    """
    A, c, sign = _base(alg, p0, t)
    h = t.lam - p0.lam
    r0, r1 = (p0.lam - p1_.lam) / h, (p1_.lam - p2_.lam) / h
    ph1, ph2, ph3 = _phis(alg, h)
    d1_0 = (_w(0) - _w(1)) * (1.0 / r0)
    d1_1 = (_w(1) - _w(2)) * (1.0 / r1)
    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
    d2 = (d1_0 - d1_1) * ((2.0 if consistent else 1.0) / (r0 + r1))
    return A, _w(0) * (-c * ph1) + d1 * (sign * c * ph2) + d2 * (-c * ph3)


def multistep(alg, solver_type, order, pts, t: Point, consistent=False):
    """Multistep rule of ``order`` with ``pts[j]`` the point of output ``j`` (``pts[0]`` newest)."""
    if order == 1:
        A, comb = first_order(alg, pts[0], t)
        return A, Lin({0: comb["s"]})
    if order == 2:
        return multistep_second(alg, solver_type, pts[0], pts[1], t)
    return multistep_third(alg, pts[0], pts[1], pts[2], t, consistent)


def conversion(alg_target, raw_type, p: Point):
    """``(P, Q, S)`` with ``target = S (P x + Q raw)`` for a raw network output of ``raw_type`` at ``p``.

    ``alg_target`` is ``'x0'`` or ``'eps'``. Divisions by ``alpha`` or ``sigma`` go into ``S`` (applied after the
    sum, so the rounding of ``x - sigma eps`` is not amplified twice; docs/ops.md). Uses ``alpha^2 + sigma^2 = 1``.
    """
    a, s = p.alpha, p.sigma
    if alg_target == "x0":
        return {"noise": (1.0, -s, 1.0 / a), "x_start": (0.0, 1.0, 1.0), "v": (a, -s, 1.0),
                "score": (1.0, s * s, 1.0 / a)}[raw_type]
    return {"noise": (0.0, 1.0, 1.0), "x_start": (1.0, -a, 1.0 / s), "v": (s, a, 1.0),
            "score": (0.0, -s, 1.0)}[raw_type]
