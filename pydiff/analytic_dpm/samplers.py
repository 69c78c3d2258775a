"""The samplers of the Analytic-DPM authors' code (``core/inference/sampler``) on pydiff's fused step.

``reverse_ddpm_ms_eps`` / ``reverse_ddim_ms_eps`` (Analytic-DDPM / Analytic-DDIM: the optimal variance from
``ms_eps``) and ``reverse_ddpm_naive`` / ``reverse_ddim_naive`` (the fixed variances) with the authors' names,
positional order, defaults and conventions: ``betas`` a NumPy-like array of length ``N + 1`` with ``betas[0] == 0``;
the model called as ``eps_model(x, t)`` with ``t`` a ``(B,)`` tensor of ``x``'s dtype holding the level ``r`` (``r - 1``
with ``shift1``), times ``1000/N`` with ``rescale_timesteps``; the result is the final sample.

How a step runs: the float64 rows (``pydiff.plans.analytic_dpm.sampler_plan``: x0 conversion with its [-1, 1] clamp
as CLIP, the posterior mean as A/D/B0, sigma as C) are computed once per call and copied to the device once; per
step the face calls the model and ``pydiff.ops.fused_step`` once. The model's time inputs are one ``(K, B)`` tensor
made before the loop.

Noise (``noise_source``, keyword-only): ``'torch'`` (default) draws ``torch.randn_like(x)`` after the model call of
every step with ``s > 0`` -- also where sigma is 0 (e.g. DDIM with ``eta = 0``), as the authors' code does -- and none
at the last step, so the same torch seed gives the authors' samples. ``'philox'`` draws one int64 key pair from torch's
generator on ``x``'s device at the start of the call and generates the noise inside the kernel: the ``j``-th draw of
the ``'torch'`` order is the Philox stream at counter offset ``j``; nothing is stored.

Extension beyond the authors' signatures: ``reverse_ddim_ms_eps(..., steps_type='linear')`` (keyword-only; their
CIFAR/ImageNet code fixes 'linear', their CelebA/LSUN code takes it), ``noise_source`` and ``backend``.
"""
from __future__ import annotations

import torch

from .._checks import sample_tensor
from ..ops import compute_dtype, fused_step
from ..ops.columns import COL
from ..plans import analytic_dpm as plan
from ..runtime.layout import follow, randn_in_layout, row_major

NOISE_SOURCES = ("torch", "philox")


def check_noise_source(noise_source) -> str:
    if not isinstance(noise_source, str) or noise_source not in NOISE_SOURCES:
        raise ValueError(f"noise_source must be one of {NOISE_SOURCES}, got {noise_source!r}")
    return noise_source


def check_x(x, name="x_init"):
    return sample_tensor(name, x)


def check_model(model, name):
    if not callable(model):
        raise TypeError(f"{name} must be callable as {name}(x, t), got {type(model).__name__}")
    return model


