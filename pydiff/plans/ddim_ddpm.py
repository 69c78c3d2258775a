"""DDIM and DDPM coefficient rows, for any grid of ``alpha_bar`` (cumulative products).

The row builders take arrays of ``alpha_bar`` for the current and the previous timestep, so the same
formulas serve diffusers' discrete grids (the drop-ins, one row per timestep value) and any other grid (the
native plans). The scalars are written once in diffusers' order of operations (``ddim_scalars``,
``ddpm_scalars``) and evaluated on float32 tensors by the drop-ins (diffusers' rounding, for parity) and on
float64 arrays by the native plans (exact).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import COL, NCOEF
from .conversions import conversion, eps_from_raw
from .rows import RowBuilder, check_finite, finite_rows

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DDPM_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
#: variances the model predicts per element (Nichol & Dhariwal 2021, arXiv:2102.09672), read by the kernel through
#: its variance input ``var`` (docs/ops.md: ``e = exp(VA + VB v)``, the noise term ``C e z``)
DDPM_LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def _check_prediction_type(prediction_type):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _maximum(v, lo):
    return torch.clamp(v, min=lo) if isinstance(v, torch.Tensor) else np.maximum(v, lo)


def _exp_log_half(v):
    return torch.exp(0.5 * torch.log(v)) if isinstance(v, torch.Tensor) else np.exp(0.5 * np.log(v))


def _log(v):
    return torch.log(v) if isinstance(v, torch.Tensor) else np.log(v)


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
    kinds = DDPM_VARIANCE_TYPES + DDPM_LEARNED_VARIANCE_TYPES
    if variance_type not in kinds:
        raise ValueError(f"variance_type must be one of {kinds} on the fused path, got {variance_type!r}")
    beta_prod_t = 1 - a_t
    current_alpha = a_t / a_prev
    current_beta = 1 - current_alpha
    variance = _maximum((1 - a_prev) / (1 - a_t) * current_beta, 1e-20)
    extra = {}
    if variance_type in DDPM_LEARNED_VARIANCE_TYPES:
        # the noise weight is 1: the std comes per element from the variance input (ddpm_rows_from)
        std = torch.ones_like(a_t) if isinstance(a_t, torch.Tensor) else np.ones_like(a_t)
    if variance_type == "learned_range":
        # the bounds of the interpolated log-variance, rounded as diffusers rounds them (log of its float32 scalars)
        extra = dict(min_log=_log(variance), max_log=_log(current_beta))
    elif variance_type == "learned":
        pass
    elif variance_type == "fixed_small":
        std = variance ** 0.5
    elif variance_type == "fixed_small_log":
        std = _exp_log_half(variance)
    else:  # fixed_large, and fixed_large_log as the log-domain form of the same variance
        std = current_beta ** 0.5
    return dict(sa=a_t ** 0.5, sb=beta_prod_t ** 0.5, poc=(a_prev ** 0.5 * current_beta) / beta_prod_t,
                csc=current_alpha ** 0.5 * (1 - a_prev) / beta_prod_t, std=std, **extra)


def ddim_rows_from(scalars: dict, *, prediction_type: str = "epsilon", clip: float = math.inf,
                   use_clipped_model_output: bool = False, thresholding: bool = False) -> np.ndarray:
    """Assemble DDIM rows from ``ddim_scalars`` (float64 arithmetic on whatever those were)."""
    _check_prediction_type(prediction_type)
    sc = _float64(scalars)
    sa, sb, direction = sc["sa"], sc["sb"], sc["direction"]
    with np.errstate(divide="ignore", invalid="ignore"):
        P, Q, S = conversion("x0", prediction_type, sa, sb)
        if use_clipped_model_output and (thresholding or math.isfinite(clip)):
            A, B0 = eps_from_raw("x0", sa, sb)  # eps re-derived from the clipped x0 (w)
            A, D, B0 = direction * A, 0.0, sc["sap"] + direction * B0
        else:
            A, D = eps_from_raw(prediction_type, sa, sb)
            A, D, B0 = direction * A, direction * D, sc["sap"]
        b = RowBuilder()
        b.add(P=P, Q=Q, S=S, A=A, D=D, B0=B0, C=sc["std"], CLIP=np.broadcast_to(clip, np.shape(sa)))
    return b.table().reshape(np.shape(sa) + (NCOEF,))


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


def ddpm_rows_from(scalars: dict, *, prediction_type: str = "epsilon", clip: float = math.inf,
                   variance_type: str | None = None) -> np.ndarray:
    """Assemble DDPM rows from ``ddpm_scalars``.

    ``variance_type`` matters only for the learned variances, whose rows expect the kernel's variance input
    ``v`` (docs/ops.md: noise term ``C e z`` with ``e = exp(VA + VB v)``), as diffusers' DDPMScheduler reads the
    variance channels of the model output:

    * ``'learned_range'`` (Nichol & Dhariwal 2021, eq. 15): ``log sigma^2 = f max_log + (1 - f) min_log``,
      ``f = (v + 1)/2``, ``max_log = log beta_t``, ``min_log = log(posterior variance)`` (clamped at 1e-20), so
      ``sigma = exp(VA + VB v)`` with ``VA = (max_log + min_log)/4``, ``VB = (max_log - min_log)/4``;
    * ``'learned'``: diffusers 0.42 takes ``v`` as the variance itself (``sigma = v ** 0.5``; NaN for v < 0), so
      the rows take ``v = log(variance)`` (the caller's one torch pass) with ``VA = 0``, ``VB = 1/2``.
    """
    _check_prediction_type(prediction_type)
    sc = _float64(scalars)
    shape = np.shape(sc["sa"])
    cols = {}
    if variance_type == "learned_range":
        cols = dict(VA=(sc["max_log"] + sc["min_log"]) / 4, VB=(sc["max_log"] - sc["min_log"]) / 4)
    elif variance_type == "learned":
        cols = dict(VA=np.zeros(shape), VB=np.full(shape, 0.5))
    with np.errstate(divide="ignore", invalid="ignore"):
        P, Q, S = conversion("x0", prediction_type, sc["sa"], sc["sb"])
        b = RowBuilder()
        b.add(P=P, Q=Q, S=S, A=sc["csc"], B0=sc["poc"], C=sc["std"], CLIP=np.broadcast_to(clip, shape), **cols)
    return b.table().reshape(shape + (NCOEF,))


def ddpm_rows(alpha_bar_t, alpha_bar_prev, *, prediction_type: str = "epsilon", clip: float = math.inf,
              variance_type: str = "fixed_small"):
    """DDPM ancestral step rows (Ho, Jain, Abbeel, arXiv:2006.11239, eq. 6-7), exact in float64.

    ``x_prev = sqrt(a_prev) beta_t/(1-a_t) x0 + sqrt(alpha_t) (1-a_prev)/(1-a_t) x + std z`` with
    ``beta_t = 1 - a_t/a_prev``, and ``std^2`` the posterior variance ``(1-a_prev)/(1-a_t) beta_t``
    (clamped at 1e-20; ``fixed_small``/``fixed_small_log``) or ``beta_t`` (``fixed_large``/``fixed_large_log``).
    ``fixed_large_log`` gives NaN in diffusers 0.42 (it takes the square root of log beta_t); here it is the
    log-domain form of ``fixed_large``, i.e. the same std ``sqrt(beta_t)``. ``learned``/``learned_range``: the
    std comes per element from the variance input (``ddpm_rows_from``).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = ddpm_scalars(np.asarray(alpha_bar_t, np.float64), np.asarray(alpha_bar_prev, np.float64), variance_type)
    return ddpm_rows_from(sc, prediction_type=prediction_type, clip=clip, variance_type=variance_type)


def _alpha_bar_prev(alphas_cumprod: torch.Tensor, prev: np.ndarray, final) -> torch.Tensor:
    """``alpha_bar[prev]``, or ``final`` where ``prev < 0`` (in ``alphas_cumprod``'s dtype, no arithmetic)."""
    prev = torch.from_numpy(np.asarray(prev, dtype=np.int64))
    final = torch.as_tensor(final, dtype=alphas_cumprod.dtype).reshape(())
    return torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final)


