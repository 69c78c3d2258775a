"""DPM-Solver(++) update rules as float64 weights: ``x_t = A x_s + sum_j b_j w_j (+ C z)``.

The one rule set behind both faces: the authors' API (``pydiff.dpm_solver``, through ``dpm_solver_plan``
and the runtime) and diffusers' DPM-Solver schedulers (``pydiff.diffusers``, through
``dpm_solver_diffusers``).

``w_j`` is the *converted* model output at the j-th point: ``x_0`` for the data-prediction algorithms
(``'dpmsolver++'``, Lu et al., arXiv:2211.01095; ``'sde-dpmsolver++'``, its SDE variant, same paper,
section 5), ``eps`` for the noise-prediction ones (``'dpmsolver'``, arXiv:2206.00927; ``'sde-dpmsolver'``).
With ``h = lambda_t - lambda_s`` every update is an exponential integrator::

    x_t = A x_s - c phi_1 w_s + sign c phi_2 D1 - c phi_3 D2  (+ C z)

    algorithm         A                           c        sign   phi_1            phi_2           phi_3
    dpmsolver++       sigma_t/sigma_s             alpha_t  +1     expm1(-h)        phi_1/h + 1     phi_2/h - 1/2
    dpmsolver         alpha_t/alpha_s             sigma_t  -1     expm1(h)         phi_1/h - 1     phi_2/h - 1/2
    sde-dpmsolver++   sigma_t/sigma_s e^-h        alpha_t  +1     expm1(-2h)       phi_1/(2h) + 1  phi_2/(2h) + 1/2
    sde-dpmsolver     alpha_t/alpha_s             sigma_t  -1     2 expm1(h)       phi_1/h - 2     (none)

with the noise weights ``C = sigma_t sqrt(-expm1(-2h))`` (sde-dpmsolver++) and ``sigma_t sqrt(expm1(2h))``
(sde-dpmsolver). ``D1``, ``D2`` are divided differences of ``w`` (first and second order); the
``'dpmsolver'`` solver type (diffusers' ``'midpoint'``) replaces ``phi_2 D1`` by ``-phi_1 D1 / 2``, the
``'taylor'`` type (diffusers' ``'heun'``) keeps it. The SDE variants' ``phi_3`` is diffusers' (the only
implementation of a third-order sde-dpmsolver++ step).

Every rule returns ``(A, {key: b})``, keys naming the outputs it combines: ``'s'``, ``'s1'``, ``'s2'`` for a
singlestep step from ``s`` (intermediate points ``s1``, ``s2``), ``0``, ``1``, ``2`` for a multistep step
(``0`` = newest). The differences are expanded into these weights, so one fused step applies them.
An independent, literal transcription of the authors' rules lives in ``pydiff.testing.dpm_solver``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..schedules import vp_from_ve_sigma
from . import conversions

ALGORITHMS = ("dpmsolver++", "dpmsolver")  # the authors'
SDE_ALGORITHMS = ("sde-dpmsolver++", "sde-dpmsolver")  # diffusers' SDE variants
DATA_ALGORITHMS = ("dpmsolver++", "sde-dpmsolver++")  # w = x0
SOLVER_TYPES = ("dpmsolver", "taylor")
DIFFUSERS_SOLVER_TYPES = {"midpoint": "dpmsolver", "heun": "taylor"}


@dataclass(frozen=True)
class Point:
    """Schedule values at one time: ``t``, ``lambda``, ``log alpha``, ``alpha``, ``sigma`` (float64).

    ``log_alpha`` is None where the schedule gives ``alpha`` itself (diffusers' sigmas): ratios of ``alpha``
    are then taken directly, else as ``exp`` of the ``log alpha`` difference (the authors' form). Each is the
    exact one for its source: ``exp(log a_t - log a_s)`` from float32-rounded alphas was 2.4e-14 off
    diffusers' exact-arithmetic ``a_t / a_s`` loop, the direct ratio 2.6e-15.
    """
    t: float
    lam: float
    log_alpha: float | None
    alpha: float
    sigma: float

    def alpha_over(self, s: "Point") -> float:
        """``alpha_self / alpha_s``."""
        if self.log_alpha is None or s.log_alpha is None:
            return self.alpha / s.alpha
        return math.exp(self.log_alpha - s.log_alpha)


def _vp(schedule):
    """The float64 schedule (``pydiff.schedules``) of a schedule or of a face that carries one in ``.vp``."""
    return getattr(schedule, "vp", schedule)


def point(schedule, t) -> Point:
    la = float(_vp(schedule).log_alpha(t))
    sigma = math.sqrt(-math.expm1(2.0 * la))
    return Point(float(t), la - math.log(sigma), la, math.exp(la), sigma)


def point_at_lambda(schedule, lam) -> Point:
    return point(schedule, float(_vp(schedule).inverse_lambda(lam)))


def points_from_sigmas(sigmas) -> list:
    """Points for diffusers' ``sigmas`` (``sqrt((1 - abar)/abar)``; ``t`` is the index).

    ``alpha``, ``sigma``, ``lambda`` are evaluated in the precision of ``sigmas`` (``vp_from_ve_sigma``): the
    drop-ins pass diffusers' float32 sigmas, so their rules see diffusers' float32 roundings (with float64
    scalars a singlestep-3 loop differed from diffusers by 1.15e-5, with float32 ones by 2e-6).
    """
    sig = np.asarray(sigmas)
    arg = torch.from_numpy(np.array(sig, dtype=np.float32, ndmin=1)) if sig.dtype == np.float32 else \
        np.array(sig, dtype=np.float64, ndmin=1)
    alpha, sigma, lam = (np.asarray(v, dtype=np.float64) if not isinstance(v, torch.Tensor) else v.double().numpy()
                         for v in vp_from_ve_sigma(arg))
    return [Point(float(i), float(lam[i]), None, float(alpha[i]), float(sigma[i])) for i in range(alpha.shape[0])]


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
    """``(A, c, sign)`` of the table in the module docstring."""
    if alg == "dpmsolver++":
        return t.sigma / s.sigma, t.alpha, 1.0
    if alg == "sde-dpmsolver++":
        return t.sigma / s.sigma * math.exp(-(t.lam - s.lam)), t.alpha, 1.0
    if alg in ("dpmsolver", "sde-dpmsolver"):
        return t.alpha_over(s), t.sigma, -1.0
    raise ValueError(f"algorithm must be one of {ALGORITHMS + SDE_ALGORITHMS}, got {alg!r}")


def _phi1(alg, h):
    """``phi_1`` of the table in the module docstring (defined at ``h = 0`` too: a zero step)."""
    if alg == "dpmsolver++":
        return math.expm1(-h)
    if alg == "dpmsolver":
        return math.expm1(h)
    if alg == "sde-dpmsolver++":
        return math.expm1(-2.0 * h)
    return 2.0 * math.expm1(h)  # sde-dpmsolver


def _phis(alg, h):
    """``phi_1, phi_2, phi_3`` of the table in the module docstring."""
    p1 = _phi1(alg, h)
    if alg == "dpmsolver++":
        p2 = p1 / h + 1.0
        return p1, p2, p2 / h - 0.5
    if alg == "dpmsolver":
        p2 = p1 / h - 1.0
        return p1, p2, p2 / h - 0.5
    if alg == "sde-dpmsolver++":
        p2 = p1 / (2.0 * h) + 1.0
        return p1, p2, p2 / (2.0 * h) + 0.5
    return p1, p1 / h - 2.0, math.nan  # sde-dpmsolver


def noise_weight(alg, s: Point, t: Point) -> float:
    """``C``, the weight of the step's standard normal noise (0 for the ODE solvers)."""
    h = t.lam - s.lam
    if alg == "sde-dpmsolver++":
        return t.sigma * math.sqrt(-math.expm1(-2.0 * h))
    if alg == "sde-dpmsolver":
        return t.sigma * math.sqrt(math.expm1(2.0 * h))
    return 0.0


def first_order(alg, s: Point, t: Point):
    """DPM-Solver-1 (= DDIM): ``x_t = A x_s - c phi_1 w_s``."""
    A, c, _ = _base(alg, s, t)
    return A, Lin({"s": -c * _phi1(alg, t.lam - s.lam)})


def singlestep_second(alg, solver_type, s: Point, t: Point, r1: float):
    """Singlestep DPM-Solver-2 final update from ``s`` to ``t`` using ``w_s`` and ``w_s1`` (at ``lambda_s + r1 h``)."""
    A, c, sign = _base(alg, s, t)
    p1, p2, _ = _phis(alg, t.lam - s.lam)
    diff = _w("s1") - _w("s")
    comb = _w("s") * (-c * p1)
    if solver_type == "dpmsolver":
        return A, comb + diff * (-(0.5 / r1) * c * p1)
    return A, comb + diff * (sign * (1.0 / r1) * c * p2)


def singlestep_third_mid(alg, s: Point, s2: Point, h: float, r1: float, r2: float):
    """Singlestep DPM-Solver-3's second intermediate point ``x_s2`` (``h``: the whole step) from ``w_s``, ``w_s1``."""
    A, c, sign = _base(alg, s, s2)
    p12, p22, _ = _phis(alg, r2 * h)
    comb = _w("s") * (-c * p12) + (_w("s1") - _w("s")) * (sign * (r2 / r1) * c * p22)
    return A, comb


def singlestep_third(alg, solver_type, s: Point, t: Point, r1: float, r2: float):
    """Singlestep DPM-Solver-3 final update from ``s`` to ``t`` using ``w_s``, ``w_s1``, ``w_s2``."""
    A, c, sign = _base(alg, s, t)
    p1, p2, p3 = _phis(alg, t.lam - s.lam)
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
    ph1, ph2, _ = _phis(alg, h)
    d1_0 = (_w(0) - _w(1)) * (1.0 / r0)
    comb = _w(0) * (-c * ph1)
    if solver_type == "dpmsolver":
        return A, comb + d1_0 * (-0.5 * c * ph1)
    return A, comb + d1_0 * (sign * c * ph2)


def multistep_third(alg, p0: Point, p1_: Point, p2_: Point, t: Point, consistent=False):
    """Multistep DPM-Solver-3 (the authors, and diffusers, use the same rule for both solver types).

    The authors' ``D2 = (D1_0 - D1_1)/(r0 + r1)`` approximates ``h^2 w''/2``, while the ``phi_3`` term needs
    ``h^2 w''``: their rule is consistent only to second order (measured global order ~2).
    ``consistent=True`` uses ``D2 = 2 (D1_0 - D1_1)/(r0 + r1)``, which makes it third order.
    """
    if alg == "sde-dpmsolver":
        raise ValueError("there is no third-order sde-dpmsolver update")
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


def singlestep(alg, solver_type, order, block, t: Point):
    """Singlestep rule of ``order`` from ``block[0]`` (the block's start, output ``'s'``) to ``t`` with the
    block's later points ``block[1]`` (``'s1'``), ``block[2]`` (``'s2'``): their ratios ``r`` follow from lambda."""
    s = block[0]
    if order == 1:
        return first_order(alg, s, t)
    h = t.lam - s.lam
    if order == 2:
        return singlestep_second(alg, solver_type, s, t, (block[1].lam - s.lam) / h)
    return singlestep_third(alg, solver_type, s, t, (block[1].lam - s.lam) / h, (block[2].lam - s.lam) / h)


def target(alg) -> str:
    """What ``w`` is for ``alg``: ``'x0'`` for the data-prediction algorithms, else ``'eps'``."""
    return "x0" if alg in DATA_ALGORITHMS else "eps"


def conversion(alg_target, raw_type, p: Point):
    """``(P, Q, S)`` with ``target = S (P x + Q raw)`` for a raw network output of ``raw_type`` at ``p``
    (``alg_target``: ``'x0'`` or ``'eps'``; ``pydiff.plans.conversions``)."""
    return conversions.conversion(alg_target, raw_type, p.alpha, p.sigma)
