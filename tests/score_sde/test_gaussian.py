"""Sampling Gaussian data N(MU, S^2) with the exact score (VE: -(x - MU)/(S^2 + sigma_t^2); VP/sub-VP: the
noise prediction of their marginals, ``pydiff.testing.score_sde.gaussian_model``), both noise sources.

Predictor-only and annealed-Langevin runs are affine steps, so their exact finite-N law is known
(``gaussian_law``): the sample mean and std must lie within 4 standard errors of it. The law's distance from
the data is the discretisation bias, stated per case below (measured with ``gaussian_law.law``; at N = 1000
every predictor-only bias is below 0.025 in std and 0.005 in mean). Langevin runs (step sizes from the
sample's norms) are compared with the data itself, within 4 standard errors plus their measured bias.
Every predictor-corrector combination at N = 50: ``test_gaussian_all.py``.
"""
import pytest
import torch

from gaussian_law import law
from pydiff.score_sde import sampling
from sde_cases import toy

MU, S = 0.3, 0.8  # gaussian_model's defaults

# (kind, continuous, predictor, corrector, probability_flow, |mean bias| bound, |std bias| bound) at N = 50;
# measured law - data: ve rd: -8e-5 / +0.078; ve rd flow: -0.0067 / +0.31; vp em: +0.0021 / +0.0116;
# vp ancestral+ald: 0 / +0.0062; subvp rd+ald: +0.0027 / +0.0095; vp em flow: -0.0054 / +0.0025
CASES_50 = [
    ("ve", True, "reverse_diffusion", "none", False, 1e-3, 0.09),
    ("ve", True, "reverse_diffusion", "none", True, 0.01, 0.35),
    ("vp", True, "euler_maruyama", "none", False, 0.003, 0.015),
    ("vp", False, "ancestral_sampling", "ald", False, 1e-4, 0.008),
    ("subvp", True, "reverse_diffusion", "ald", False, 0.004, 0.012),
    ("vp", True, "euler_maruyama", "none", True, 0.007, 0.004),
]


def sample(kind, continuous, predictor, corrector, pf, N, shape, noise_source, seed=0):
    sde, osde, model = toy(kind, N, continuous, wiggle=0.0)
    torch.manual_seed(seed)
    x, _ = sampling.get_pc_sampler(sde, shape, predictor, corrector, lambda v: v, 0.16, 1, pf, continuous,
                                   device="cpu", noise_source=noise_source)(model)
    return x.double(), osde, model


@pytest.mark.parametrize("noise_source", ["torch", "philox"])
@pytest.mark.parametrize("kind,continuous,predictor,corrector,pf,bias_m,bias_s", CASES_50,
                         ids=lambda v: str(v))
def test_exact_law_of_affine_runs(kind, continuous, predictor, corrector, pf, bias_m, bias_s, noise_source):
    shape = (16, 256)
    x, osde, model = sample(kind, continuous, predictor, corrector, pf, 50, shape, noise_source)
    mean, std = law(osde, model, predictor, corrector, 1, pf, continuous)
    n = x.numel()
    assert abs(x.mean().item() - mean) < 4 * std / n ** 0.5
    assert abs(x.std().item() - std) < 4 * std / (2 * n) ** 0.5
    assert abs(mean - MU) < bias_m and abs(std - S) < bias_s  # the discretisation bias stays as measured


@pytest.mark.slow
@pytest.mark.parametrize("noise_source", ["torch", "philox"])
@pytest.mark.parametrize("kind,continuous,predictor,norm,bias_m,bias_s", [
    # measured at N = 1000 over 2e5 samples: ve -0.0021 / +0.0106 (torch noise)
    ("ve", True, "reverse_diffusion", "batch", 0.004, 0.014),
    ("subvp", True, "euler_maruyama", "batch", 0.004, 0.014),
    ("vp", False, "ancestral_sampling", "sample", 0.004, 0.014),
])
def test_langevin_runs_reach_the_data(kind, continuous, predictor, norm, bias_m, bias_s, noise_source):
    shape = (64, 256)
    sde, osde, model = toy(kind, 1000, continuous, wiggle=0.0)
    torch.manual_seed(0)
    x, _ = sampling.get_pc_sampler(sde, shape, predictor, "langevin", lambda v: v, 0.16, 1, False, continuous,
                                   device="cpu", noise_source=noise_source, corrector_norm=norm)(model)
    x = x.double()
    n = x.numel()
    assert abs(x.mean().item() - MU) < 4 * S / n ** 0.5 + bias_m
    assert abs(x.std().item() - S) < 4 * S / (2 * n) ** 0.5 + bias_s