def ddim_timestep_table(alphas_cumprod: torch.Tensor, final_alpha_cumprod, step_ratio: int, *, eta: float,
                        prediction_type: str, clip: float, use_clipped_model_output: bool, thresholding: bool,
                        check_timesteps=None, what: str = "DDIM") -> np.ndarray:
    """diffusers' DDIM rows for every timestep value ``t = 0..N-1``, with ``prev = t - step_ratio``
    (``final_alpha_cumprod`` below 0), the scalars in the dtype of ``alphas_cumprod`` (see ``ddim_scalars``).

    ``check_timesteps``: the timesteps a run uses; their rows must be finite (``check_finite``, naming
    ``what`` and the first bad timestep).
    """
    ac = alphas_cumprod.detach().cpu()
    t = np.arange(ac.shape[0])
    rows = ddim_rows_from(ddim_scalars(ac, _alpha_bar_prev(ac, t - step_ratio, final_alpha_cumprod), eta),
                          prediction_type=prediction_type, clip=clip,
                          use_clipped_model_output=use_clipped_model_output, thresholding=thresholding)
    if check_timesteps is not None:
        on_grid = np.isin(t, np.asarray(check_timesteps))
        check_finite(rows[on_grid], what, [f"timestep {ti}" for ti in t[on_grid]])
    return rows


