"""The float64 row builders (native plans) against the diffusers-validated float32 path, a native DDIM loop
(schedule -> plan -> fused steps, no diffusers involved) against the exact ODE solution, and the plan layer's
conversion table, row builder and finiteness check."""
import math

import numpy as np
import pytest
import torch

from pydiff.ops import COL, NCOEF, backend_available, fused_step
from pydiff.plans import (RowBuilder, check_finite, ddim_rows, ddim_rows_from, ddim_scalars, ddpm_rows, ddpm_rows_from,
                          ddpm_scalars)
from pydiff.plans.conversions import conversion, convert, eps_from_raw
from pydiff.schedules import DiscreteSchedule, diffusers_timesteps, make_betas
from pydiff.testing import gaussian as go

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


# ------------------------------------------------------------------------- conversions, rows, finiteness

KINDS = {"x0": go.x0_pred, "eps": go.eps_pred, "v": go.v_pred, "score": go.score_pred}


@pytest.mark.parametrize("raw", list(KINDS))
@pytest.mark.parametrize("target", list(KINDS))
def test_conversions_map_the_exact_predictions_onto_each_other(raw, target):
    """Every (P, Q, S) of the table against the closed-form Gaussian predictions (pydiff.testing.gaussian)."""
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mu, s = 0.3, 0.8
    for alpha in (0.999, 0.6, 0.02):
        sigma = math.sqrt(1 - alpha * alpha)
        m = KINDS[raw](x, alpha, sigma, mu, s)
        P, Q, S = conversion(target, raw, alpha, sigma)
        torch.testing.assert_close(S * (P * x + Q * m), KINDS[target](x, alpha, sigma, mu, s), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(convert(target, raw, x, m, alpha, sigma), KINDS[target](x, alpha, sigma, mu, s),
                                   rtol=1e-12, atol=1e-12)
    A, D = eps_from_raw(raw, 0.6, 0.8)
    torch.testing.assert_close(A * x + D * KINDS[raw](x, 0.6, 0.8, mu, s), go.eps_pred(x, 0.6, 0.8, mu, s))


def test_conversion_names_and_unknown_types():
    assert conversion("x0", "epsilon", 0.5, 0.75) == conversion("x0", "noise", 0.5, 0.75) == (1.0, -0.75, 2.0)
    assert conversion("eps", "sample", 0.6, 0.8) == conversion("eps", "x_start", 0.6, 0.8)
    with pytest.raises(ValueError, match="model output type 'flow'"):
        conversion("x0", "flow", 0.5, 0.5)


def test_row_builder_scalars_arrays_and_history():
    b = RowBuilder()
    assert b.add(P=1.0, B0=2.0) == 0
    assert b.add(A=np.array([1.0, 2.0, 3.0]), CLIP=1.5) == 1
    assert b.add_update((0.0, 1.0, 1.0), 0.5, 0.25, [0.125, 0.0625], O=2.0) == 4
    t = b.table()
    assert t.shape == (5, NCOEF) and len(b) == 5
    assert t[0, COL["P"]] == 1.0 and t[0, COL["B0"]] == 2.0 and t[0, COL["S"]] == 1.0 and t[0, COL["CLIP"]] == math.inf
    np.testing.assert_array_equal(t[1:4, COL["A"]], [1.0, 2.0, 3.0])
    assert (t[1:4, COL["CLIP"]] == 1.5).all()
    assert (t[4, COL["B1"]], t[4, COL["B2"]], t[4, COL["O"]], t[4, COL["Q"]]) == (0.125, 0.0625, 2.0, 1.0)
    with pytest.raises(ValueError, match="unknown coefficient 'Z'"):
        b.add(Z=1.0)


def test_check_finite_names_the_first_bad_row_and_allows_infinite_clip():
    b = RowBuilder()
    b.add(A=np.array([1.0, np.nan, np.inf]))
    rows = b.table()
    check_finite(rows[:1], "ok")  # CLIP = +inf is not an error
    with pytest.raises(ValueError, match=r"DDIM\(x\) gives non-finite coefficients \(first at step 1\)"):
        check_finite(rows, "DDIM(x)", ["step 0", "step 1", "step 2"])


def test_history_is_limited_to_the_kernels_slots():
    from pydiff.ops.columns import K_MAX
    from pydiff.plans.rows import hist_columns
    assert hist_columns([0.5, 0.25]) == {"B1": 0.5, "B2": 0.25}
    with pytest.raises(ValueError, match=f"at most {K_MAX} history tensors, got {K_MAX + 1}"):
        hist_columns([1.0] * (K_MAX + 1))
