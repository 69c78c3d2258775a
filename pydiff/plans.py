"""Coefficient plans: a sampler's per-step scalars, computed once before the loop.

A plan is a float64 table with one row per step (or per timestep value), columns ``pydiff.ops.COLUMNS``,
copied to the device once (the drop-ins keep it in ``pydiff.diffusers._common.TableCache``; DPM-Solver in
``pydiff.dpm_solver.plan``). The sampling loop only selects rows (by a Python int, or by a device tensor
through ``fused_step(index=)``), so it performs no ``.item()``, no host sync and no host-to-device copy per
step.

The DDIM and DDPM row builders below take arrays of ``alpha_bar`` (cumulative products) for the current
and the previous timestep, so the same formulas serve diffusers' discrete grids and any other grid.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .ops import COL, coef_row

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


def _x0_conversion(prediction_type: str, sa, sb):
    """(P, Q, S) with x0 = S (P x + Q m), for alpha_t = sa, sigma_t = sb (DDIM eq. 9; Salimans & Ho 2022 for v).

    For eps the division by alpha comes last (S = 1/alpha): at alpha ~ 5e-5 this keeps the float32 error of
    x0 at the cancellation error of x - sigma eps over alpha, as in diffusers (docs/ops.md, column S).
    """
    one = np.ones_like(sa)
    if prediction_type == "epsilon":
        return one, -sb, 1.0 / sa
    if prediction_type == "sample":
        return np.zeros_like(sa), one, one
    if prediction_type == "v_prediction":
        return sa, -sb, one
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _eps_from_raw(prediction_type: str, sa, sb):
    """(A, D) with eps = A x + D m, straight from the raw model output (no clipping involved)."""
    if prediction_type == "epsilon":
        return np.zeros_like(sa), np.ones_like(sa)
    if prediction_type == "sample":
        return 1.0 / sb, -sa / sb
    return sb, sa  # v_prediction: eps = alpha v + sigma x


def _maximum(v, lo):
    return torch.clamp(v, min=lo) if isinstance(v, torch.Tensor) else np.maximum(v, lo)


def _exp_log_half(v):
    return torch.exp(0.5 * torch.log(v)) if isinstance(v, torch.Tensor) else np.exp(0.5 * np.log(v))


def _float64(scalars: dict) -> dict:
    return {k: (v.double().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64))
            for k, v in scalars.items()}


def ddim_scalars(a_t, a_prev, eta: float) -> dict:
    """The scalars of a DDIM step, in diffusers' order of operations.

    Works on float64 NumPy arrays (exact plans) and on float32 torch tensors: the drop-ins evaluate it on
    diffusers' own float32 ``alphas_cumprod`` so that their coefficients carry diffusers' rounding too.
    That matters where a formula cancels: ``sqrt(1 - a_t)`` at a_t ~ 1 - 4e-5 is off by an ulp and converting
    eps to x0 divides by alpha ~ 6e-3, which shows as ~1e-5 relative in the result.
    """
    beta_prod_t = 1 - a_t
    variance = ((1 - a_prev) / beta_prod_t) * (1 - a_t / a_prev)
    std = eta * variance ** 0.5
    return dict(sa=a_t ** 0.5, sb=beta_prod_t ** 0.5, sap=a_prev ** 0.5, direction=(1 - a_prev - std ** 2) ** 0.5,
                std=std)


def ddpm_scalars(a_t, a_prev, variance_type: str) -> dict:
    """The scalars of a DDPM step, in diffusers' order of operations (arrays as in ``ddim_scalars``).

    ``beta_t = 1 - a_t/a_prev`` cancels near t = 0 (float32: ~2e-4 relative at t = 3 of the linear schedule),
    so the drop-ins evaluate this in float32 like diffusers and the native plans in float64.
    """
    if variance_type not in DDPM_VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {DDPM_VARIANCE_TYPES} on the fused path, got {variance_type!r}")
    beta_prod_t = 1 - a_t
    current_alpha = a_t / a_prev
    current_beta = 1 - current_alpha
    variance = _maximum((1 - a_prev) / (1 - a_t) * current_beta, 1e-20)
    if variance_type == "fixed_small":
        std = variance ** 0.5
    elif variance_type == "fixed_small_log":
        std = _exp_log_half(variance)
    else:  # fixed_large, and fixed_large_log as the log-domain form of the same variance
        std = current_beta ** 0.5
    return dict(sa=a_t ** 0.5, sb=beta_prod_t ** 0.5, poc=(a_prev ** 0.5 * current_beta) / beta_prod_t,
                csc=current_alpha ** 0.5 * (1 - a_prev) / beta_prod_t, std=std)


def ddim_rows_from(scalars: dict, *, prediction_type: str = "epsilon", clip: float = math.inf,
                   use_clipped_model_output: bool = False, thresholding: bool = False) -> np.ndarray:
    """Assemble DDIM rows from ``ddim_scalars`` (float64 arithmetic on whatever those were)."""
    sc = _float64(scalars)
    sa, sb = sc["sa"], sc["sb"]
    with np.errstate(divide="ignore", invalid="ignore"):
        P, Q, S = _x0_conversion(prediction_type, sa, sb)
        rows = np.tile(coef_row(), sa.shape + (1,))
        rows[..., COL["P"]], rows[..., COL["Q"]], rows[..., COL["S"]] = P, Q, S
        rows[..., COL["B0"]] = sc["sap"]
        direction = sc["direction"]
        if use_clipped_model_output and (thresholding or math.isfinite(clip)):
            rows[..., COL["A"]] += direction / sb
            rows[..., COL["B0"]] += -direction * sa / sb
        else:
            A, D = _eps_from_raw(prediction_type, sa, sb)
            rows[..., COL["A"]] += direction * A
            rows[..., COL["D"]] += direction * D
        rows[..., COL["C"]] = sc["std"]
        rows[..., COL["CLIP"]] = clip
    return rows


def ddim_rows(alpha_bar_t, alpha_bar_prev, *, eta: float = 0.0, prediction_type: str = "epsilon",
              clip: float = math.inf, use_clipped_model_output: bool = False, thresholding: bool = False):
    """DDIM update rows (Song, Meng, Ermon, arXiv:2010.02502, eq. 12 and 16), exact in float64.

    ``x0 = clip(S (P x + Q m))``, ``sigma = eta sqrt((1-a_prev)/(1-a_t)) sqrt(1 - a_t/a_prev)``,
    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``, where ``eps`` is the model's
    noise estimate, or — with ``use_clipped_model_output`` — re-derived from the clipped x0:
    ``eps = (x - sqrt(a_t) x0) / sqrt(1 - a_t)``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = ddim_scalars(np.asarray(alpha_bar_t, np.float64), np.asarray(alpha_bar_prev, np.float64), eta)
    return ddim_rows_from(sc, prediction_type=prediction_type, clip=clip,
                          use_clipped_model_output=use_clipped_model_output, thresholding=thresholding)


