"""The paper's claim on Gaussian data: sample moments of Analytic-DDPM / Analytic-DDIM against DDPM with the
small (beta-tilde) and large (beta) variances and DDIM, at few steps.

Data ``x_0 ~ N(mu_i, s^2)`` on ``D`` elements (``mu_i`` evenly spaced in [-0.3, 0.3], one ``s`` for all, so the
scalar optimal variance is the exact posterior one), the exact noise model and the exact ``ms_eps``
(``pydiff.testing.analytic_dpm``), the authors' schedules with ``N = 1000`` levels, ``'linear'`` trajectories.
Every sampler runs on the fused path (``pydiff.analytic_dpm``) from the same ``x_N ~ N(0, I)``, ``B`` samples; per
sampler the table gives the mean error ``max_i |mean_i - mu_i|``, the variance ratio ``mean_i var_i / s^2`` and the
KL divergence per dimension of ``N(mean_i, var_i)`` from ``N(mu_i, s^2)``, first from the samples, then exactly
(``gaussian_moments``: the sampler's law propagated step by step, valid while the x0 clamp does not act)::

    python -m benchmarks.analytic_dpm_moments                    # from the repository root; ~1 min on 2 cores
    python -m benchmarks.analytic_dpm_moments --samples 100000 --steps 10 25 100
"""
from __future__ import annotations

import argparse
import math

import torch

import pydiff.analytic_dpm as adpm
from pydiff.testing import analytic_dpm as oracle

SAMPLERS = [  # label, sampler kind of gaussian_moments, keyword arguments
    ("Analytic-DDPM", "ddpm_ms_eps", {}),
    ("DDPM, beta-tilde (small)", "ddpm_naive", {"small_sigma": True}),
    ("DDPM, beta (large)", "ddpm_naive", {"small_sigma": False}),
    ("Analytic-DDIM (eta=0)", "ddim_ms_eps", {}),
    ("DDIM (eta=0)", "ddim_naive", {}),
]


def run(kind, betas, K, x, model, ms, small_sigma=False):
    if kind == "ddpm_ms_eps":
        return adpm.reverse_ddpm_ms_eps(x, betas, False, "linear", 0, 2, model, ms, K)
    if kind == "ddim_ms_eps":
        return adpm.reverse_ddim_ms_eps(x, betas, False, 0.0, model, ms, K)
    if kind == "ddpm_naive":
        return adpm.reverse_ddpm_naive(x, betas, small_sigma, True, False, "linear", eps_model=model, sample_steps=K)
    return adpm.reverse_ddim_naive(x, betas, False, 0.0, "linear", model, K)


def kl(mean, var, mu, s2):
    r = var / s2
    return (0.5 * (r + (mean - mu) ** 2 / s2 - 1 - torch.log(r))).mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--dims", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25])
    ap.add_argument("--s", type=float, nargs="+", default=[0.2, 0.05])
    ap.add_argument("--N", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    mu = torch.linspace(-0.3, 0.3, args.dims, dtype=torch.float64)
    for sched in ("linear", "cosine"):
        betas = oracle.named_betas(sched, args.N)
        for s in args.s:
            sv = torch.full((args.dims,), s, dtype=torch.float64)
            model = oracle.gaussian_eps_model(betas, mu, sv)
            ms = oracle.gaussian_ms_eps(betas, sv)
            for K in args.steps:
                print(f"\n{sched} betas, N = {args.N}, K = {K} steps, data N(mu_i in [-0.3, 0.3], s = {s}^2), "
                      f"B = {args.samples}")
                print(f"{'sampler':26s} {'|mean-mu| max':>13s} {'var/s^2':>8s} {'KL/dim':>9s}   exact: "
                      f"{'|mean-mu|':>9s} {'var/s^2':>8s} {'KL/dim':>9s}")
                steps = oracle.choice_steps(args.N, K, "linear")
                for label, kind, kw in SAMPLERS:
                    torch.manual_seed(args.seed)
                    x = torch.randn(args.samples, args.dims, dtype=torch.float64)
                    out = run(kind, betas, K, x, model, ms, **kw)
                    m, v = out.mean(0), out.var(0)
                    em, ev = oracle.gaussian_moments(kind, betas, steps, mu, sv,
                                                     ms_eps=ms if kind.endswith("ms_eps") else None, **kw)
                    print(f"{label:26s} {(m - mu).abs().max().item():13.2e} {(v / s ** 2).mean().item():8.4f} "
                          f"{kl(m, v, mu, s * s):9.2e}          {(em - mu).abs().max().item():9.2e} "
                          f"{(ev / s ** 2).mean().item():8.4f} {kl(em, ev, mu, s * s):9.2e}")
    print(f"\nsampling error of var/s^2: ~{math.sqrt(2 / args.samples / args.dims):.4f} (one standard error)")


if __name__ == "__main__":
    main()
