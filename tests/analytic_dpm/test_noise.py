"""noise_source: 'torch' keeps the authors' generator order; 'philox' is reproducible, stores no noise and has the
right law (sample moments against the exact moments of the sampler on Gaussian data)."""
import pytest
import torch

import pydiff.analytic_dpm as face
import pydiff.analytic_dpm.samplers as samplers
from pydiff.testing import analytic_dpm as oracle

B, D = 8_000, 4
MU = torch.linspace(-0.2, 0.2, D, dtype=torch.float64)
S = torch.full((D,), 0.15, dtype=torch.float64)  # |E[x_0|x_r]| stays far below 1: the clamp does not act
N, K = 100, 10


def _run(sampler, noise_source, seed, B=B):
    betas = oracle.named_betas("cosine", N)
    model = oracle.gaussian_eps_model(betas, MU, S)
    ms = oracle.gaussian_ms_eps(betas, S)
    torch.manual_seed(seed)
    x = torch.randn(B, D, dtype=torch.float64)
    if sampler == "ddpm_ms_eps":
        return face.reverse_ddpm_ms_eps(x, betas, False, "linear", 0, 2, model, ms, K, noise_source=noise_source)
    if sampler == "ddim_ms_eps":
        return face.reverse_ddim_ms_eps(x, betas, False, 0.5, model, ms, K, noise_source=noise_source)
    if sampler == "ddpm_naive":
        return face.reverse_ddpm_naive(x, betas, True, True, False, "linear", eps_model=model, sample_steps=K,
                                       noise_source=noise_source)
    return face.reverse_ddim_naive(x, betas, False, 1.0, "linear", model, K, noise_source=noise_source)


def _moments(sampler):
    betas = oracle.named_betas("cosine", N)
    steps = oracle.choice_steps(N, K, "linear")
    kw = dict(ms_eps=oracle.gaussian_ms_eps(betas, S)) if sampler.endswith("ms_eps") else {}
    eta = {"ddim_ms_eps": 0.5, "ddim_naive": 1.0}.get(sampler, 0.0)
    return oracle.gaussian_moments(sampler, betas, steps, MU, S, eta=eta, small_sigma=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("noise_source", ["philox", "torch"])
@pytest.mark.parametrize("sampler", ["ddpm_ms_eps", "ddim_ms_eps", "ddpm_naive", "ddim_naive"])
def test_sample_moments(sampler, noise_source):
    """Mean and variance per element within 4.5 standard errors of the exact law of the sampler (B = 8000)."""
    x = _run(sampler, noise_source, seed=7)
    mean, var = _moments(sampler)
    z_mean = (x.mean(0) - mean) / (var / B).sqrt()
    z_var = (x.var(0) - var) / (var * (2.0 / B) ** 0.5)
    assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5, (z_mean, z_var)


def test_philox_is_reproducible_per_seed():
    a = _run("ddpm_ms_eps", "philox", seed=1, B=64)
    b = _run("ddpm_ms_eps", "philox", seed=1, B=64)
    c = _run("ddpm_ms_eps", "philox", seed=2, B=64)
    t = _run("ddpm_ms_eps", "torch", seed=1, B=64)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, t)


def test_philox_stores_no_noise_and_numbers_its_draws(monkeypatch):
    calls = []
    real = samplers.fused_step

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(samplers, "fused_step", spy)
    _run("ddpm_ms_eps", "philox", seed=1, B=8)
    assert len(calls) == K and all("noise" not in kw for kw in calls)
    assert [kw["offset"] for kw in calls[:-1]] == list(range(K - 1)) and "rng" not in calls[-1]
    calls.clear()
    _run("ddim_naive", "torch", seed=1, B=8)
    assert all(kw["noise"].shape == (8, D) for kw in calls[:-1]) and "noise" not in calls[-1]


def test_torch_noise_draws_where_the_authors_draw():
    """DDIM with eta = 0 adds no noise but still draws it on every step but the last: the generator ends where the
    authors' ends (K - 1 draws of x's shape after x_init)."""
    betas = oracle.named_betas("cosine", N)
    model = oracle.gaussian_eps_model(betas, MU, S)
    torch.manual_seed(3)
    x = torch.randn(8, D, dtype=torch.float64)
    face.reverse_ddim_naive(x, betas, False, 0.0, "linear", model, K)
    after = torch.randn(1)
    torch.manual_seed(3)
    torch.randn(8, D, dtype=torch.float64)
    for _ in range(K - 1):
        torch.randn(8, D, dtype=torch.float64)
    assert torch.equal(after, torch.randn(1))


def test_x_init_is_not_modified():
    betas = oracle.named_betas("cosine", N)
    x = torch.randn(8, D, dtype=torch.float64)
    keep = x.clone()
    face.reverse_ddpm_ms_eps(x, betas, False, eps_model=oracle.gaussian_eps_model(betas, MU, S),
                             ms_eps=oracle.gaussian_ms_eps(betas, S), sample_steps=K)
    assert torch.equal(x, keep)
