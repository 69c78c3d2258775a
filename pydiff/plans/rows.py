"""The one row builder and the one finiteness check of the plan layer.

A plan is a float64 table with one row per step (columns ``pydiff.ops.columns.COLUMNS``), computed on the
host before the loop and copied to the device once; the loop only selects rows. Columns are addressed by
name only (``pydiff.ops.COL``; docs/ops.md), so the plans do not depend on the column order or count.
"""
from __future__ import annotations

import numpy as np

from ..ops import COL, NCOEF, coef_row
from ..ops.columns import K_MAX


def hist_columns(weights) -> dict:
    """``{"B1": w1, "B2": w2, ...}`` for the history tensors ``h1, h2, ...`` (at most ``K_MAX``)."""
    weights = tuple(weights)
    if len(weights) > K_MAX:
        raise ValueError(f"a fused step takes at most {K_MAX} history tensors, got {len(weights)}")
    return {f"B{k}": w for k, w in enumerate(weights, start=1)}


def update_row(conv, A, b0, hist=(), **columns) -> np.ndarray:
    """The row of ``out = A x + b0 w + sum_k hist[k-1] h_k`` with ``w = S (P x + Q m)``, ``conv = (P, Q, S)``."""
    P, Q, S = conv
    return coef_row(P=P, Q=Q, S=S, A=A, B0=b0, **hist_columns(hist), **columns)


class RowBuilder:
    """Appends coefficient rows and returns them as one ``(R, NCOEF)`` float64 table.

    ``add`` takes column values by name; array values add one row per element (the per-timestep tables of
    the DDIM/DDPM drop-ins), scalars one row. Each call returns the index of its first row.
    """

    def __init__(self):
        self._blocks = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, **columns) -> int:
        shape = np.broadcast_shapes(*(np.shape(v) for v in columns.values())) if columns else ()
        block = np.tile(coef_row(), (int(np.prod(shape, dtype=np.int64)), 1))
        for name, value in columns.items():
            if name not in COL:
                coef_row(**{name: 0.0})  # raises the unknown-column error
            block[:, COL[name]] = np.broadcast_to(np.asarray(value, dtype=np.float64), shape).reshape(-1)
        return self.add_row(block)

    def add_update(self, conv, A, b0, hist=(), **columns) -> int:
        """One ``update_row``."""
        return self.add_row(update_row(conv, A, b0, hist, **columns))

    def add_row(self, row) -> int:
        """Append ready rows (``(NCOEF,)`` or ``(n, NCOEF)``)."""
        row = np.asarray(row, dtype=np.float64).reshape(-1, NCOEF)
        first = self._n
        self._blocks.append(row)
        self._n += row.shape[0]
        return first

    def table(self) -> np.ndarray:
        if not self._blocks:
            return np.zeros((0, NCOEF))
        return np.concatenate(self._blocks, axis=0)


def with_guidance(rows, scale: float):
    """A copy of a row or row table (NumPy array or torch tensor) whose model output is the classifier-free
    combination ``m_e = (1 - s) m + s m2`` (Ho & Salimans, arXiv:2207.12598): ``M1 = 1 - s``, ``M2 = s``."""
    rows = rows.clone() if hasattr(rows, "clone") else np.array(rows, dtype=np.float64)
    rows[..., COL["M1"]] = 1.0 - scale
    rows[..., COL["M2"]] = scale
    return rows


def finite_rows(rows: np.ndarray) -> np.ndarray:
    """Per row: every column but CLIP (which may be +inf: no clipping) is finite -- or S is infinite and CLIP
    finite: x0 = (x - sqrt(1 - abar) eps)/sqrt(abar) at a zero-SNR timestep (abar = 0) is +-inf, and the clip takes
    it to +-CLIP, exactly as torch's clamp takes diffusers' infinite x0 there (an exact tie x = eps is NaN in both)."""
    rows = np.asarray(rows)
    s = rows[..., COL["S"]]
    clipped_inf_x0 = np.isinf(s) & np.isfinite(rows[..., COL["CLIP"]])
    others = np.isfinite(np.delete(rows, [COL["CLIP"], COL["S"]], axis=-1)).all(axis=-1)
    return others & (np.isfinite(s) | clipped_inf_x0)


def check_finite(rows: np.ndarray, what: str, labels=None) -> None:
    """Raise a ValueError naming the offending configuration when a plan has a non-finite coefficient
    (the sampler would otherwise silently produce NaN/inf)."""
    bad = ~finite_rows(rows)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        where = f" (first at {labels[i]})" if labels is not None else ""
        raise ValueError(f"{what} gives non-finite coefficients{where}")