class DDIMEtaRows:
    """Any eta's DDIM row at one timestep, from eta-independent parts computed once per grid.

    A DDIM row depends on eta through two float32 scalars only: ``std = eta sqrt(var)`` (column C) and
    ``direction = sqrt(1 - a_prev - std^2)``, which scales the eps terms, and ``ddim_rows_from`` is affine in
    ``direction``. So the rows with direction 0 and 1 (std 0), ``sqrt(var)`` and ``a_prev`` give any eta's row
    in a few scalar operations (~30 us; a row through ``ddim_rows_from`` itself took 0.2 ms), which is what a
    per-step eta schedule needs: one row per step and no table per eta. The scalars are NumPy float32 scalars,
    rounded as diffusers' 0-d tensors round them (torch's vectorised ``** 0.5`` over a whole table differs from
    the correctly rounded square root by an ulp in ~20% of elements).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, final_alpha_cumprod, step_ratio: int, *, prediction_type: str,
                 clip: float, use_clipped_model_output: bool, thresholding: bool):
        ac = alphas_cumprod.detach().cpu()
        a_prev = _alpha_bar_prev(ac, np.arange(ac.shape[0]) - step_ratio, final_alpha_cumprod)
        sc = ddim_scalars(ac, a_prev, 1.0)  # std at eta = 1 is sqrt(var), in diffusers' float32 rounding
        zero = torch.zeros_like(sc["std"])
        kw = dict(prediction_type=prediction_type, clip=clip, use_clipped_model_output=use_clipped_model_output,
                  thresholding=thresholding)
        with np.errstate(divide="ignore", invalid="ignore"):
            r0 = ddim_rows_from({**sc, "direction": zero, "std": zero}, **kw)
            r1 = ddim_rows_from({**sc, "direction": zero + 1, "std": zero}, **kw)
            self._r0, self._dr = r0, r1 - r0  # CLIP = +inf gives inf - inf = NaN there; row() restores it
            self._dr[..., COL["S"]] = 0.0  # S = 1/sqrt(a_t) does not depend on eta (and is +inf where a_t = 0)
        self._a_prev, self._sqrt_var = a_prev.numpy(), sc["std"].numpy()

    def row(self, t: int, eta: float):
        """The row of timestep ``t`` for ``eta``, or None when it is not finite (eta too large, degenerate)."""
        std = np.float32(eta) * self._sqrt_var[t]  # float32, in diffusers' order of operations
        v = np.float32(1) - self._a_prev[t] - std * std
        # diffusers' 0-d float32 ``** 0.5`` (torch's float32 sqrt is not always NumPy's: 1 ulp apart at times)
        direction = np.float32((torch.tensor(v) ** 0.5).item()) if v >= 0 else np.float32(np.nan)
        row = self._r0[t] + np.float64(direction) * self._dr[t]
        row[COL["C"]] = np.float64(std)
        row[COL["CLIP"]] = self._r0[t, COL["CLIP"]]  # inf - inf in the difference when not clipping
        return row if finite_rows(row) else None


def ddpm_timestep_table(alphas_cumprod: torch.Tensor, timesteps, *, variance_type: str, prediction_type: str,
                        clip: float, what: str = "DDPM"):
    """diffusers' DDPM rows for the timesteps ``timesteps`` of a run (descending; each one's ``prev`` is the
    next, ``alpha_bar_prev = 1`` after the last), or for every ``t`` with ``prev = t - 1`` when ``timesteps``
    is None. No noise at ``t = 0``.

    Returns ``(rows, on_schedule)``: ``(N, NCOEF)`` rows indexed by timestep value (NaN off the schedule) and
    the boolean mask of the timesteps that have rows. Non-finite rows on the schedule raise ``check_finite``'s
    ValueError naming ``what``.
    """
    ac = alphas_cumprod.detach().cpu()
    N = ac.shape[0]
    if timesteps is None:
        rows_t = np.arange(N)
        prev = rows_t - 1
    else:
        rows_t = np.asarray(timesteps, dtype=np.int64)
        prev = np.append(rows_t[1:], -1)
        # a schedule may hold t = N (timestep_spacing 'leading' with steps_offset=1 and N steps): diffusers accepts
        # it and fails only when stepping there (alphas_cumprod[N]); such a t gets no row, its step falls back
        inside = rows_t < N
        rows_t, prev = rows_t[inside], prev[inside]
    sc = ddpm_scalars(ac[rows_t], _alpha_bar_prev(ac, prev, 1.0), variance_type)
    sub = ddpm_rows_from(sc, prediction_type=prediction_type, clip=clip, variance_type=variance_type)
    sub[rows_t == 0, COL["C"]] = 0.0
    check_finite(sub, what, [f"timestep {t}" for t in rows_t])
    rows = np.full((N, NCOEF), np.nan)
    rows[rows_t] = sub
    on_schedule = np.zeros(N, dtype=bool)
    on_schedule[rows_t] = True
    return rows, on_schedule
