"""A float64, literal transcription of the Analytic-DPM authors' samplers (baofff/Analytic-DPM,
``cifar_imagenet_codes/core/inference``: ``reverse_ddpm.py``, ``reverse_ddim.py``, ``utils.py``) and the Gaussian
closed forms that give them an exact model: the oracle of ``pydiff.analytic_dpm``.

Independent of ``pydiff.ops``, ``pydiff.schedules`` and ``pydiff.plans``: the step choices, the update rules and the
variances are restated here step by step in the authors' order of operations, on float64 tensors (the sample is
widened to float64; the noise is drawn with ``torch.randn`` in the sample's own dtype, where and as often as the
authors draw it, then widened, so a float32 run sees the same numbers as the face). The four functions take the
authors' arguments and return the final sample in float64.

Gaussian data (``gaussian_eps_model``, ``gaussian_ms_eps``): ``x_0 ~ N(mu, s^2)`` per element, ``abar_n = alpha_n^2``,
``sigma_n^2 = 1 - abar_n``. Then ``x_n ~ N(alpha_n mu, alpha_n^2 s^2 + sigma_n^2)`` and

    E[eps | x_n] = sigma_n (x_n - alpha_n mu) / (alpha_n^2 s^2 + sigma_n^2)         (pydiff.testing.gaussian)
    ms_eps[n]    = E ||E[eps|x_n]||^2 / d = mean_i sigma_n^2 / (alpha_n^2 s_i^2 + sigma_n^2)
    bbar_n/abar_n (1 - ms_eps[n]) = mean_i s_i^2 sigma_n^2 / (alpha_n^2 s_i^2 + sigma_n^2) = mean_i Var[x_0,i | x_n]

so with one ``s`` for every element the optimal variance is the exact posterior one.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import gaussian

F64 = torch.float64


# ----------------------------------------------------------------------------- step choices (utils.py)
def steps_linear(N, sample_steps):
    assert sample_steps > 1
    frac_stride = (N - 1) / (sample_steps - 1)
    cur_idx = 1.0
    steps = []
    for _ in range(sample_steps):
        steps.append(round(cur_idx))
        cur_idx += frac_stride
    return steps


def steps_quad_ddim(N, sample_steps):
    seq = np.linspace(0, np.sqrt(N * 0.8), sample_steps) ** 2
    return [int(v) + 1 for v in list(seq)]


def steps_power(N, sample_steps, power):
    assert sample_steps > 1
    ys = [k / (sample_steps - 1) for k in range(sample_steps)][::-1]
    xs = [1 - y ** (1. / power) for y in ys]
    steps = [(N - 1) * x + 1 for x in xs]
    steps = [round(v) for v in steps]
    prev = -float("inf")
    for i, v in enumerate(steps):
        if v <= prev:
            steps[i] = int(prev) + 1
        prev = steps[i]
    assert steps[0] == 1 and steps[-1] == N
    assert all(a < b for a, b in zip(steps, steps[1:]))
    return steps


def _split(ms_eps, N, K):
    first = N + 1
    for n in range(1, N + 1):
        if ms_eps[n] > 1:
            first = n
            break
    num_bad = 2 * (N - first + 1)
    bad_ratio = num_bad / N
    N1 = N - num_bad
    K1 = math.ceil((1. - 0.8 * bad_ratio) * K)
    K2 = K - K1
    if K1 > N1:
        K1 = N1
        K2 = K - K1
    if K2 > num_bad:
        K2 = num_bad
        K1 = K - K2
    if num_bad > 0 and K2 == 0:
        K2 = 1
        K1 = K - K2
    assert num_bad <= N
    assert K1 <= N1 and K2 <= N - N1
    return K1, N1, K2, num_bad


def _cost(ms_eps, betas, N1):
    alphas = 1. - betas
    cum_betas = 1. - alphas.cumprod()
    ms_score = np.zeros_like(ms_eps)
    ms_score[1:] = ms_eps[1:] / cum_betas[1:]
    F = np.full((N1 + 1, N1 + 1), float("inf"))
    for s in range(1, N1 + 1):
        skip_betas = 1. - alphas[s + 1: N1 + 1].cumprod()
        F[s, s + 1: N1 + 1] = np.log(1. - skip_betas * ms_score[s + 1: N1 + 1])
    return F


def _dp(F, N, K):
    if N == K:
        return list(range(1, N + 1))
    F = F[: N + 1, : N + 1]
    C = np.full((K + 1, N + 1), float("inf"))
    D = np.full((K + 1, N + 1), -1)
    C[2, 2: N] = F[1, 2: N]
    D[2, 2: N] = 1
    for k in range(3, K + 1):
        tmp = C[k - 1, :].reshape(N + 1, 1) + F
        C[k, k: N + 1] = np.min(tmp, axis=0)[k: N + 1]
        D[k, k: N + 1] = np.argmin(tmp, axis=0)[k: N + 1]
    res = [N]
    n, k = N, K
    while k > 2:
        n = D[k, n]
        res.append(int(n))
        k -= 1
    res.append(1)
    return res[::-1]


def steps_dp_seg(ms_eps, betas, N, K):
    K1, N1, K2, num_bad = _split(ms_eps, N, K)
    with np.errstate(divide="ignore", invalid="ignore"):
        steps1 = _dp(_cost(ms_eps, betas, N1), N1, K1)
    steps2 = []
    if K2 > 0:
        frac = (N - N1) / K2
        steps2 = [round(N - frac * k) for k in range(K2)][::-1]
    steps = steps1 + steps2
    assert steps[0] == 1 and steps[-1] == N
    assert all(steps[i] < steps[i + 1] for i in range(len(steps) - 1))
    return steps


def _as_given(ms_eps):
    """The array the authors' code works on: a tensor as NumPy, in its own dtype (their ``_ms_score`` writes the
    ratio ``ms_eps / bbar`` into ``np.zeros_like(ms_eps)``, so a float32 file rounds it to float32)."""
    return ms_eps.detach().cpu().numpy() if hasattr(ms_eps, "detach") else np.asarray(ms_eps)


def choice_steps(N, sample_steps, typ, ms_eps=None, betas=None):
    if typ == "linear":
        steps = steps_linear(N, sample_steps)
    elif typ.startswith("power"):
        steps = steps_power(N, sample_steps, int(typ.split("power")[1]))
    elif typ == "quad_ddim":
        steps = steps_quad_ddim(N, sample_steps)
    elif typ == "dp_seg":
        steps = steps_dp_seg(_as_given(ms_eps), betas, N, sample_steps)
    else:
        raise NotImplementedError(typ)
    assert len(steps) == sample_steps and steps[0] == 1
    return steps


# ----------------------------------------------------------------------------- the samplers
def _times(n, x, N, rescale_timesteps, dtype):
    t = torch.tensor([n] * x.size(0)).to(dtype)
    return t * 1000.0 / float(N) if rescale_timesteps else t


def _x0_eps(x, n, cum_alphas, N, rescale, shift1, dtype, eps_model=None, d_model=None):
    ca = cum_alphas[n]
    t = _times(n - 1 if shift1 else n, x, N, rescale, dtype)
    if eps_model is not None:
        eps = eps_model(x.to(dtype), t).to(F64)
        x0 = ca ** -0.5 * x - (1. / ca - 1.) ** 0.5 * eps
    else:
        x0 = d_model(x.to(dtype), t).to(F64)
        eps = -(ca / (1. - ca)) ** 0.5 * x0 + (1. / (1. - ca) ** 0.5) * x
    return x0, eps


def _schedule(betas):
    betas = np.asarray(betas, np.float64)
    assert betas[0] == 0
    alphas = 1. - betas
    cum_alphas = alphas.cumprod()
    return betas, alphas, cum_alphas, 1. - cum_alphas


def _noise(x, dtype):
    # randn_like(x): x (float64 here) carries the layout the authors' arithmetic gives their x, and the draw fills
    # memory in that order
    return torch.randn_like(x, dtype=dtype).to(F64)


def _clip_sigma(sigma2, s, ns, clip_sigma_idx, clip_pixel):
    if s < ns[clip_sigma_idx]:
        threshold = (clip_pixel * 2. / 255. * (math.pi / 2.) ** 0.5) ** 2
        sigma2 = np.clip(sigma2, 0., threshold)
    return sigma2


def reverse_ddpm_naive(x_init, betas, small_sigma, clip_denoise, rescale_timesteps, steps_type="linear",
                       clip_sigma_idx=0, clip_pixel=2, eps_model=None, d_model=None, sample_steps=None, shift1=False):
    betas, alphas, cum_alphas, cum_betas = _schedule(betas)
    N = len(betas) - 1
    ns = choice_steps(N, sample_steps or N, steps_type)
    dtype = x_init.dtype
    x = x_init.to(F64)
    for s, r in list(zip([0] + ns, ns))[::-1]:
        skip_alpha = alphas[s + 1: r + 1].prod()
        skip_beta = 1. - skip_alpha
        x0, _ = _x0_eps(x, r, cum_alphas, N, rescale_timesteps, shift1, dtype, eps_model, d_model)
        if clip_denoise:
            x0 = x0.clamp(-1., 1.)
        mean = skip_beta * cum_alphas[s] ** 0.5 / cum_betas[r] * x0 + \
            skip_alpha ** 0.5 * cum_betas[s] / cum_betas[r] * x
        if s != 0:
            sigma2 = skip_beta * cum_betas[s] / cum_betas[r] if small_sigma else skip_beta
            sigma2 = _clip_sigma(sigma2, s, ns, clip_sigma_idx, clip_pixel)
            x = mean + sigma2 ** 0.5 * _noise(x, dtype)
        else:
            x = mean
    return x


def reverse_ddpm_ms_eps(x_init, betas, rescale_timesteps, steps_type="linear", clip_sigma_idx=0, clip_pixel=2,
                        eps_model=None, ms_eps=None, sample_steps=None, shift1=False):
    betas, alphas, cum_alphas, cum_betas = _schedule(betas)
    N = len(betas) - 1
    ns = choice_steps(N, sample_steps or N, steps_type, ms_eps=ms_eps, betas=betas)
    ms_eps = np.asarray(_as_given(ms_eps), np.float64)
    dtype = x_init.dtype
    x = x_init.to(F64)
    for s, r in list(zip([0] + ns, ns))[::-1]:
        skip_alpha = alphas[s + 1: r + 1].prod()
        skip_beta = 1. - skip_alpha
        x0, _ = _x0_eps(x, r, cum_alphas, N, rescale_timesteps, shift1, dtype, eps_model)
        mean = skip_beta * cum_alphas[s] ** 0.5 / cum_betas[r] * x0.clamp(-1., 1.) + \
            skip_alpha ** 0.5 * cum_betas[s] / cum_betas[r] * x
        if s != 0:
            sigma2_small = skip_beta * cum_betas[s] / cum_betas[r]
            cov_x0 = np.clip(cum_betas[r] / cum_alphas[r] * (1. - ms_eps[r]), 0., 1.)
            sigma2 = sigma2_small + cum_alphas[s] * skip_beta ** 2 / cum_betas[r] ** 2 * cov_x0
            sigma2 = _clip_sigma(sigma2, s, ns, clip_sigma_idx, clip_pixel)
            x = mean + sigma2 ** 0.5 * _noise(x, dtype)
        else:
            x = mean
    return x


def _ddim(x_init, betas, rescale_timesteps, eta, eps_model, ms_eps, sample_steps, clip_sigma_idx, clip_pixel, shift1,
          steps_type):
    betas, alphas, cum_alphas, cum_betas = _schedule(betas)
    N = len(betas) - 1
    ns = choice_steps(N, sample_steps or N, steps_type, ms_eps=ms_eps, betas=betas)
    if ms_eps is not None:
        ms_eps = np.asarray(_as_given(ms_eps), np.float64)
    dtype = x_init.dtype
    x = x_init.to(F64)
    for s, r in list(zip([0] + ns, ns))[::-1]:
        skip_alpha = alphas[s + 1: r + 1].prod()
        skip_beta = 1. - skip_alpha
        lamb2 = eta ** 2 * (skip_beta * cum_betas[s] / cum_betas[r])
        x0, eps = _x0_eps(x, r, cum_alphas, N, rescale_timesteps, shift1, dtype, eps_model)
        mean = cum_alphas[s] ** 0.5 * x0.clamp(-1., 1.) + (cum_betas[s] - lamb2) ** 0.5 * eps
        if s != 0:
            if ms_eps is None:
                sigma2 = lamb2
            else:
                cov_x0 = np.clip(cum_betas[r] / cum_alphas[r] * (1. - ms_eps[r]), 0., 1.)
                coeff = (cum_alphas[s] ** 0.5 - ((cum_betas[s] - lamb2) * cum_alphas[r] / cum_betas[r]) ** 0.5) ** 2
                sigma2 = _clip_sigma(lamb2 + coeff * cov_x0, s, ns, clip_sigma_idx, clip_pixel)
            x = mean + sigma2 ** 0.5 * _noise(x, dtype)
        else:
            x = mean
    return x


def reverse_ddim_naive(x_init, betas, rescale_timesteps, eta=0., steps_type="linear", eps_model=None,
                       sample_steps=None, shift1=False):
    return _ddim(x_init, betas, rescale_timesteps, eta, eps_model, None, sample_steps, 0, 2, shift1, steps_type)


def reverse_ddim_ms_eps(x_init, betas, rescale_timesteps, eta=0., eps_model=None, ms_eps=None, sample_steps=None,
                        clip_sigma_idx=0, clip_pixel=2, shift1=False, steps_type="linear"):
    return _ddim(x_init, betas, rescale_timesteps, eta, eps_model, ms_eps, sample_steps, clip_sigma_idx, clip_pixel,
                 shift1, steps_type)


# ----------------------------------------------------------------------------- Gaussian data
def named_betas(name, N):
    """``betas`` with the authors' leading 0: their ``get_named_beta_schedule`` ('linear': ``linspace(1e-4, 0.02)``
    scaled by ``1000/N``; 'cosine': Nichol & Dhariwal's ``cos((t + 0.008)/1.008 pi/2)^2``, betas capped at 0.999)."""
    if name == "linear":
        scale = 1000 / N
        b = np.linspace(scale * 0.0001, scale * 0.02, N, dtype=np.float64)
    elif name == "cosine":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        b = np.array([min(1 - f((i + 1) / N) / f(i / N), 0.999) for i in range(N)], dtype=np.float64)
    else:
        raise ValueError(name)
    return np.append(0., b)


