"""The float64 row builders (native plans) against the diffusers-validated float32 path, and a native DDIM
loop (schedule -> plan -> fused steps, no diffusers involved) against the exact ODE solution."""
import math

import numpy as np
import pytest
import torch

from pydiff.ops import COL, backend_available, fused_step
from pydiff.plans import ddim_rows, ddim_rows_from, ddim_scalars, ddpm_rows, ddpm_rows_from, ddpm_scalars
from pydiff.schedules import DiscreteSchedule, diffusers_timesteps, make_betas

AC32 = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32), 0)
T = np.arange(50, 1000, 50)


def _close(a, b, rtol):
    body = [c for c in range(a.shape[-1]) if c != COL["CLIP"]]
    np.testing.assert_allclose(a[..., body], b[..., body], rtol=rtol, atol=1e-7)
    np.testing.assert_array_equal(a[..., COL["CLIP"]], b[..., COL["CLIP"]])


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("eta,use_clipped,clip", [(0.0, False, math.inf), (1.0, True, 1.0), (0.5, False, 2.0)])
def test_ddim_rows_float64_match_the_diffusers_path(prediction_type, eta, use_clipped, clip):
    prev = T - 50
    a64, p64 = AC32.double().numpy()[T], AC32.double().numpy()[prev]
    ours = ddim_rows(a64, p64, eta=eta, prediction_type=prediction_type, clip=clip, use_clipped_model_output=use_clipped)
    dropin = ddim_rows_from(ddim_scalars(AC32[T], AC32[prev], eta), prediction_type=prediction_type, clip=clip,
                            use_clipped_model_output=use_clipped)
    # the drop-in rounds its scalars in float32 like diffusers: sqrt(1 - a_prev - sigma^2) cancels at eta = 1
    # (6e-5 relative at t = 50), which is why the drop-ins do that and native plans do not
    _close(ours, dropin, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"])
def test_ddpm_rows_float64_match_the_diffusers_path(prediction_type, variance_type):
    prev = T - 50
    a64, p64 = AC32.double().numpy()[T], AC32.double().numpy()[prev]
    ours = ddpm_rows(a64, p64, prediction_type=prediction_type, variance_type=variance_type, clip=1.0)
    dropin = ddpm_rows_from(ddpm_scalars(AC32[T], AC32[prev], variance_type), prediction_type=prediction_type,
                            clip=1.0)
    _close(ours, dropin, rtol=2e-5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_native_ddim_loop_converges_to_the_ode_solution(backend):
    """schedules -> ddim_rows -> fused_step with float64 rows on float64 data: first order, no diffusers."""
    if not backend_available(backend):
        pytest.skip(f"{backend} not built")
    sched = DiscreteSchedule.from_betas(make_betas("linear"))
    mu, s = 0.4, 0.7
    errs = []
    for n in (10, 20, 50, 100):
        ts = diffusers_timesteps(1000, n, "trailing")
        prev = np.append(ts[1:], 0)  # land on alpha_bar_0
        rows = torch.from_numpy(ddim_rows(sched.alphas_cumprod[ts], sched.alphas_cumprod[prev]))
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        a0 = sched.alphas_cumprod[ts[0]]
        const = (x - math.sqrt(a0) * mu) / math.sqrt(a0 * s * s + 1 - a0)
        for k, t in enumerate(ts):
            a = sched.alphas_cumprod[t]
            eps = math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * s * s + 1 - a)
            x = fused_step(x, eps, rows[k], backend=backend)
        a_end = sched.alphas_cumprod[0]
        exact = math.sqrt(a_end) * mu + math.sqrt(a_end * s * s + 1 - a_end) * const
        errs.append(((x - exact).norm() / exact.norm()).item())
    slope = -np.polyfit(np.log([10, 20, 50, 100]), np.log(errs), 1)[0]
    assert abs(slope - 1.0) <= 0.2, (slope, errs)
