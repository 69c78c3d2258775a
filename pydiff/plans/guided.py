"""The float64 per-step arithmetic of guided-diffusion's Gaussian diffusion (Dhariwal & Nichol, arXiv:2105.05233;
Nichol & Dhariwal, arXiv:2102.09672; Ho et al., arXiv:2006.11239; Song et al., arXiv:2010.02502).

A discrete diffusion with ``betas`` ``beta_i`` (``i = 0..K-1``) has ``abar_i = prod_{j<=i} (1 - beta_j)``,
``abar_prev_i = abar_{i-1}`` (1 at ``i = 0``) and the posterior ``q(x_{i-1} | x_i, x_0) = N(c1 x0 + c2 x_i, pv)``::

    c1 = beta sqrt(abar_prev) / (1 - abar)        c2 = (1 - abar_prev) sqrt(1 - beta) / (1 - abar)
    pv = beta (1 - abar_prev) / (1 - abar)        log pv clipped: log pv_1 at i = 0 (pv_0 = 0)

Everything a sampling loop needs is a row of ``pydiff.ops.fused_step`` per step (``p_sample_rows``,
``ddim_rows_guided``); the functions on tensors (``q_sample``, ``posterior_mean``, ``learned_log_variance``, ...)
are the same formulas for the non-loop methods, evaluated as guided-diffusion evaluates them: float64 tables
indexed by the batch's timesteps and rounded to float32 (``extract``).

Names of the parameterizations (strings; the face maps its enums to them): mean types ``'epsilon'``,
``'start_x'``, ``'previous_x'``; variance types ``'fixed_small'``, ``'fixed_large'``, ``'learned'``,
``'learned_range'``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ops import COL
from ..schedules import make_betas
from .rows import RowBuilder, check_finite, with_guidance

MEAN_TYPES = ("previous_x", "start_x", "epsilon")
VAR_TYPES = ("learned", "fixed_small", "fixed_large", "learned_range")
LEARNED_VAR_TYPES = ("learned", "learned_range")
SCHEDULE_NAMES = ("linear", "cosine")


class UnknownScheduleError(ValueError, NotImplementedError):
    """An unknown beta schedule name: a ValueError that is also the NotImplementedError guided-diffusion raises."""


def named_betas(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """guided-diffusion's named beta schedules, float64.

    ``'linear'``: Ho et al.'s ``beta`` from 1e-4 to 0.02 over 1000 steps, both ends scaled by ``1000 / N`` so the
    schedule keeps its shape for any ``N``; ``'cosine'``: ``beta_i = min(1 - f((i+1)/N) / f(i/N), 0.999)`` with
    ``f(t) = cos((t + 0.008)/1.008 * pi/2)^2`` (Nichol & Dhariwal, eq. 17). Both are ``pydiff.schedules.make_betas``.
    """
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return make_betas("linear", num_diffusion_timesteps, scale * 0.0001, scale * 0.02)
    if schedule_name == "cosine":
        return make_betas("squaredcos_cap_v2", num_diffusion_timesteps, max_beta=0.999)
    raise UnknownScheduleError(f"schedule_name must be one of {SCHEDULE_NAMES}, got {schedule_name!r}")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Betas discretizing a continuous ``alpha_bar(t)`` on ``t in [0, 1]``:
    ``beta_i = min(1 - alpha_bar((i+1)/N) / alpha_bar(i/N), max_beta)`` (the cap keeps ``beta < 1`` at t = 1)."""
    if not callable(alpha_bar):
        raise TypeError(f"alpha_bar must be a callable of t in [0, 1], got {type(alpha_bar).__name__}")
    n = num_diffusion_timesteps
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                    dtype=np.float64)