def level_of(t, N, rescale_timesteps, shift1):
    """The noise level a model input ``t`` stands for (``t = n`` or ``n 1000/N``; ``n - 1`` with ``shift1``)."""
    t = t.to(F64)
    n = torch.round(t * N / 1000.0 if rescale_timesteps else t).long()
    return n + 1 if shift1 else n


def _gaussian_model(pred, betas, mu, s, rescale_timesteps, shift1):
    cum_alphas = torch.from_numpy(np.cumprod(1. - np.asarray(betas, np.float64)))
    N = len(betas) - 1

    def model(x, t):
        n = level_of(t, N, rescale_timesteps, shift1)
        a2 = gaussian.bcast(cum_alphas[n], x)
        return pred(x.to(F64), a2.sqrt(), (1 - a2).sqrt(), mu, s).to(x.dtype)

    return model


def gaussian_eps_model(betas, mu, s, rescale_timesteps=False, shift1=False):
    """The exact noise prediction ``E[eps | x_n]`` for ``x_0 ~ N(mu, s^2)`` as an ``eps_model(x, t)``."""
    return _gaussian_model(gaussian.eps_pred, betas, mu, s, rescale_timesteps, shift1)


def gaussian_x0_model(betas, mu, s, rescale_timesteps=False, shift1=False):
    """The exact data prediction ``E[x_0 | x_n]`` as a ``d_model(x, t)``."""
    return _gaussian_model(gaussian.x0_pred, betas, mu, s, rescale_timesteps, shift1)


