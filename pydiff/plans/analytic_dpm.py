"""Analytic-DPM plans (Bao, Li, Zhu, Zhang, "Analytic-DPM: an Analytic Estimate of the Optimal Reverse Variance
in Diffusion Probabilistic Models", ICLR 2022, arXiv:2201.06503): the float64 per-step rows of the four samplers
of the authors' code (``reverse_ddpm_ms_eps``, ``reverse_ddim_ms_eps``, ``reverse_ddpm_naive``,
``reverse_ddim_naive``), the optimal reverse variance, and the step choices, the DP optimal trajectory included.

Notation of the authors' code (``betas[0] = 0``, length ``N + 1``; index ``n`` is the noise level, ``0`` the data)::

    alpha_n = 1 - beta_n,  abar_n = prod_{i<=n} alpha_i  (abar_0 = 1),  bbar_n = 1 - abar_n
    x_n = sqrt(abar_n) x_0 + sqrt(bbar_n) eps

A trajectory is ``1 = tau_1 < ... < tau_K`` (``= N`` except for ``'quad_ddim'``); the sampler walks the pairs
``(s, r) = (tau_{k-1}, tau_k)`` from ``(tau_{K-1}, tau_K)`` down to ``(0, tau_1)``, with
``a_{r|s} = prod_{s<i<=r} alpha_i`` and ``b_{r|s} = 1 - a_{r|s}``. Per step::

    x0 = clamp((x - sqrt(bbar_r) eps_theta) / sqrt(abar_r), -1, 1)      (the model's E[x_0 | x_r])
    DDPM:  mean = b_{r|s} sqrt(abar_s)/bbar_r x0 + sqrt(a_{r|s}) bbar_s/bbar_r x           (posterior mean)
    DDIM:  mean = sqrt(abar_s) x0 + sqrt(bbar_s - lam^2) eps_theta,  lam^2 = eta^2 b_{r|s} bbar_s/bbar_r
    x_s = mean + sigma z  (s > 0),   x_0 = mean  (the last step draws no noise)

The optimal variance (Theorem 1 of the paper, in the code's form: ``Cov[x_0 | x_r]`` from the mean square of the
noise prediction ``ms_eps[r] = E ||eps_theta(x_r, r)||^2 / d``)::

    cov_r   = clip(bbar_r/abar_r (1 - ms_eps[r]), 0, 1)          (data in [-1, 1] bounds Var[x_0 | x_r] by 1)
    DDPM:   sigma^2 = b_{r|s} bbar_s/bbar_r + abar_s b_{r|s}^2/bbar_r^2 cov_r
    DDIM:   sigma^2 = lam^2 + (sqrt(abar_s) - sqrt((bbar_s - lam^2) abar_r/bbar_r))^2 cov_r

and the naive variances: DDPM ``b_{r|s} bbar_s/bbar_r`` (small, beta-tilde) or ``b_{r|s}`` (large), DDIM
``lam^2``. ``clip_sigma_idx`` > 0 caps sigma^2 on the steps with ``s < tau_{clip_sigma_idx}`` (the last
``clip_sigma_idx`` noisy steps of the run) at ``(clip_pixel * 2/255 * sqrt(pi/2))^2``: since
``E|sigma z| = sigma sqrt(2/pi)``, the noise then moves a pixel by at most ``clip_pixel`` levels of 255 on
average. A fused row holds all of it: ``P = 1, Q = -sqrt(bbar_r), S = 1/sqrt(abar_r), CLIP = 1`` (the x0
conversion and its clamp), ``A, D, B0`` the mean and ``C = sigma``.

The step choices (``choose_steps``): ``'linear'`` (``K`` points from 1 to N, float stride, Python's round),
``'power<k>'`` (``tau = (N - 1)(1 - y^(1/k)) + 1`` on a uniform ``y`` grid, rounded, duplicates pushed up),
``'quad_ddim'`` (DDIM's quadratic ``int(linspace(0, sqrt(0.8 N), K)^2) + 1``, which may repeat steps and does not
end at N) and ``'dp_seg'``: the trajectory minimising ``sum_k log(1 - b_{tau_k|tau_{k-1}} ms_eps[tau_k] /
bbar_{tau_k})`` (the paper's §4: with the optimal variance the KL cost of a step ``s -> r`` is
``d/2 log(1 - b_{r|s} Gamma_r)`` up to terms that do not depend on the trajectory), found by dynamic programming over
the steps where ``ms_eps <= 1`` and completed by evenly spaced steps over the tail where the estimate exceeds its
bound 1 (the split of the authors' ``_dp_seg``).
"""
from __future__ import annotations