def spaced_betas(alphas_cumprod: np.ndarray, use_timesteps) -> tuple[np.ndarray, list]:
    """The betas of the diffusion that keeps only the timesteps ``use_timesteps`` of one with ``alphas_cumprod``:
    ``beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}`` (``abar_{t_{-1}} = 1``), and the kept timesteps ascending."""
    keep = set(use_timesteps)
    betas, kept, last = [], [], 1.0
    for i, ac in enumerate(np.asarray(alphas_cumprod, dtype=np.float64)):
        if i in keep:
            betas.append(1.0 - ac / last)
            kept.append(i)
            last = ac
    return np.array(betas, dtype=np.float64), kept


def space_timesteps(num_timesteps: int, section_counts) -> set:
    """Timesteps to keep from ``num_timesteps``: ``"ddimN"`` is the integer stride ``k`` (the smallest) for which
    ``range(0, num_timesteps, k)`` has exactly ``N`` elements; otherwise the range is cut into
    ``len(section_counts)`` nearly equal sections (the first ``num_timesteps % len`` one step longer), and a
    section of ``size`` steps keeps ``count`` steps at ``round(j (size-1)/(count-1))`` (Python's round-half-even),
    ``j = 0..count-1`` (just its first step when ``count <= 1``). ``section_counts`` is a list of ints or a
    comma-separated string."""
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            try:
                desired = int(section_counts[len("ddim"):])
            except ValueError:
                raise ValueError(f"section_counts: 'ddimN' needs an integer N, got {section_counts!r}") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"section_counts {section_counts!r}: cannot create exactly {desired} steps from "
                             f"{num_timesteps} with an integer stride")
        try:
            section_counts = [int(c) for c in section_counts.split(",")]
        except ValueError:
            raise ValueError("section_counts must be 'ddimN', comma-separated integers or a list of ints, got "
                             f"{section_counts!r}") from None
    counts = list(section_counts)
    if not counts:
        raise ValueError("section_counts must name at least one section")
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"section_counts must hold ints, got {c!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"section_counts: cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return set(steps)


def diffusion_tables(betas) -> dict:
    """Every per-timestep float64 array of a diffusion with these ``betas`` (names as guided-diffusion's attributes).

    ``betas`` must be 1-D with ``0 < beta <= 1``.
    """
    betas = np.array(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not ((betas > 0).all() and (betas <= 1).all()):
        raise ValueError("betas must lie in (0, 1]")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    one_minus = 1.0 - ac
    with np.errstate(divide="ignore"):
        pv = betas * (1.0 - ac_prev) / one_minus
        # pv_0 = 0: the log takes pv_1 there (what the decoder likelihood of the first step uses)
        pv_log = np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(np.maximum(pv, 1e-20))
        return dict(
            betas=betas, num_timesteps=len(betas), alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
            alphas_cumprod_next=np.append(ac[1:], 0.0), sqrt_alphas_cumprod=np.sqrt(ac),
            sqrt_one_minus_alphas_cumprod=np.sqrt(one_minus), log_one_minus_alphas_cumprod=np.log(one_minus),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac), sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1),
            posterior_variance=pv, posterior_log_variance_clipped=pv_log,
            posterior_mean_coef1=betas * np.sqrt(ac_prev) / one_minus,
            posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(alphas) / one_minus,
        )


def fixed_variance(tab: dict, var_type: str):
    """``(variance, log_variance)`` arrays of a fixed variance type: ``'fixed_small'`` the posterior variance
    (log clipped), ``'fixed_large'`` ``beta`` with ``pv_1`` at ``i = 0`` (Ho et al.'s choice for a better decoder
    likelihood)."""
    if var_type == "fixed_small":
        return tab["posterior_variance"], tab["posterior_log_variance_clipped"]
    if var_type == "fixed_large":
        pv = tab["posterior_variance"]
        v = np.append(pv[1] if len(pv) > 1 else tab["betas"][0], tab["betas"][1:])
        return v, np.log(v)
    raise ValueError(f"model_var_type {var_type!r} is not a fixed variance")