def gaussian_ms_eps(betas, s):
    """The exact ``ms_eps`` of the exact model: ``mean_i sigma_n^2 / (alpha_n^2 s_i^2 + sigma_n^2)`` (index 0: 0)."""
    a2 = torch.from_numpy(np.cumprod(1. - np.asarray(betas, np.float64)))[:, None]
    s2 = torch.as_tensor(s, dtype=F64).reshape(1, -1) ** 2
    ms = ((1 - a2) / (a2 * s2 + (1 - a2))).mean(dim=1).numpy()
    ms[0] = 0.0
    return ms


def gaussian_moments(sampler, betas, steps, mu, s, ms_eps=None, eta=0.0, small_sigma=False, clip_sigma_idx=0,
                     clip_pixel=2, x_mean=0.0, x_var=1.0):
    """The exact per-element mean and variance of a sampler's output for Gaussian data with the exact model, when
    the x0 clamp does not act (``|E[x_0|x_r]| <= 1``): every step is then affine, ``x_s = a x_r + b + sigma z``, with

        eps(x) = e1 x + e0,  e1 = sigma_r / v_r,  e0 = -sigma_r alpha_r mu / v_r,  v_r = alpha_r^2 s^2 + sigma_r^2
        x0(x)  = c1 x + c0,  c1 = (1 - sigma_r e1) / alpha_r,  c0 = -sigma_r e0 / alpha_r

    so ``mean <- a mean + b``, ``var <- a^2 var + sigma^2``. ``sampler``: 'ddpm_ms_eps', 'ddim_ms_eps', 'ddpm_naive'
    (``small_sigma``), 'ddim_naive'; ``steps`` the trajectory; starts from ``N(x_mean, x_var)``.
    Returns float64 tensors ``(mean, var)`` shaped like ``mu``/``s`` broadcast.
    """
    betas, alphas, cum_alphas, cum_betas = _schedule(betas)
    mu, s = torch.as_tensor(mu, dtype=F64), torch.as_tensor(s, dtype=F64)
    mean = torch.zeros(torch.broadcast_shapes(mu.shape, s.shape), dtype=F64) + x_mean
    var = torch.zeros_like(mean) + x_var
    for s_, r in list(zip([0] + list(steps), steps))[::-1]:
        skip_alpha = alphas[s_ + 1: r + 1].prod()
        skip_beta = 1. - skip_alpha
        al, sg = cum_alphas[r] ** 0.5, cum_betas[r] ** 0.5
        v = al ** 2 * s ** 2 + sg ** 2
        e1, e0 = sg / v, -sg * al * mu / v
        c1, c0 = (1 - sg * e1) / al, -sg * e0 / al
        small = skip_beta * cum_betas[s_] / cum_betas[r]
        cov = 0.0 if ms_eps is None else np.clip(cum_betas[r] / cum_alphas[r] * (1. - ms_eps[r]), 0., 1.)
        if sampler.startswith("ddpm"):
            B0, A = skip_beta * cum_alphas[s_] ** 0.5 / cum_betas[r], skip_alpha ** 0.5 * cum_betas[s_] / cum_betas[r]
            a, b = B0 * c1 + A, B0 * c0
            if sampler == "ddpm_ms_eps":
                sigma2 = small + cum_alphas[s_] * skip_beta ** 2 / cum_betas[r] ** 2 * cov
            else:
                sigma2 = small if small_sigma else skip_beta
        else:
            lamb2 = eta ** 2 * small
            B0, D = cum_alphas[s_] ** 0.5, (cum_betas[s_] - lamb2) ** 0.5
            a, b = B0 * c1 + D * e1, B0 * c0 + D * e0
            sigma2 = lamb2
            if sampler == "ddim_ms_eps":
                sigma2 = lamb2 + (cum_alphas[s_] ** 0.5 - ((cum_betas[s_] - lamb2) * cum_alphas[r] / cum_betas[r])
                                  ** 0.5) ** 2 * cov
        if sampler != "ddim_naive" and s_ != 0:
            sigma2 = _clip_sigma(sigma2, s_, steps, clip_sigma_idx, clip_pixel)
        if s_ == 0:
            sigma2 = 0.0
        mean, var = a * mean + b, a * a * var + sigma2
    return mean, var
