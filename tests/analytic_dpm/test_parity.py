"""The four samplers against the float64 transcription of the authors' code (pydiff.testing.analytic_dpm) on
Gaussian data with the exact noise model and the exact ms_eps, drawing the same torch noise."""
import itertools

import pytest
import torch

import pydiff.analytic_dpm as face
from pydiff.testing import analytic_dpm as oracle

from adpm_cases import max_rel, problem, same_noise, x_init

STEPS_TYPES = ["linear", "power2", "quad_ddim", "dp_seg"]
TIME = [(False, False), (True, False), (False, True), (True, True)]  # (rescale_timesteps, shift1)
# (small_sigma, clip_denoise, d_model instead of eps_model): each of the 8 twice per test of reverse_ddpm_naive
VARIANTS = list(itertools.product([False, True], [False, True], [False, True]))[::-1]
TOL64 = 1e-10  # float64 end to end: measured worst 2.9e-13 over this grid


def _check(fn, tol=TOL64, dtype=torch.float64, seed=0):
    x = x_init(seed, dtype)
    got = same_noise(lambda: fn(face, x))
    want = same_noise(lambda: fn(oracle, x))
    assert got.dtype == dtype and got.shape == x.shape
    err = max_rel(got, want)
    assert err <= tol, err


@pytest.mark.parametrize("betas_name", ["linear", "cosine"])
@pytest.mark.parametrize("K", [10, 25, 50])
@pytest.mark.parametrize("steps_type", STEPS_TYPES)
def test_ddpm_ms_eps(betas_name, K, steps_type):
    for (rescale, shift1), csi in itertools.product(TIME, [0, 1, 2]):
        betas, eps_model, _, ms = problem(betas_name, 100, rescale, shift1)
        _check(lambda m, x: m.reverse_ddpm_ms_eps(x, betas, rescale, steps_type, csi, 2, eps_model, ms, K, shift1),
               seed=K + csi)


@pytest.mark.parametrize("betas_name", ["linear", "cosine"])
@pytest.mark.parametrize("K", [10, 25, 50])
@pytest.mark.parametrize("steps_type", STEPS_TYPES)
def test_ddim_ms_eps(betas_name, K, steps_type):
    for i, ((rescale, shift1), csi) in enumerate(itertools.product(TIME, [0, 1, 2])):
        eta = (0.0, 0.5, 1.0)[i % 3]
        betas, eps_model, _, ms = problem(betas_name, 100, rescale, shift1)
        _check(lambda m, x: m.reverse_ddim_ms_eps(x, betas, rescale, eta, eps_model, ms, K, csi, 2, shift1,
                                                  steps_type=steps_type), seed=K + csi)


@pytest.mark.parametrize("betas_name", ["linear", "cosine"])
@pytest.mark.parametrize("K", [10, 25, 50])
@pytest.mark.parametrize("steps_type", ["linear", "power2", "quad_ddim"])
def test_ddpm_naive(betas_name, K, steps_type):
    for i, ((rescale, shift1), csi) in enumerate(itertools.product(TIME, [0, 1, 2])):
        small, clip_denoise, use_d = VARIANTS[i % len(VARIANTS)]
        betas, eps_model, d_model, _ = problem(betas_name, 100, rescale, shift1)
        kw = dict(d_model=d_model) if use_d else dict(eps_model=eps_model)
        _check(lambda m, x: m.reverse_ddpm_naive(x, betas, small, clip_denoise, rescale, steps_type, csi, 2,
                                                 sample_steps=K, shift1=shift1, **kw), seed=K + csi)


@pytest.mark.parametrize("betas_name", ["linear", "cosine"])
@pytest.mark.parametrize("K", [10, 25, 50])
@pytest.mark.parametrize("steps_type", ["linear", "power2", "quad_ddim"])
def test_ddim_naive(betas_name, K, steps_type):
    for i, (rescale, shift1) in enumerate(TIME):
        eta = (0.0, 0.5, 1.0, 0.0)[i]
        betas, eps_model, _, _ = problem(betas_name, 100, rescale, shift1)
        _check(lambda m, x: m.reverse_ddim_naive(x, betas, rescale, eta, steps_type, eps_model, K, shift1), seed=K)


