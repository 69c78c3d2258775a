"""The Dormand-Prince 5(4) pair (Dormand & Prince, "A family of embedded Runge-Kutta formulae", J. Comput.
Appl. Math. 6, 1980; Hairer, Norsett & Wanner, *Solving ODEs I*, II.5, table 5.2) as fused-step rows.

The tableau (7 stages, FSAL: the 7th stage is the derivative at the new point and the 1st of the next step):

    c_s                          y_s = y + h sum_{j<s} a_sj k_j,   k_s = F(t + c_s h, y_s)
    y_new = y + h sum_j b_j k_j  (order 5, b_j = a_7j),      err = h sum_j e_j k_j,   e = b - b_hat

``b_hat`` are the order-4 weights (they use ``k_7``); ``err`` estimates the local error of the order-4 formula,
which is what the step-size rule controls (``ERROR_ORDER = 4``).

The fused form. The derivative is semi-linear, ``F(t, y) = p(t) y + q(t) m(y, t)`` (``m`` a model output), so
``k_s`` is the ``w = P x + Q m`` of a fused step on ``x = y_s`` with ``(P, Q) = (p, q)(t + c_s h)``. The same
step writes ``k_s`` (``w_out``) and, as its output, the next stage state ``y_{s+1} = y + h sum_{j<=s}
a_{s+1,j} k_j``: ``y`` and the earlier ``k_j`` are its history tensors, ``k_s`` enters as ``B0 w``. The stage-7
step writes ``k_7`` and ``err`` (``k_7`` as ``w``, ``k_1 .. k_6`` as history). Zero tableau entries drop their
tensor (``a_72 = b_2 = 0``, ``e_2 = 0``), so no step takes more than 5 history tensors (``K_MAX = 6``).
One attempt is ``attempt_rows``: row 0 (``y_2 = y + h a_21 k_1``, no model call: ``k_1`` is known), rows
1..5 (stages 2..6, the last one's output is ``y_new``), row 6 (stage 7 and the error).
"""
from __future__ import annotations

from fractions import Fraction as _F

import numpy as np

from ..ops import COL
from .rows import RowBuilder

ORDER = 5
ERROR_ORDER = 4
N_STAGES = 6  # stages before the FSAL one

_C = (_F(0), _F(1, 5), _F(3, 10), _F(4, 5), _F(8, 9), _F(1), _F(1))
_A = (
    (),
    (_F(1, 5),),
    (_F(3, 40), _F(9, 40)),
    (_F(44, 45), _F(-56, 15), _F(32, 9)),
    (_F(19372, 6561), _F(-25360, 2187), _F(64448, 6561), _F(-212, 729)),
    (_F(9017, 3168), _F(-355, 33), _F(46732, 5247), _F(49, 176), _F(-5103, 18656)),
    (_F(35, 384), _F(0), _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84)),
)
_B_HAT = (_F(5179, 57600), _F(0), _F(7571, 16695), _F(393, 640), _F(-92097, 339200), _F(187, 2100),
          _F(1, 40))

#: exact tableau (``fractions.Fraction``): ``C[s]``, ``A[s][j]`` (``s`` = 0..6, ``A[6]`` = ``b``), ``B_HAT``
C_EXACT, A_EXACT, B_HAT_EXACT = _C, _A, _B_HAT
E_EXACT = tuple((_A[6][j] if j < 6 else _F(0)) - _B_HAT[j] for j in range(7))

C = np.array([float(v) for v in _C])
A = np.zeros((7, 7))
for _s, _row in enumerate(_A):
    A[_s, :len(_row)] = [float(v) for v in _row]
B = A[6, :6].copy()
B_HAT = np.array([float(v) for v in _B_HAT])
E = np.array([float(v) for v in E_EXACT])

#: per fused step of an attempt: which stages' ``k`` (0-based) are its history tensors, in order; ``'y'`` is
#: the step's start. Rows 1..5 write ``y_{s+1}`` (stage ``s`` = row + 1), row 6 the error.
HIST = tuple(
    [("y",) + tuple(j for j in range(s) if _A[s + 1][j] != 0) for s in range(1, 6)]
    + [tuple(j for j in range(6) if E_EXACT[j] != 0)]
)
STAGE_TIMES = C[1:]  # times t + c_s h of the model calls of rows 1..6 (stage 2..7)


def derivative_row(p, q) -> np.ndarray:
    """``(NCOEF,)``: ``out = w = P x + Q m`` with ``(P, Q) = (p, q)``: the derivative ``F(t, x)``."""
    b = RowBuilder()
    b.add(P=p, Q=q, B0=1.0)
    return b.table()[0]


def euler_row(h) -> np.ndarray:
    """``(NCOEF,)``: ``out = x + h m`` (``m`` a derivative): an Euler step."""
    b = RowBuilder()
    b.add(A=1.0, D=h)
    return b.table()[0]


def derivative_change_row(p, q) -> np.ndarray:
    """``(NCOEF,)``: ``out = F(t, x) - h1 = (P x + Q m) - h1`` (``h1`` an earlier derivative), the difference
    formed before rounding ``F`` (scipy's initial step selection measures it)."""
    b = RowBuilder()
    b.add(P=p, Q=q, B0=1.0, B1=-1.0)
    return b.table()[0]


def _attempt_template():
    """``(base, per_h)``: the attempt rows are ``base + h per_h`` with ``P, Q`` filled per stage."""
    b = RowBuilder()
    b.add_row(euler_row(0.0))
    for s in range(1, 6):
        b.add(B1=1.0)  # the history tensor y (HIST[s - 1][0])
    b.add()
    base = b.table()
    per_h = np.zeros_like(base)
    per_h[0, COL["D"]] = A[1, 0]
    for s in range(1, 6):  # stage s (0-based) is k_{s+1}; its step writes y_{s+2}
        per_h[s, COL["B0"]] = A[s + 1, s]
        for n, j in enumerate(HIST[s - 1][1:], start=2):
            per_h[s, COL[f"B{n}"]] = A[s + 1, j]
    per_h[6, COL["B0"]] = E[6]
    for n, j in enumerate(HIST[5], start=1):
        per_h[6, COL[f"B{n}"]] = E[j]
    return base, per_h


_BASE, _PER_H = _attempt_template()


def attempt_rows(h: float, p, q) -> np.ndarray:
    """``(7, NCOEF)`` float64 rows of one Dormand-Prince attempt with step ``h`` (signed), ``p``, ``q`` the
    derivative's coefficients at the six stage times ``t + c_s h`` (``STAGE_TIMES``), see the module:
    row 0 ``out = y_2 = y + h a_21 k_1`` (``x = y``, ``m = k_1``); rows 1..5 ``w = k_{s}``, ``out = y_{s+1}``
    (``y_7 = y_new``) with history ``HIST[row - 1]`` (``y`` weighted 1, ``k_j`` by ``h a_{s+1,j}``); row 6
    ``w = k_7``, ``out = err`` (``k_j`` weighted ``h e_j``). Built from a fixed template: the step-size loop
    calls this once per attempt."""
    h = float(h)
    p = np.asarray(p, dtype=np.float64).reshape(6)
    q = np.asarray(q, dtype=np.float64).reshape(6)
    if not (np.isfinite(h) and np.isfinite(p).all() and np.isfinite(q).all()):
        raise ValueError(f"a Dormand-Prince attempt gives non-finite coefficients (h={h!r}, p={p}, q={q})")
    rows = _BASE + h * _PER_H
    rows[1:, COL["P"]] = p
    rows[1:, COL["Q"]] = q
    return rows
