"""Coefficient plans: a sampler's per-step scalars, computed once in float64, kept on the device.

A plan is a float64 table with one row per step (or per timestep value), columns ``pydiff.ops.COLUMNS``.
The sampling loop only selects rows (by a Python int, or by a device tensor through ``fused_step(index=)``),
so it performs no ``.item()``, no host sync and no host-to-device copy per step.

The DDIM and DDPM row builders below take arrays of ``alpha_bar`` (cumulative products) for the current
and the previous timestep, so the same formulas serve diffusers' discrete grids and any other grid.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .ops import COL, NCOEF

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


class Plan:
    """A float64 coefficient table and its device copies (one per device and compute dtype)."""

    def __init__(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != NCOEF:
            raise ValueError(f"plan rows must have shape (R, {NCOEF}), got {rows.shape}")
        self.rows = rows
        self._tables: dict = {}

    def __len__(self) -> int:
        return self.rows.shape[0]

    def table(self, device, dtype=torch.float32) -> torch.Tensor:
        """The table on ``device`` in the compute dtype of data of ``dtype`` (copied once, then cached)."""
        cdtype = torch.float64 if dtype == torch.float64 else torch.float32
        key = (torch.device(device), cdtype)
        t = self._tables.get(key)
        if t is None:
            t = torch.from_numpy(self.rows).to(device=key[0], dtype=cdtype)
            self._tables[key] = t
        return t


def _x0_conversion(prediction_type: str, sa, sb):
    """(P, Q) with x0 = P x + Q m, for alpha_t = sa, sigma_t = sb (DDIM eq. 9; Salimans & Ho 2022 for v)."""
    if prediction_type == "epsilon":
        return 1.0 / sa, -sb / sa
    if prediction_type == "sample":
        return np.zeros_like(sa), np.ones_like(sa)
    if prediction_type == "v_prediction":
        return sa, -sb
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _eps_from_raw(prediction_type: str, sa, sb):
    """(A, D) with eps = A x + D m, straight from the raw model output (no clipping involved)."""
    if prediction_type == "epsilon":
        return np.zeros_like(sa), np.ones_like(sa)
    if prediction_type == "sample":
        return 1.0 / sb, -sa / sb
    return sb, sa  # v_prediction: eps = alpha v + sigma x


def ddim_rows(alpha_bar_t, alpha_bar_prev, *, eta: float = 0.0, prediction_type: str = "epsilon",
              clip: float = math.inf, use_clipped_model_output: bool = False, thresholding: bool = False):
    """DDIM update rows (Song, Meng, Ermon, arXiv:2010.02502, eq. 12 and 16).

    ``x0 = clip(P x + Q m)``, ``sigma = eta sqrt((1-a_prev)/(1-a_t)) sqrt(1 - a_t/a_prev)``,
    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``, where ``eps`` is the model's
    noise estimate, or — with ``use_clipped_model_output`` — re-derived from the clipped x0:
    ``eps = (x - sqrt(a_t) x0) / sqrt(1 - a_t)``.
    """
    a_t = np.asarray(alpha_bar_t, dtype=np.float64)
    a_prev = np.asarray(alpha_bar_prev, dtype=np.float64)
    sa, sb = np.sqrt(a_t), np.sqrt(1.0 - a_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        P, Q = _x0_conversion(prediction_type, sa, sb)
        var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
        std = eta * np.sqrt(var)
        direction = np.sqrt(1.0 - a_prev - std ** 2)
        rows = np.zeros(a_t.shape + (NCOEF,))
        rows[..., COL["P"]], rows[..., COL["Q"]] = P, Q
        rows[..., COL["B0"]] = np.sqrt(a_prev)
        clipped = thresholding or math.isfinite(clip)
        if use_clipped_model_output and clipped:
            rows[..., COL["A"]] += direction / sb
            rows[..., COL["B0"]] += -direction * sa / sb
        else:
            A, D = _eps_from_raw(prediction_type, sa, sb)
            rows[..., COL["A"]] += direction * A
            rows[..., COL["D"]] += direction * D
        rows[..., COL["C"]] = std
        rows[..., COL["CLIP"]] = clip
    return rows


def ddpm_rows(alpha_bar_t, alpha_bar_prev, *, prediction_type: str = "epsilon", clip: float = math.inf,
              variance_type: str = "fixed_small"):
    """DDPM ancestral step rows (Ho, Jain, Abbeel, arXiv:2006.11239, eq. 6-7).

    ``x_prev = sqrt(a_prev) beta_t/(1-a_t) x0 + sqrt(alpha_t) (1-a_prev)/(1-a_t) x + std z`` with
    ``beta_t = 1 - a_t/a_prev``, and ``std^2`` the posterior variance ``(1-a_prev)/(1-a_t) beta_t``
    (clamped at 1e-20; ``fixed_small``/``fixed_small_log``) or ``beta_t`` (``fixed_large``/``fixed_large_log``).
    ``fixed_large_log`` gives NaN in diffusers 0.42 (it takes the square root of log beta_t); here it is the
    log-domain form of ``fixed_large``, i.e. the same std ``sqrt(beta_t)``.
    """
    if variance_type not in DDPM_VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {DDPM_VARIANCE_TYPES} on the fused path, got {variance_type!r}")
    a_t = np.asarray(alpha_bar_t, dtype=np.float64)
    a_prev = np.asarray(alpha_bar_prev, dtype=np.float64)
    sa, sb = np.sqrt(a_t), np.sqrt(1.0 - a_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        P, Q = _x0_conversion(prediction_type, sa, sb)
        alpha_t = a_t / a_prev
        beta_t = 1.0 - alpha_t
        rows = np.zeros(a_t.shape + (NCOEF,))
        rows[..., COL["P"]], rows[..., COL["Q"]] = P, Q
        rows[..., COL["B0"]] = np.sqrt(a_prev) * beta_t / (1.0 - a_t)
        rows[..., COL["A"]] = np.sqrt(alpha_t) * (1.0 - a_prev) / (1.0 - a_t)
        if variance_type in ("fixed_small", "fixed_small_log"):
            var = np.maximum((1.0 - a_prev) / (1.0 - a_t) * beta_t, 1e-20)
        else:
            var = beta_t
        rows[..., COL["C"]] = np.sqrt(var)
        rows[..., COL["CLIP"]] = clip
    return rows


def check_finite(rows: np.ndarray, what: str, labels=None) -> None:
    """Raise a ValueError naming the offending configuration when a plan has a non-finite coefficient.

    CLIP may be +inf (no clipping); every other column must be finite, or the sampler would silently
    produce NaN/inf.
    """
    body = np.delete(rows, COL["CLIP"], axis=-1)
    bad = ~np.isfinite(body).all(axis=-1)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        where = f" (first at {labels[i]})" if labels is not None else ""
        raise ValueError(f"{what} gives non-finite coefficients{where}")