def check_model_output(out, x, name):
    """The model's output as a tensor shaped like ``x``, in ``x``'s dtype."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} returned shape {tuple(out.shape)}; expected the sample's shape {tuple(x.shape)}")
    return out.to(x.dtype)


def model_times(inputs, x, N: int, rescale_timesteps: bool) -> torch.Tensor:
    """``(K, B)`` time inputs, formed as the authors form them: an integer tensor cast to ``x``'s dtype, then
    ``* 1000.0 / N`` in that dtype when rescaling."""
    t = torch.tensor(inputs, dtype=torch.int64)[:, None].repeat(1, x.shape[0]).to(x.device, x.dtype)
    return t * 1000.0 / float(N) if rescale_timesteps else t


def run_plan(p: plan.AnalyticPlan, x_init, model, model_name, N, rescale_timesteps, shift1, noise_source,
             backend=None):
    """Run the rows of ``p``: per step one model call and one ``fused_step``."""
    x = x_init
    T = compute_dtype(x.dtype)
    table = torch.as_tensor(p.rows, dtype=T, device=x.device)
    times = model_times(p.model_inputs(bool(shift1)), x, N, bool(rescale_timesteps))
    C = p.rows[:, COL["C"]]
    rng = None
    if noise_source == "philox":
        rng = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), device=x.device, dtype=torch.int64)
    draws = 0
    like = x_init  # a tensor with the layout of the authors' x, whose randn_like draws the noise (runtime.layout)
    ddim = p.sampler.startswith("ddim")
    with torch.no_grad():
        for k in range(len(p.pairs)):
            out_k = model(x, times[k])
            m = check_model_output(out_k, x, model_name)
            kw = {}
            if p.noisy[k]:
                if rng is None:
                    z = randn_in_layout(like, dtype=x.dtype, device=x.device)
                    if C[k] != 0:  # a zero-sigma draw only keeps torch's generator in step
                        kw = {"noise": z}
                elif C[k] != 0:
                    kw = {"rng": rng, "offset": draws}
                draws += 1
            if rng is None and not row_major(like, out_k):
                like = _next_layout(like, out_k, model_name == "d_model", ddim, p.noisy[k])
            # never write into the caller's x_init; the fused step writes a contiguous sample
            out = x if k > 0 else torch.empty(x.shape, dtype=x.dtype, device=x.device)
            x = fused_step(x, m, table[k], out=out, backend=backend, **kw)
    return x


def _next_layout(x, m, x0_model, ddim, noisy):
    """The layout of the authors' x after a step, from that of x and of the model output m (their expressions'
    operand order: x0 = c x - c eps or the model's, eps = m or -c x0 + c x, mean = c x0 + c x (DDPM) or
    c x0 + c eps (DDIM), x = mean + c randn_like(x))."""
    x0, eps = (follow(m), follow(m, x)) if x0_model else (follow(x, m), m)
    mean = follow(x0, eps) if ddim else follow(x0, x)
    return follow(mean, x) if noisy else mean


def reverse_ddpm_ms_eps(x_init, betas, rescale_timesteps, steps_type="linear", clip_sigma_idx=0, clip_pixel=2,
                        eps_model=None, ms_eps=None, sample_steps=None, shift1=False, *, noise_source="torch",
                        backend=None):
    """Analytic-DDPM: ancestral sampling with the posterior mean and the optimal variance
    ``sigma^2 = b_{r|s} bbar_s/bbar_r + abar_s b_{r|s}^2/bbar_r^2 clip(bbar_r/abar_r (1 - ms_eps[r]), 0, 1)``
    (Bao et al., ICLR 2022, Theorem 1; ``pydiff.plans.analytic_dpm``).

    Args (the authors'):
        x_init: ``x_N``, shape ``(B, ...)``.
        betas: length ``N + 1``, ``betas[0] == 0``.
        rescale_timesteps: the model takes ``n * 1000 / N``.
        steps_type: ``'linear'``, ``'power<k>'``, ``'quad_ddim'`` or ``'dp_seg'`` (the DP optimal trajectory).
        clip_sigma_idx: cap sigma^2 on the steps with ``s < tau[clip_sigma_idx]`` (0: none).
        clip_pixel: the cap, in pixel levels of 255 (``sigma^2 <= (clip_pixel 2/255 sqrt(pi/2))^2``).
        eps_model: the noise prediction network, ``eps_model(x, t)``.
        ms_eps: length ``N + 1``, ``E||eps_model(x_n, n)||^2/d`` (``estimate_ms_eps``).
        sample_steps: the number of steps ``K`` (default N).
        shift1: the model's time index is ``n - 1``.
    Keyword-only: ``noise_source`` ``'torch'``/``'philox'``, ``backend`` (``pydiff.ops``).
    """
    check_x(x_init)
    check_model(eps_model, "eps_model")
    check_noise_source(noise_source)
    p = plan.sampler_plan("ddpm_ms_eps", betas, steps_type=steps_type, sample_steps=sample_steps, ms_eps=ms_eps,
                          clip_sigma_idx=clip_sigma_idx, clip_pixel=clip_pixel)
    return run_plan(p, x_init, eps_model, "eps_model", len(betas) - 1, rescale_timesteps, shift1, noise_source,
                    backend)


def reverse_ddim_ms_eps(x_init, betas, rescale_timesteps, eta=0., eps_model=None, ms_eps=None, sample_steps=None,
                        clip_sigma_idx=0, clip_pixel=2, shift1=False, *, steps_type="linear", noise_source="torch",
                        backend=None):
    """Analytic-DDIM: the DDIM mean ``sqrt(abar_s) x0 + sqrt(bbar_s - lam^2) eps`` with the optimal variance
    ``lam^2 + (sqrt(abar_s) - sqrt((bbar_s - lam^2) abar_r/bbar_r))^2 clip(bbar_r/abar_r (1 - ms_eps[r]), 0, 1)``,
    ``lam^2 = eta^2 b_{r|s} bbar_s/bbar_r`` (Bao et al., ICLR 2022, Theorem 1). Arguments as
    ``reverse_ddpm_ms_eps``; ``eta`` >= 0 scales DDIM's lambda; ``steps_type`` is keyword-only (an extension: the
    authors' CIFAR/ImageNet function always uses 'linear', the default here).
    """
    check_x(x_init)
    check_model(eps_model, "eps_model")
    check_noise_source(noise_source)
    p = plan.sampler_plan("ddim_ms_eps", betas, steps_type=steps_type, sample_steps=sample_steps, ms_eps=ms_eps,
                          eta=eta, clip_sigma_idx=clip_sigma_idx, clip_pixel=clip_pixel)
    return run_plan(p, x_init, eps_model, "eps_model", len(betas) - 1, rescale_timesteps, shift1, noise_source,
                    backend)


def reverse_ddpm_naive(x_init, betas, small_sigma, clip_denoise, rescale_timesteps, steps_type="linear",
                       clip_sigma_idx=0, clip_pixel=2, eps_model=None, d_model=None, sample_steps=None, shift1=False,
                       *, noise_source="torch", backend=None):
    """DDPM ancestral sampling on a trajectory with a fixed variance: ``b_{r|s} bbar_s/bbar_r`` (``small_sigma``,
    beta-tilde) or ``b_{r|s}`` (Ho et al., arXiv:2006.11239). ``clip_denoise`` clamps x0 to [-1, 1]. Exactly one
    of ``eps_model`` (predicts the noise) and ``d_model`` (predicts x0) is given. ``steps_type`` 'dp_seg' needs
    ms_eps and is not available here (as in the authors' code). Other arguments as ``reverse_ddpm_ms_eps``.
    """
    check_x(x_init)
    if (eps_model is None) == (d_model is None):
        raise ValueError("exactly one of eps_model and d_model must be given")
    name = "eps_model" if d_model is None else "d_model"
    model = check_model(eps_model if d_model is None else d_model, name)
    check_noise_source(noise_source)
    p = plan.sampler_plan("ddpm_naive", betas, steps_type=steps_type, sample_steps=sample_steps,
                          small_sigma=bool(small_sigma), clip_denoise=bool(clip_denoise), clip_sigma_idx=clip_sigma_idx,
                          clip_pixel=clip_pixel, model_kind="eps" if d_model is None else "x0")
    return run_plan(p, x_init, model, name, len(betas) - 1, rescale_timesteps, shift1, noise_source, backend)


def reverse_ddim_naive(x_init, betas, rescale_timesteps, eta=0., steps_type="linear", eps_model=None,
                       sample_steps=None, shift1=False, *, noise_source="torch", backend=None):
    """DDIM on a trajectory (Song et al., arXiv:2010.02502, eq. 12): ``sqrt(abar_s) x0 + sqrt(bbar_s - lam^2) eps
    + lam z`` with ``lam^2 = eta^2 b_{r|s} bbar_s/bbar_r`` and x0 clamped to [-1, 1]. Noise is drawn on every step
    but the last, also for ``eta = 0``, as the authors' code draws it."""
    check_x(x_init)
    check_model(eps_model, "eps_model")
    check_noise_source(noise_source)
    p = plan.sampler_plan("ddim_naive", betas, steps_type=steps_type, sample_steps=sample_steps, eta=eta)
    return run_plan(p, x_init, eps_model, "eps_model", len(betas) - 1, rescale_timesteps, shift1, noise_source,
                    backend)
