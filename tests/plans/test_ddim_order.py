"""DDIM (eta = 0) against the exact probability-flow ODE solution for Gaussian data: measured order 1.

Data x0 ~ N(mu, s^2) elementwise. Then p_t = N(alpha mu, alpha^2 s^2 + sigma^2), the exact noise prediction
is eps(x) = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2), and the probability-flow ODE keeps
(x_t - alpha_t mu) / sqrt(alpha_t^2 s^2 + sigma_t^2) constant: its solution is known in closed form, so the
sampler's error is exact and its convergence order can be measured (DDIM is first order in the step of
lambda = log(alpha/sigma); Lu et al. 2022, section 3.3; Song et al. 2021, DDIM section 4.3).
"""
import numpy as np
import pytest
import torch

import pydiff.diffusers as pd

MU, S = 0.4, 0.7


def _final_error(steps, backend):
    sched = pd.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    sched.pydiff_backend = backend
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.double()
    t0 = int(sched.timesteps[0])
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    const = (x - ac[t0].sqrt() * MU) / (ac[t0] * S * S + 1 - ac[t0]).sqrt()
    for t in sched.timesteps:
        a = ac[int(t)]
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S * S + 1 - a)
        x = sched.step(eps, t, x).prev_sample
    a_end = ac[0]  # set_alpha_to_one=False: the last step lands on alpha_bar_0
    exact = a_end.sqrt() * MU + (a_end * S * S + 1 - a_end).sqrt() * const
    return ((x - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ddim_converges_at_order_one(backend):
    from pydiff.ops import backend_available
    if not backend_available(backend):
        pytest.skip(f"{backend} not built")
    steps = np.array([10, 20, 50, 100])
    errs = np.array([_final_error(int(n), backend) for n in steps])
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert np.all(np.diff(errs) < 0), errs
    assert abs(slope - 1.0) <= 0.2, (slope, errs)