@pytest.mark.parametrize("sampler", ["ddpm_ms_eps", "ddim_ms_eps", "ddpm_naive", "ddim_naive"])
def test_float32_and_n200(sampler):
    """float32 data (the noise drawn in float32 by both) and N = 200, clip_pixel 1."""
    betas, eps_model, _, ms = problem("cosine", 200, True, False)
    calls = {
        "ddpm_ms_eps": lambda m, x: m.reverse_ddpm_ms_eps(x, betas, True, "dp_seg", 1, 1, eps_model, ms, 25),
        "ddim_ms_eps": lambda m, x: m.reverse_ddim_ms_eps(x, betas, True, 0.0, eps_model, ms, 25, 2, 1),
        "ddpm_naive": lambda m, x: m.reverse_ddpm_naive(x, betas, True, True, True, "power2", 1, 1, eps_model,
                                                        sample_steps=25),
        "ddim_naive": lambda m, x: m.reverse_ddim_naive(x, betas, True, 1.0, "quad_ddim", eps_model, 25),
    }
    _check(calls[sampler])
    # float32 rounding of the x0 conversion at abar_N ~ 4e-5 (1/alpha ~ 150): measured worst 1.9e-4 over the
    # grid against the transcription, and 1.8e-4 between the authors' own float32 and float64 runs
    _check(calls[sampler], tol=5e-4, dtype=torch.float32)


def test_defaults_run_all_n_steps():
    """sample_steps=None (and 0, the code's ``sample_steps or N``) runs all N levels."""
    betas, eps_model, _, ms = problem("linear", 100)
    for K in (None, 0):
        _check(lambda m, x: m.reverse_ddpm_ms_eps(x, betas, False, eps_model=eps_model, ms_eps=ms, sample_steps=K))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backends_give_the_transcription(backend):
    """The same run on the reference twin and the C++ kernel (float64)."""
    betas, eps_model, _, ms = problem("cosine", 100, True, True)
    _check(lambda m, x: m.reverse_ddpm_ms_eps(x, betas, True, "dp_seg", 2, 2, eps_model, ms, 25, True,
                                              **({"backend": backend} if m is face else {})))


@pytest.mark.parametrize("sampler", ["ddpm_ms_eps", "ddim_ms_eps"])
def test_float32_ms_eps_takes_the_authors_trajectory(sampler):
    """A float32 ms_eps (the authors' file format): 'dp_seg' picks the trajectory of their float32 rounding, so the
    samples are the transcription's given the same float32 array."""
    import numpy as np
    from pydiff.plans import analytic_dpm as plan
    betas, eps_model, _, ms = problem("linear", 200)
    ms32 = np.asarray(ms, dtype=np.float32)
    K = 15  # here the two roundings of the same array choose different trajectories
    assert plan.choose_steps(200, K, "dp_seg", ms32.astype(np.float64), betas) != \
        plan.choose_steps(200, K, "dp_seg", ms32.astype(np.float64), betas, score_dtype=np.float32)
    call = (lambda m, x: m.reverse_ddpm_ms_eps(x, betas, False, "dp_seg", eps_model=eps_model, ms_eps=ms32,
                                               sample_steps=K)) if sampler == "ddpm_ms_eps" else \
        (lambda m, x: m.reverse_ddim_ms_eps(x, betas, False, 0.0, eps_model, ms32, K, steps_type="dp_seg"))
    _check(call)


def _channels_last(model):
    def run(x, t):  # a network that answers in channels_last (values unchanged)
        return model(x, t).contiguous(memory_format=torch.channels_last)
    return run


@pytest.mark.parametrize("sampler", ["ddpm_ms_eps", "ddim_ms_eps", "ddpm_naive_d", "ddim_naive"])
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_noise_follows_the_authors_sample_layout(sampler, layout):
    """randn_like(x) fills x's memory in order and the authors' x keeps the layout of x_init (or takes a d_model's):
    a channels_last, transposed or sliced x_init runs (the fused step writes a contiguous sample) and draws the
    transcription's noise."""
    betas, eps_model, d_model, ms = problem("linear", 100)
    x = x_init(3, torch.float64)
    x = {"channels_last": x.contiguous(memory_format=torch.channels_last), "transposed": x.transpose(2, 3).
         contiguous().transpose(2, 3), "sliced": torch.cat([x, x], 3)[..., ::2]}[layout]
    assert not x.is_contiguous()
    calls = {
        "ddpm_ms_eps": lambda m, x: m.reverse_ddpm_ms_eps(x, betas, False, eps_model=_channels_last(eps_model),
                                                          ms_eps=ms, sample_steps=10),
        "ddim_ms_eps": lambda m, x: m.reverse_ddim_ms_eps(x, betas, False, 0.5, eps_model, ms, 10),
        "ddpm_naive_d": lambda m, x: m.reverse_ddpm_naive(x, betas, True, True, False, d_model=_channels_last(d_model),
                                                          sample_steps=10),
        "ddim_naive": lambda m, x: m.reverse_ddim_naive(x, betas, False, 1.0, eps_model=_channels_last(eps_model),
                                                        sample_steps=10),
    }
    got = same_noise(lambda: calls[sampler](face, x))
    want = same_noise(lambda: calls[sampler](oracle, x))
    assert max_rel(got, want) <= TOL64
    if layout != "sliced":  # and the layout matters: the same values, contiguous, draw other noise
        plain = same_noise(lambda: calls[sampler](oracle, x.contiguous()))
        assert max_rel(plain, want) > 1e-2