import math
import numbers
import re

import numpy as np

from .._checks import real_number
from .conversions import conversion
from .rows import RowBuilder, check_finite

STEPS_TYPES = ("linear", "power<k>", "quad_ddim", "dp_seg")
_POWER = re.compile(r"power([0-9]+)")


# ----------------------------------------------------------------------------- argument checks
def check_betas(betas) -> np.ndarray:
    """``betas`` as a float64 array of length ``N + 1 >= 2`` with ``betas[0] == 0`` and ``0 < betas[n] < 1``."""
    if hasattr(betas, "detach"):  # a torch tensor
        betas = betas.detach().cpu().numpy()
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__"):
        raise TypeError(f"betas must be a 1-D array of length N + 1, got {type(betas).__name__}")
    try:
        b = np.asarray(betas, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("betas must be a 1-D array of real numbers") from None
    if b.ndim != 1 or b.shape[0] < 2:
        raise ValueError(f"betas must be a 1-D array of length N + 1 >= 2, got shape {b.shape}")
    if b[0] != 0:
        raise ValueError(f"betas[0] must be 0 (the authors' convention: betas has length N + 1 and index 0 is the "
                         f"data), got betas[0] = {b[0]}")
    inner = b[1:]
    if not (np.isfinite(inner).all() and (inner > 0).all() and (inner < 1).all()):
        raise ValueError("betas[1:] must lie in (0, 1)")
    return b


def schedule(betas: np.ndarray):
    """``(alphas, abar, bbar)`` of the code: ``1 - betas``, their cumulative product, ``1 - abar``."""
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    return alphas, abar, 1.0 - abar


def check_ms_eps(ms_eps, N: int) -> np.ndarray:
    """``ms_eps`` (array, list or tensor) as float64 of length ``N + 1`` with finite values >= 0.

    Values above 1 (the bound of an exact model: ``E||E[eps|x_n]||^2/d <= E||eps||^2/d = 1``) are accepted, as the
    authors' code accepts them: the variance formula clips ``cov_r`` at 0 and ``'dp_seg'`` leaves those steps to an
    evenly spaced tail. A float32 array is used at its exact values (and ``'dp_seg'`` rounds as the authors do, see
    ``ms_eps_rounding``).
    """
    if ms_eps is None:
        raise TypeError("ms_eps must be given: the length-N+1 array of E||eps_theta(x_n, n)||^2/d "
                        "(estimate_ms_eps or load_ms_eps)")
    if hasattr(ms_eps, "detach"):
        ms_eps = ms_eps.detach().cpu().numpy()
    try:
        v = np.asarray(ms_eps, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"ms_eps must be a 1-D array of real numbers, got {type(ms_eps).__name__}") from None
    if v.ndim != 1 or v.shape[0] != N + 1:
        raise ValueError(f"ms_eps must have length N + 1 = {N + 1} (one value per noise level, index 0 unused), "
                         f"got shape {v.shape}")
    if not (np.isfinite(v).all() and (v >= 0).all()):
        raise ValueError("ms_eps must hold finite values >= 0 (a mean square)")
    return v


def _int(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def _real(name, v, lo=0.0):
    return real_number(name, v, minimum=lo)


def check_sample_steps(sample_steps, N: int, steps_type: str) -> int:
    """``sample_steps or N`` (the code's default), in ``[2, N]`` (``[1, N]`` for ``'quad_ddim'``)."""
    if sample_steps is None:
        return N
    K = _int("sample_steps", sample_steps)
    if K == 0:
        return N  # the code's `sample_steps or N`
    lo = 1 if steps_type == "quad_ddim" else 2
    if not lo <= K <= N:
        raise ValueError(f"sample_steps must be in [{lo}, N = {N}] for steps_type {steps_type!r}, got {K}")
    return K


def check_steps_type(steps_type) -> str:
    if not isinstance(steps_type, str):
        raise TypeError(f"steps_type must be a str, one of {STEPS_TYPES}, got {type(steps_type).__name__}")
    m = _POWER.fullmatch(steps_type)
    if steps_type in ("linear", "quad_ddim", "dp_seg") or (m and int(m.group(1)) >= 1):
        return steps_type
    raise ValueError(f"steps_type must be one of {STEPS_TYPES} (k a positive int), got {steps_type!r}")


# ----------------------------------------------------------------------------- step choices
def steps_linear(N: int, K: int) -> list:
    """``K`` steps from 1 to N: ``round(1 + k (N - 1)/(K - 1))``, the position accumulated by repeated addition of
    the stride and rounded half to even (Python's ``round``), as the authors' code does."""
    stride = (N - 1) / (K - 1)
    pos, out = 1.0, []
    while len(out) < K:
        out.append(round(pos))
        pos += stride
    return out


def _push_up(values) -> list:
    """Round, then lift every value that does not exceed its predecessor to one more than it."""
    out = []
    for v in values:
        v = round(v)
        if out and v <= out[-1]:
            v = int(out[-1]) + 1
        out.append(v)
    return out


def steps_power(N: int, K: int, power: int) -> list:
    """``tau_k = (N - 1) x_k + 1``, ``x_k = 1 - y_k^(1/power)`` for ``y_k = 1 - k/(K - 1)``: dense near the data
    for ``power > 1``; rounded with duplicates pushed up."""
    ys = [j / (K - 1) for j in range(K)][::-1]
    taus = [(N - 1) * (1 - y ** (1.0 / power)) + 1 for y in ys]
    out = _push_up(taus)
    if out[0] != 1 or out[-1] != N:
        raise ValueError(f"steps_type 'power{power}' cannot place sample_steps = {K} distinct steps in [1, N = {N}]")
    return out


def steps_quad_ddim(N: int, K: int) -> list:
    """DDIM's quadratic steps, ``int(linspace(0, sqrt(0.8 N), K)^2) + 1`` (they may repeat; the last is not N)."""
    return [int(v) + 1 for v in np.linspace(0, np.sqrt(N * 0.8), K) ** 2]


def split_bad_tail(ms_eps: np.ndarray, N: int, K: int):
    """``(K1, N1, K2, num_bad)``: the DP runs over steps ``1..N1`` with ``K1`` points, the tail ``N1+1..N`` gets ``K2``.

    ``n_1`` is the first level with ``ms_eps > 1`` (a poor estimate); ``num_bad = 2 (N - n_1 + 1)`` levels at the
    end are excluded from the DP, and the points are shared ``K1 = ceil((1 - 0.8 num_bad/N) K)``, moved so that
    ``K1 <= N1``, ``K2 <= num_bad`` and the tail has a point when it exists (the authors' ``_split``).
    """
    above = np.flatnonzero(ms_eps[1:N + 1] > 1)
    first = int(above[0]) + 1 if above.size else N + 1
    num_bad = 2 * (N - first + 1)
    if num_bad > N:
        raise ValueError(f"ms_eps exceeds 1 from level {first} of N = {N} on: too few reliable levels for 'dp_seg'")
    N1 = N - num_bad
    K1 = math.ceil((1.0 - 0.8 * num_bad / N) * K)
    K2 = K - K1
    if K1 > N1:
        K1, K2 = N1, K - N1
    if K2 > num_bad:
        K1, K2 = K - num_bad, num_bad
    if num_bad > 0 and K2 == 0:
        K1, K2 = K - 1, 1
    if not (K1 <= N1 and K2 <= num_bad and (K1 >= 2 or K1 == N1 >= 1)):
        raise ValueError(f"'dp_seg' cannot share sample_steps = {K} between the {N1} reliable levels and the "
                         f"{num_bad} of the tail where ms_eps > 1")
    return K1, N1, K2, num_bad


def ms_eps_rounding(ms_eps) -> np.dtype:
    """The NumPy type the authors' code holds ``ms_eps / bbar`` in: that of the ``ms_eps`` array it was given.

    Their ``_ms_score`` writes the ratio into ``np.zeros_like(ms_eps)``, so a float32 ``ms_eps`` (what their
    ``save_ms_eps`` stores) rounds it to float32, and near the end of a schedule, where ``1 - b_{r|s} Gamma_r``
    cancels, that rounding moves the optimum of ``'dp_seg'`` (N = 1000, linear betas, 10 steps: 34, 60, 104, 187
    instead of float64's 35, 62, 109, 199). The same rounding here gives the same trajectory from the same file.
    """
    if hasattr(ms_eps, "detach"):
        ms_eps = ms_eps.detach().cpu().numpy()
    dt = np.asarray(ms_eps).dtype
    return dt if dt in (np.float16, np.float32) else np.dtype(np.float64)


def trajectory_cost(ms_eps: np.ndarray, betas: np.ndarray, N1: int, score_dtype=np.float64) -> np.ndarray:
    """``F[s, r] = log(1 - b_{r|s} ms_eps[r]/bbar_r)`` for ``1 <= s < r <= N1``, ``+inf`` elsewhere: the
    trajectory-dependent part of a step's KL cost with the optimal variance, per dimension and times 2.
    ``ms_eps[r]/bbar_r`` is rounded to ``score_dtype`` (see ``ms_eps_rounding``), the rest is float64."""
    alphas, _, bbar = schedule(betas)
    score2 = np.zeros(np.shape(ms_eps), dtype=score_dtype)
    score2[1:] = ms_eps[1:] / bbar[1:]  # E||grad log q_n||^2 / d
    F = np.full((N1 + 1, N1 + 1), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for s in range(1, N1 + 1):
            b_rs = 1.0 - np.cumprod(alphas[s + 1:N1 + 1])  # b_{r|s} for r = s+1..N1, products as the code forms them
            F[s, s + 1:] = np.log(1.0 - b_rs * score2[s + 1:N1 + 1])
    return F


def dp_trajectory(F: np.ndarray, N: int, K: int) -> list:
    """``1 = tau_1 < ... < tau_K = N`` minimising ``sum_k F[tau_{k-1}, tau_k]`` (dynamic programming, O(K N^2)).

    ``best[n]`` after round ``j`` is the least cost of a ``j``-point path from 1 to ``n``; each round relaxes every
    ``(s, n)`` at once; the predecessor is the smallest ``s`` among equal costs (and a NaN cost, from ``log 0`` at a
    degenerate last level, propagates as NumPy's ``argmin`` propagates it, so the result is the authors' there too).
    """
    if K == N:
        return list(range(1, N + 1))
    F = F[:N + 1, :N + 1]
    best = np.full(N + 1, np.inf)
    best[1] = 0.0
    back = []
    cols = np.arange(N + 1)
    for _ in range(K - 1):
        with np.errstate(invalid="ignore"):  # inf + -inf where log(0) meets an unreachable start: NaN, as in the code
            total = best[:, None] + F  # total[s, n]: reach s, then step s -> n
        back.append(np.argmin(total, axis=0))
        best = total[back[-1], cols]
    path = [N]
    for pred in reversed(back[1:]):
        path.append(int(pred[path[-1]]))
    path.append(1)
    return path[::-1]


def steps_dp_seg(ms_eps: np.ndarray, betas: np.ndarray, N: int, K: int, score_dtype=np.float64) -> list:
    """The DP optimal trajectory over the reliable levels plus the evenly spaced tail (see ``split_bad_tail``)."""
    K1, N1, K2, _ = split_bad_tail(ms_eps, N, K)
    head = dp_trajectory(trajectory_cost(ms_eps, betas, N1, score_dtype), N1, K1)
    tail = []
    if K2 > 0:
        gap = (N - N1) / K2
        tail = [round(N - gap * j) for j in range(K2)][::-1]
    steps = head + tail
    if steps[0] != 1 or steps[-1] != N or any(a >= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"'dp_seg' found no increasing trajectory of {K} steps in [1, {N}]")
    return steps


def choose_steps(N: int, sample_steps: int, steps_type: str, ms_eps=None, betas=None,
                 score_dtype=np.float64) -> list:
    """The trajectory ``[tau_1, ..., tau_K]`` of ``steps_type`` (``check_steps_type``; ``'dp_seg'`` needs
    ``ms_eps`` and ``betas``, and rounds as ``score_dtype`` says)."""
    steps_type = check_steps_type(steps_type)
    if steps_type == "linear":
        return steps_linear(N, sample_steps)
    if steps_type == "quad_ddim":
        return steps_quad_ddim(N, sample_steps)
    if steps_type == "dp_seg":
        if ms_eps is None:
            raise ValueError("steps_type 'dp_seg' needs ms_eps (only the ms_eps samplers take it)")
        return steps_dp_seg(ms_eps, betas, N, sample_steps, score_dtype)
    return steps_power(N, sample_steps, int(_POWER.fullmatch(steps_type).group(1)))


# ----------------------------------------------------------------------------- the optimal variance
def sigma2_threshold(clip_pixel: float) -> float:
    """``(clip_pixel * 2/255 * sqrt(pi/2))^2``: the variance whose noise moves a pixel by ``clip_pixel`` levels of
    255 on average (``E|sigma z| = sigma sqrt(2/pi)``, pixels in [-1, 1])."""
    return (clip_pixel * 2.0 / 255.0 * (math.pi / 2.0) ** 0.5) ** 2


def posterior_x0_var(ms_eps_r: float, abar_r: float, bbar_r: float) -> float:
    """``Cov[x_0 | x_r]`` per dimension from the noise prediction's mean square, clipped to ``[0, 1]``:
    ``bbar_r/abar_r (1 - ms_eps[r])`` (``Var[x_0|x_r] = (bbar_r/abar_r)(1 - E||E[eps|x_r]||^2/d)``, and data in
    [-1, 1] has ``Var[x_0|x_r] <= 1``)."""
    return min(max(float(bbar_r / abar_r * (1.0 - ms_eps_r)), 0.0), 1.0)


def optimal_variance(kind: str, s: int, r: int, betas: np.ndarray, ms_eps: np.ndarray, eta: float = 0.0) -> float:
    """The analytic optimal reverse variance of step ``r -> s`` (Theorem 1; formulas in the module docstring),
    ``kind`` ``'ddpm'`` or ``'ddim'``."""
    alphas, abar, bbar = schedule(betas)
    b_rs = 1.0 - np.prod(alphas[s + 1:r + 1])
    small = b_rs * bbar[s] / bbar[r]
    cov = posterior_x0_var(ms_eps[r], abar[r], bbar[r])
    if kind == "ddpm":
        return small + abar[s] * b_rs ** 2 / bbar[r] ** 2 * cov
    lam2 = eta ** 2 * small
    return lam2 + (abar[s] ** 0.5 - ((bbar[s] - lam2) * abar[r] / bbar[r]) ** 0.5) ** 2 * cov


# ----------------------------------------------------------------------------- the rows of a run
class AnalyticPlan:
    """The float64 rows of one sampler call, in the order they run.

    ``rows`` ``(K, NCOEF)``; ``pairs[k] = (s, r)``; ``noisy[k]``: step ``k`` draws noise (``s > 0``, also when its
    sigma is 0, as the authors' code draws it); ``levels[k] = r``: the noise level whose model output step ``k``
    reads; ``sigma2[k]`` the variance used (after the clip); ``steps`` the trajectory; ``sampler`` its name
    (``SAMPLERS``).
    """

    def __init__(self, rows, pairs, noisy, sigma2, steps, sampler="ddpm_ms_eps"):
        self.rows, self.pairs, self.noisy, self.sigma2, self.steps = rows, pairs, noisy, sigma2, steps
        self.sampler = sampler
        self.levels = [r for _, r in pairs]

    def model_inputs(self, shift1: bool) -> list:
        """The timestep index the model is given per step: ``r``, or ``r - 1`` with ``shift1`` (models trained on
        ``0..N-1``)."""
        return [r - 1 if shift1 else r for r in self.levels]


SAMPLERS = ("ddpm_ms_eps", "ddim_ms_eps", "ddpm_naive", "ddim_naive")


def sampler_plan(sampler: str, betas, *, steps_type: str = "linear", sample_steps=None, ms_eps=None,
                 eta: float = 0.0, small_sigma: bool = False, clip_denoise: bool = True, clip_sigma_idx: int = 0,
                 clip_pixel: float = 2.0, model_kind: str = "eps") -> AnalyticPlan:
    """Check the arguments of ``sampler`` (one of ``SAMPLERS``) and compute its rows.

    ``model_kind`` ``'eps'`` (the model predicts the noise) or ``'x0'`` (``reverse_ddpm_naive``'s ``d_model``).
    ``clip_denoise`` is the naive DDPM's x0 clamp (the other three always clamp x0 to [-1, 1]).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    betas = check_betas(betas)
    N = betas.shape[0] - 1
    steps_type = check_steps_type(steps_type)
    analytic = sampler.endswith("ms_eps")
    rounding = np.float64
    if analytic:
        rounding = ms_eps_rounding(ms_eps)
        ms_eps = check_ms_eps(ms_eps, N)
    elif steps_type == "dp_seg":
        raise ValueError("steps_type 'dp_seg' needs ms_eps: use reverse_ddpm_ms_eps or reverse_ddim_ms_eps")
    K = check_sample_steps(sample_steps, N, steps_type)
    ddim = sampler.startswith("ddim")
    eta = _real("eta", eta) if ddim else 0.0
    clip_pixel = _real("clip_pixel", clip_pixel)
    clip_sigma_idx = _int("clip_sigma_idx", clip_sigma_idx)
    if K > 1 and not -K <= clip_sigma_idx < K:  # one step (s = 0 only) never reads it, as in the authors' code
        raise ValueError(f"clip_sigma_idx must index the trajectory of sample_steps = {K} steps, "
                         f"i.e. lie in [{-K}, {K}), got {clip_sigma_idx}")
    if model_kind not in ("eps", "x0"):
        raise ValueError(f"model_kind must be 'eps' or 'x0', got {model_kind!r}")

    steps = choose_steps(N, K, steps_type, ms_eps=ms_eps, betas=betas, score_dtype=rounding)
    alphas, abar, bbar = schedule(betas)
    # sigma^2 is capped on the steps with s < steps[clip_sigma_idx] (and s > 0: none when K = 1)
    clip_below = steps[clip_sigma_idx] if K > 1 else 0
    threshold = sigma2_threshold(clip_pixel)
    clamp_x0 = 1.0 if (analytic or ddim or clip_denoise) else math.inf
    pairs = list(zip([0] + steps, steps))[::-1]
    cols = {name: [] for name in ("P", "Q", "S", "A", "D", "B0", "C")}
    noisy, sig2 = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for s, r in pairs:
            a_rs = np.prod(alphas[s + 1:r + 1])
            b_rs = 1.0 - a_rs
            small = b_rs * bbar[s] / bbar[r]
            if model_kind == "x0":
                P, Q, S = 0.0, 1.0, 1.0
            else:
                P, Q, S = conversion("x0", "eps", abar[r] ** 0.5, bbar[r] ** 0.5)
            if ddim:
                lam2 = eta ** 2 * small
                A, D, B0 = 0.0, (bbar[s] - lam2) ** 0.5, abar[s] ** 0.5
                if analytic:
                    var = lam2 + (abar[s] ** 0.5 - ((bbar[s] - lam2) * abar[r] / bbar[r]) ** 0.5) ** 2 * \
                        posterior_x0_var(ms_eps[r], abar[r], bbar[r])
                else:
                    var = lam2
            else:
                A, D, B0 = a_rs ** 0.5 * bbar[s] / bbar[r], 0.0, b_rs * abar[s] ** 0.5 / bbar[r]
                if analytic:
                    var = small + abar[s] * b_rs ** 2 / bbar[r] ** 2 * posterior_x0_var(ms_eps[r], abar[r], bbar[r])
                else:
                    var = small if small_sigma else b_rs
            if s != 0 and s < clip_below and (analytic or not ddim):
                var = min(max(var, 0.0), threshold)  # np.clip(sigma2, 0, threshold) of the code
            if s == 0:
                var = 0.0  # the last step returns the mean
            noisy.append(s != 0)
            sig2.append(float(var))
            for name, v in zip(cols, (P, Q, S, A, D, B0, float(var) ** 0.5)):
                cols[name].append(v)
    b = RowBuilder()
    b.add(CLIP=np.full(len(pairs), clamp_x0), **{k: np.asarray(v, dtype=np.float64) for k, v in cols.items()})
    rows = b.table()
    check_finite(rows, f"{sampler} (eta = {eta})" if ddim else sampler,
                 [f"step {s} <- {r}" for s, r in pairs])
    return AnalyticPlan(rows, pairs, noisy, sig2, steps, sampler)