def learned_range_bounds(tab: dict):
    """``(min_log, max_log)``: the learned-range log variance ``frac max_log + (1 - frac) min_log``,
    ``frac = (v + 1)/2``, between the clipped log posterior variance and ``log beta``."""
    return tab["posterior_log_variance_clipped"], np.log(tab["betas"])


def _xstart_conversion(tab: dict, mean_type: str):
    """``(P, Q, S)`` arrays with ``x0 = S (P x + Q m)`` for a model output ``m`` of ``mean_type``."""
    n = tab["num_timesteps"]
    if mean_type == "epsilon":
        # x0 = (x - sqrt(1 - abar) eps) / sqrt(abar): the division last (docs/ops.md, column S)
        return np.ones(n), -tab["sqrt_one_minus_alphas_cumprod"], 1.0 / tab["sqrt_alphas_cumprod"]
    if mean_type == "start_x":
        return np.zeros(n), np.ones(n), np.ones(n)
    if mean_type == "previous_x":
        # x0 = (x_prev - c2 x) / c1
        return -tab["posterior_mean_coef2"], np.ones(n), 1.0 / tab["posterior_mean_coef1"]
    raise ValueError(f"model_mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")


def _check_types(mean_type, var_type):
    if mean_type not in MEAN_TYPES:
        raise ValueError(f"model_mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
    if var_type not in VAR_TYPES:
        raise ValueError(f"model_var_type must be one of {VAR_TYPES}, got {var_type!r}")


def p_sample_rows(tab: dict, *, mean_type: str, var_type: str, clip_denoised: bool) -> np.ndarray:
    """``(K, NCOEF)`` rows of the ancestral step (Ho et al. eq. 6-7) with classifier guidance (Alg. 1), row ``i``
    for timestep ``i``::

        x0  = clip(S (P x + Q m))                       (clip to [-1, 1] when clip_denoised)
        mu  = c1 x0 + c2 x                              (previous_x: mu = m)
        x'  = mu + Sigma g + [i > 0] Sigma^(1/2) z      (g = grad log p(y|x_t), the fused m2; z the noise)

    Fixed variances: ``G = Sigma_i``, ``C = [i > 0] exp(log Sigma_i / 2)``. Learned variances take the model's
    variance channels as the fused ``var`` input ``v`` with ``e = exp(VA + VB v) = Sigma^(1/2)``, ``G = 1`` and
    ``C = [i > 0]``: learned-range ``log Sigma = (max + min)/2 + v (max - min)/2`` gives ``VA = (max + min)/4``,
    ``VB = (max - min)/4``; learned ``log Sigma = v`` gives ``VA = 0``, ``VB = 1/2``.
    """
    _check_types(mean_type, var_type)
    n = tab["num_timesteps"]
    P, Q, S = _xstart_conversion(tab, mean_type)
    nonzero = (np.arange(n) > 0).astype(np.float64)
    if mean_type == "previous_x":
        mean = dict(A=0.0, D=1.0, B0=0.0)
    else:
        mean = dict(A=tab["posterior_mean_coef2"], B0=tab["posterior_mean_coef1"])
    if var_type in LEARNED_VAR_TYPES:
        if var_type == "learned_range":
            lo, hi = learned_range_bounds(tab)
            var = dict(VA=(hi + lo) / 4, VB=(hi - lo) / 4)
        else:
            var = dict(VA=0.0, VB=0.5)
        var.update(G=1.0, C=nonzero)
    else:
        v, logv = fixed_variance(tab, var_type)
        var = dict(G=v, C=nonzero * np.exp(0.5 * logv))
    b = RowBuilder()
    b.add(P=P, Q=Q, S=S, CLIP=np.full(n, 1.0 if clip_denoised else math.inf), **mean, **var)
    rows = b.table()
    check_finite(rows, "p_sample", [f"timestep {i}" for i in range(n)])
    return rows


def ddim_direction(tab: dict, eta: float):
    """``(sigma, sqrt(1 - abar_prev - sigma^2))`` of DDIM (Song et al. eq. 12, 16), float64 arrays.

    ``sigma^2 = eta^2 (1 - abar_prev)/(1 - abar) beta``. The direction is written without the cancellation of
    ``1 - abar_prev - sigma^2``: ``(1 - abar_prev) [(1 - eta^2) + eta^2 abar (1 - abar_prev)/(abar_prev (1 - abar))]``,
    both terms >= 0 for ``0 <= eta <= 1``. (In float32 the subtraction goes negative -- NaN -- at the first sampling
    step of the 1000-step cosine schedule spaced to "10,5" with eta = 1: abar = 2.4e-9, abar_prev = 0.0125.)
    """
    a, ap, beta = tab["alphas_cumprod"], tab["alphas_cumprod_prev"], tab["betas"]
    one_a, one_ap = 1.0 - a, 1.0 - ap
    eta2 = float(eta) ** 2
    sigma = float(eta) * np.sqrt(one_ap / one_a * beta)
    with np.errstate(invalid="ignore"):
        if eta2 <= 1.0:
            d2 = one_ap * ((1.0 - eta2) + eta2 * a * one_ap / (ap * one_a))
        else:  # eta > 1 leaves the DDIM family; negative (NaN) where sigma exceeds sqrt(1 - abar_prev)
            d2 = one_ap - sigma * sigma
        return sigma, np.sqrt(d2)


def ddim_rows_guided(tab: dict, *, mean_type: str, clip_denoised: bool, eta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, xstart_rows)``, each ``(K, NCOEF)``: the DDIM step as guided-diffusion takes it, with the
    classifier shift of Alg. 2 (``condition_score``)::

        x0  = clip(S (P x + Q m));   eps = (x - sqrt(abar) x0)/sqrt(1 - abar)        (eps re-derived from x0)
        eps' = eps - sqrt(1 - abar) g;   x0' = x0 + (1 - abar)/sqrt(abar) g         (g = grad log p(y|x_t))
        x'  = sqrt(abar_prev) x0' + sqrt(1 - abar_prev - sigma^2) eps' + [i > 0] sigma z

    i.e. ``A = d/sqrt(1 - abar)``, ``B0 = sqrt(abar_prev) - d sqrt(abar)/sqrt(1 - abar)``,
    ``G = sqrt(abar_prev)(1 - abar)/sqrt(abar) - d sqrt(1 - abar)``, ``C = [i > 0] sigma`` with ``d`` the direction
    of ``ddim_direction``. The shift enters after the clip (as in guided-diffusion), so it is the ``G`` term, not
    ``M2``. ``xstart_rows`` give ``x0' = x0 + (1 - abar)/sqrt(abar) g`` as ``fused_step(x0, g, xstart_rows)``.
    """
    _check_types(mean_type, "fixed_small")
    n = tab["num_timesteps"]
    P, Q, S = _xstart_conversion(tab, mean_type)
    sigma, d = ddim_direction(tab, eta)
    sa, sb, sap = tab["sqrt_alphas_cumprod"], tab["sqrt_one_minus_alphas_cumprod"], np.sqrt(tab["alphas_cumprod_prev"])
    nonzero = (np.arange(n) > 0).astype(np.float64)
    b = RowBuilder()
    b.add(P=P, Q=Q, S=S, CLIP=np.full(n, 1.0 if clip_denoised else math.inf), A=d / sb, B0=sap - d * sa / sb,
          G=sap * (sb * sb) / sa - d * sb, C=nonzero * sigma)
    rows = b.table()
    check_finite(rows, f"ddim_sample with eta={eta}", [f"timestep {i}" for i in range(n)])
    xb = RowBuilder()
    xb.add(A=np.ones(n), D=sb * sb / sa)
    return rows, xb.table()


def split_rows(rows: np.ndarray, mean_type: str) -> tuple[np.ndarray, np.ndarray]:
    """``(conv, upd)`` for a user ``denoised_fn`` between the conversion and the clip (which cannot be fused):
    ``conv`` gives the unclipped ``x0 = S (P x + Q m)`` as its output, ``upd`` is the step with that corrected x0 as
    its model input (``P = 0, Q = 1, S = 1``, the clip kept). For ``previous_x`` the ancestral mean is the model
    output itself (``D = 1``), so its update keeps the original rows and takes the original output."""
    rows = np.asarray(rows, dtype=np.float64)
    conv = np.zeros_like(rows)
    conv[:, COL["O"]], conv[:, COL["B0"]], conv[:, COL["CLIP"]] = 1.0, 1.0, math.inf
    for c in ("M1", "M2", "P", "Q", "S"):
        conv[:, COL[c]] = rows[:, COL[c]]
    upd = rows.copy()
    upd[:, COL["M1"]], upd[:, COL["M2"]] = 1.0, 0.0  # m2 is the gradient (G term) in the update, never a model
    if not (mean_type == "previous_x" and np.all(rows[:, COL["D"]] == 1.0)):
        upd[:, COL["P"]], upd[:, COL["Q"]], upd[:, COL["S"]] = 0.0, 1.0, 1.0
    return conv, upd


def cfg_row(scale: float) -> np.ndarray:
    """The row of ``out = (1 - s) m + s m2`` (classifier-free guidance, Ho & Salimans, arXiv:2207.12598, eq. 6),
    for combining a pair outside a sampling step."""
    b = RowBuilder()
    b.add(M1=1.0 - scale, M2=scale, D=1.0)
    return b.table()[0]


def with_cfg(rows: np.ndarray, scale: float) -> np.ndarray:
    """Rows whose model output is the classifier-free combination ``(1 - s) m + s m2`` (``M1 = 1 - s``,
    ``M2 = s``), for rows that have no ``G`` term (the pair takes the ``m2`` input)."""
    rows = with_guidance(rows, scale)
    rows[:, COL["G"]] = 0.0
    return rows


# ---- the same formulas on tensors, for the non-loop methods (guided-diffusion's float32 evaluation)

def extract(arr, t: torch.Tensor, shape) -> torch.Tensor:
    """``arr[t]`` as float32, shaped ``(B, 1, ..., 1)`` and expanded to ``shape`` (a float64 table indexed by a
    batch of timesteps, rounded once)."""
    res = torch.from_numpy(np.ascontiguousarray(arr)).to(device=t.device)[t].float()
    while res.dim() < len(shape):
        res = res[..., None]
    return res.expand(shape)


def q_mean_variance(tab, x_start, t):
    """``q(x_t | x_0) = N(sqrt(abar) x0, 1 - abar)``: ``(mean, variance, log_variance)``."""
    s = x_start.shape
    return (extract(tab["sqrt_alphas_cumprod"], t, s) * x_start, extract(1.0 - tab["alphas_cumprod"], t, s),
            extract(tab["log_one_minus_alphas_cumprod"], t, s))


def q_sample(tab, x_start, t, noise):
    """``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``."""
    s = x_start.shape
    return (extract(tab["sqrt_alphas_cumprod"], t, s) * x_start
            + extract(tab["sqrt_one_minus_alphas_cumprod"], t, s) * noise)


def posterior_mean_variance(tab, x_start, x_t, t):
    """``(c1 x0 + c2 x_t, pv, log pv clipped)`` of ``q(x_{t-1} | x_t, x_0)``."""
    s = x_t.shape
    mean = extract(tab["posterior_mean_coef1"], t, s) * x_start + extract(tab["posterior_mean_coef2"], t, s) * x_t
    return mean, extract(tab["posterior_variance"], t, s), extract(tab["posterior_log_variance_clipped"], t, s)


def xstart_from_eps(tab, x_t, t, eps):
    """``x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps``."""
    s = x_t.shape
    return (extract(tab["sqrt_recip_alphas_cumprod"], t, s) * x_t
            - extract(tab["sqrt_recipm1_alphas_cumprod"], t, s) * eps)


def xstart_from_xprev(tab, x_t, t, xprev):
    """``x0 = (x_prev - c2 x_t) / c1``."""
    s = x_t.shape
    c1, c2 = tab["posterior_mean_coef1"], tab["posterior_mean_coef2"]
    return extract(1.0 / c1, t, s) * xprev - extract(c2 / c1, t, s) * x_t


def eps_from_xstart(tab, x_t, t, x0):
    """``eps = (sqrt(1/abar) x_t - x0) / sqrt(1/abar - 1)``."""
    s = x_t.shape
    return ((extract(tab["sqrt_recip_alphas_cumprod"], t, s) * x_t - x0)
            / extract(tab["sqrt_recipm1_alphas_cumprod"], t, s))


def model_log_variance(tab, var_type, t, shape, var_values=None):
    """``(variance, log_variance)`` of ``p(x_{t-1} | x_t)`` per element: learned ``log Sigma = v``; learned range
    ``log Sigma = frac log beta + (1 - frac) log pv``, ``frac = (v + 1)/2``; fixed as ``fixed_variance``."""
    if var_type == "learned":
        return torch.exp(var_values), var_values
    if var_type == "learned_range":
        lo, hi = learned_range_bounds(tab)
        frac = (var_values + 1) / 2
        logv = frac * extract(hi, t, shape) + (1 - frac) * extract(lo, t, shape)
        return torch.exp(logv), logv
    v, logv = fixed_variance(tab, var_type)
    return extract(v, t, shape), extract(logv, t, shape)


def ddim_reverse(tab, x0, eps, t):
    """The deterministic DDIM step towards ``t + 1``: ``sqrt(abar_next) x0 + sqrt(1 - abar_next) eps``."""
    a_next = extract(tab["alphas_cumprod_next"], t, x0.shape)
    return x0 * torch.sqrt(a_next) + torch.sqrt(1 - a_next) * eps


def condition_mean(mean, variance, gradient):
    """Alg. 1's shifted mean ``mu + Sigma g`` (Sohl-Dickstein et al. 2015), float32."""
    return mean.float() + variance * gradient.float()


def condition_score_eps(tab, eps, t, gradient):
    """Alg. 2's shifted noise estimate ``eps - sqrt(1 - abar) g`` (Song et al. 2021)."""
    return eps - extract(tab["sqrt_one_minus_alphas_cumprod"], t, eps.shape) * gradient


def mean_flat(x):
    return x.mean(dim=list(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))`` per element, in nats."""
    ref = next(v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, torch.Tensor))
    logvar1, logvar2 = (v if isinstance(v, torch.Tensor) else torch.tensor(v).to(ref) for v in (logvar1, logvar2))
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    # the tanh approximation of Phi that the DDPM decoder likelihood is defined with
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-probability (nats) of 8-bit data in [-1, 1] under a Gaussian discretized into bins of width 2/255, the
    edge bins open-ended (Ho et al. 2020, section 3.3)."""
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(f"x, means and log_scales must share a shape, got {tuple(x.shape)}, "
                         f"{tuple(means.shape)}, {tuple(log_scales.shape)}")
    inv = torch.exp(-log_scales)
    c = x - means
    cdf_hi = approx_standard_normal_cdf(inv * (c + 1.0 / 255.0))
    cdf_lo = approx_standard_normal_cdf(inv * (c - 1.0 / 255.0))
    log_hi = torch.log(cdf_hi.clamp(min=1e-12))
    log_1m_lo = torch.log((1.0 - cdf_lo).clamp(min=1e-12))
    mid = torch.log((cdf_hi - cdf_lo).clamp(min=1e-12))
    return torch.where(x < -0.999, log_hi, torch.where(x > 0.999, log_1m_lo, mid))