def ddpm_rows_from(scalars: dict, *, prediction_type: str = "epsilon", clip: float = math.inf) -> np.ndarray:
    """Assemble DDPM rows from ``ddpm_scalars``."""
    sc = _float64(scalars)
    with np.errstate(divide="ignore", invalid="ignore"):
        P, Q, S = _x0_conversion(prediction_type, sc["sa"], sc["sb"])
        rows = np.tile(coef_row(), sc["sa"].shape + (1,))
        rows[..., COL["P"]], rows[..., COL["Q"]], rows[..., COL["S"]] = P, Q, S
        rows[..., COL["B0"]] = sc["poc"]
        rows[..., COL["A"]] = sc["csc"]
        rows[..., COL["C"]] = sc["std"]
        rows[..., COL["CLIP"]] = clip
    return rows


def ddpm_rows(alpha_bar_t, alpha_bar_prev, *, prediction_type: str = "epsilon", clip: float = math.inf,
              variance_type: str = "fixed_small"):
    """DDPM ancestral step rows (Ho, Jain, Abbeel, arXiv:2006.11239, eq. 6-7), exact in float64.

    ``x_prev = sqrt(a_prev) beta_t/(1-a_t) x0 + sqrt(alpha_t) (1-a_prev)/(1-a_t) x + std z`` with
    ``beta_t = 1 - a_t/a_prev``, and ``std^2`` the posterior variance ``(1-a_prev)/(1-a_t) beta_t``
    (clamped at 1e-20; ``fixed_small``/``fixed_small_log``) or ``beta_t`` (``fixed_large``/``fixed_large_log``).
    ``fixed_large_log`` gives NaN in diffusers 0.42 (it takes the square root of log beta_t); here it is the
    log-domain form of ``fixed_large``, i.e. the same std ``sqrt(beta_t)``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = ddpm_scalars(np.asarray(alpha_bar_t, np.float64), np.asarray(alpha_bar_prev, np.float64), variance_type)
    return ddpm_rows_from(sc, prediction_type=prediction_type, clip=clip)


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
