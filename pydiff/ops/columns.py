"""The coefficient row layout of the fused ops: the single source of truth (docs/ops.md, "Coefficient columns").

A row holds every per-step scalar of one fused update; plans compute rows in float64 on the host, the
kernels read them from a small device table. The native modules export the same column names
(``pydiff._C.COLUMNS``), checked by name when a backend loads; the Triton kernels index rows with ``COL``.
"""
from __future__ import annotations

import math

import numpy as np

# In the order the kernels use them: model-output combination, conversion, update, output scale.
COLUMNS = (
    "M1", "M2",                                  # m_e = M1*m + M2*m2 (only when m2 is given)
    "P", "Q", "S", "CLIP",                       # w = clamp(S*(P*x + Q*m_e), -CLIP, CLIP)
    "A", "D", "B0", "B1", "B2", "B3", "B4", "B5", "B6",   # acc = A*x + D*m_e + B0*w + sum_k Bk*h_k
    "G",                                         #     + G*e^2*m2
    "C", "VA", "VB",                             #     + C*e*z,  e = exp(VA + VB*v)
    "O",                                         # out = O*acc
)
NCOEF = len(COLUMNS)
COL = {name: i for i, name in enumerate(COLUMNS)}
K_MAX = 6  # history tensors h1..h6 (Dormand-Prince combines 6 slopes besides the current one)
HIST_COLUMNS = tuple(f"B{k}" for k in range(1, K_MAX + 1))
DEFAULTS = {"M1": 1.0, "S": 1.0, "CLIP": math.inf, "O": 1.0}  # every other column defaults to 0


def coef_row(**values: float) -> np.ndarray:
    """A float64 coefficient row; unnamed columns take their defaults (``M1 = S = O = 1``, ``CLIP = +inf``, else 0).

    >>> coef_row(P=1.0, B0=1.0)   # out = w = x
    """
    row = np.zeros(NCOEF, dtype=np.float64)
    for name, value in DEFAULTS.items():
        row[COL[name]] = value
    for name, value in values.items():
        if name not in COL:
            raise ValueError(f"unknown coefficient {name!r}; columns are {COLUMNS}")
        row[COL[name]] = value
    if row[COL["CLIP"]] < 0:  # the clip is to [-CLIP, CLIP] (NaN passes: a NaN row is the kernels' poison row)
        raise ValueError(f"CLIP must be >= 0 (+inf: no clip), got {row[COL['CLIP']]!r}")
    return row


def coef_table(n: int) -> np.ndarray:
    """``(n, NCOEF)`` float64 rows, each the default row (fill columns by name with ``COL``)."""
    return np.tile(coef_row(), (int(n), 1))
