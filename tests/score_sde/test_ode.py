"""The probability-flow ODE sampler (``get_ode_sampler``): the scipy path against the float64 transcription
(``pydiff.testing.score_sde.ode_sample``), both solvers against the exact flow of Gaussian data, the
device-resident RK45 against scipy's RK45, the Dormand-Prince tableau, bad input."""
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import integrate

from pydiff.plans import dopri
from pydiff.runtime.rk45 import solve_rk45
from pydiff.score_sde import VESDE, VPSDE, sampling
from pydiff.testing import score_sde as oracle
from sde_cases import KINDS, rel_l2, toy

SHAPE = (4, 2, 3)
SOLVERS = ("scipy", "rk45")


def run_pair(kind, continuous, denoise, tol, N=1000, seed=0, solver="scipy"):
    sde, osde, model = toy(kind, N, continuous)
    torch.manual_seed(seed)
    ref, ref_nfe, sol = oracle.ode_sample(osde, model, SHAPE, denoise=denoise, rtol=tol, atol=tol,
                                          continuous=continuous)
    sampler = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, denoise=denoise, rtol=tol, atol=tol, device="cpu",
                                       solver=solver, continuous=continuous)
    torch.manual_seed(seed)
    model.calls = model.train_calls = 0
    out, nfe = sampler(model)
    return out, nfe, ref, ref_nfe, sol, sampler, model


# ----------------------------------------------------------------------------- the scipy path vs the transcription
# The face evaluates the drift in float32 (the reference's cast), the transcription in float64. At
# rtol = atol = 1e-5 the first error norm is ~3e-5, where float32 rounding of the stage slopes moves it by
# a few percent: the step sequences then drift apart and the NFE differs by 6-18 on VP/sub-VP (the real
# reference differs from the transcription the same way). At 1e-3 the rounding is far below the tolerance:
# same steps, observed <= 3e-6 relative (continuous).
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("denoise", [False, True])
def test_scipy_path_matches_transcription(kind, denoise):
    out, nfe, ref, ref_nfe, sol, sampler, model = run_pair(kind, True, denoise, 1e-3)
    assert out.dtype == torch.float32 and out.shape == SHAPE
    assert nfe == ref_nfe
    assert rel_l2(out, ref) < 1e-4
    assert model.calls == nfe + denoise and model.train_calls == 0  # the model in eval mode
    assert sampler.last_run.n_accepted == len(sol.t) - 1


# A discrete model's labels and score scale are step functions of t: the drift jumps N - 1 times, the error
# estimates of steps across jumps are dominated by them, and the float32 rounding of the state alone moves the
# step times by 1e-5 .. 2e-4 (measured on the transcription with and without the float32 cast): the same NFE
# but 1e-5 .. 8e-4 apart. The row and label plumbing is checked exactly by the float64 RK45 run below.
@pytest.mark.parametrize("kind", ["vp", "ve"])
@pytest.mark.parametrize("denoise", [False, True])
def test_scipy_path_discrete_model(kind, denoise):
    out, nfe, ref, ref_nfe, _, _, _ = run_pair(kind, False, denoise, 1e-2, N=24)
    assert nfe == ref_nfe
    assert rel_l2(out, ref) < 2e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("continuous", [True, False])
def test_rk45_float64_matches_transcription_exactly(kind, continuous):
    """With a float64 latent the device integrator runs in float64: scipy's RK45 on the transcription's drift
    takes the very same steps (same NFE, same accepted count) and ends at the same point."""
    sde, osde, model = toy(kind, 24 if not continuous else 1000, continuous)
    torch.manual_seed(3)
    z = torch.randn(SHAPE, dtype=torch.float64) * (osde.smax if kind == "ve" else 1.0)
    ref, ref_nfe, sol = oracle.ode_sample(osde, model, SHAPE, z=z, denoise=True, continuous=continuous)
    sampler = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, denoise=True, device="cpu", solver="rk45",
                                       continuous=continuous)
    model.calls = model.train_calls = 0
    out, nfe = sampler(model, z=z)
    assert out.dtype == torch.float64
    assert nfe == ref_nfe and sampler.last_run.n_accepted == len(sol.t) - 1
    assert model.calls == nfe + 1 and model.train_calls == 0  # one model call per NFE, plus the denoising one
    # continuous labels (and sub-VP's, always 999 t): the face's are float32 (999 t32 or sigma(t32), the
    # reference's), the transcription's float64: ~1e-8 relative in the drift, 2e-8 .. 2e-6 at the end
    # (discrete VP/VE: 3e-14 .. 2.5e-12)
    assert rel_l2(out, ref) < (1e-5 if continuous or kind == "subvp" else 1e-9)


# ----------------------------------------------------------------------------- the exact flow of Gaussian data
def exact_flow(osde, z, t_end, mu=0.3, s=0.8):
    """The probability-flow map of data N(mu, s^2) (each element independent) from T to ``t_end``.

    The forward SDE ``dx = f(t) x dt + g(t) dw`` has the marginals ``p_t = N(m_t mu, sd_t^2)`` with
    ``sd_t^2 = m_t^2 s^2 + std_t^2`` (``m_t``, ``std_t`` its mean coefficient and std given ``x_0``), and
    ``d(sd_t^2)/dt = 2 f sd_t^2 + g^2``, ``dm_t/dt = f m_t``. The probability flow with the exact score,
    ``dx/dt = f x + g^2 (x - m_t mu) / (2 sd_t^2)``, keeps ``u = (x - m_t mu)/sd_t`` constant:
    ``du/dt = [(x - m mu)(f + g^2/(2 sd^2))]/sd - u (sd'/sd) = 0`` since ``sd'/sd = f + g^2/(2 sd^2)``. So
    ``x_t = m_t mu + (sd_t / sd_T)(x_T - m_T mu)``. VP: ``std^2 = 1 - m^2``; sub-VP: ``std = 1 - m^2``
    (``g^2 = beta (1 - m^4)``); VE: ``m = 1``, ``std = sigma(t)`` (``g^2 = d sigma^2/dt``); the model of
    ``oracle.gaussian_model`` (``wiggle = 0``) is the exact score of these ``p_t``."""
    def m_sd(t):
        t = torch.tensor([t], dtype=torch.float64)
        m = torch.ones(1, dtype=torch.float64) if osde.kind == "ve" else torch.exp(osde.log_mean(t))
        return m.item(), torch.sqrt(m * m * s * s + osde.std(t) ** 2).item()

    mT, sdT = m_sd(osde.T)
    m0, sd0 = m_sd(t_end)
    return m0 * mu + (sd0 / sdT) * (z.double() - mT * mu)


@pytest.mark.parametrize("kind", KINDS)
def test_both_solvers_follow_the_exact_gaussian_flow(kind):
    sde, osde, model = toy(kind, 1000, True, wiggle=0.0)
    torch.manual_seed(1)
    z = sde.prior_sampling((8, 3, 4))
    exact = exact_flow(osde, z, 1e-3)
    rtol = 1e-5
    nfes = {}
    for solver in SOLVERS:
        sampler = sampling.get_ode_sampler(sde, z.shape, lambda x: x, rtol=rtol, atol=rtol, device="cpu",
                                           solver=solver)
        out, nfes[solver] = sampler(model, z=z)
        err = rel_l2(out, exact)
        assert err < 5 * rtol, (solver, err)
    assert nfes["rk45"] <= 1.5 * nfes["scipy"]


# ----------------------------------------------------------------------------- RK45 vs scipy on one problem
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_rk45_agrees_with_scipy(kind, tol):
    sde, _, model = toy(kind, 1000, True)
    torch.manual_seed(2)
    z = sde.prior_sampling(SHAPE)
    runs = {}
    for solver in SOLVERS:
        sampler = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, rtol=tol, atol=tol, device="cpu", solver=solver)
        runs[solver] = sampler(model, z=z)[0], sampler.last_run
    (xs, rs), (xr, rr) = runs["scipy"], runs["rk45"]
    assert rel_l2(xr, xs) < 5 * tol
    assert abs(rr.n_accepted - rs.n_accepted) <= max(1, 0.2 * rs.n_accepted)
    assert rr.nfe == 2 + 6 * (rr.n_accepted + rr.n_rejected)


def test_solve_rk45_is_scipys_rk45_in_float64():
    """``dy/dt = p(t) y + q(t) sin(y)`` in float64: the same steps, NFE and end point as solve_ivp('RK45'),
    backward and forward in time (the step-size rule, the initial step, the error norm, the last step's cut)."""
    torch.manual_seed(0)
    y0 = torch.randn(3, 5, dtype=torch.float64)

    def coef_fn(t):
        t = np.asarray(t, dtype=np.float64)
        return -1.5 + np.sin(3 * t), 0.7 * np.cos(t)

    def fun(t, y):
        p, q = coef_fn(t)
        return p * y + q * np.sin(y)

    for t0, t1, tol in [(1.0, 1e-3, 1e-6), (0.0, 2.0, 1e-4), (2.0, -1.0, 1e-8)]:
        res = solve_rk45(lambda y, t: torch.sin(y), coef_fn, y0, t0, t1, tol, tol)
        sol = integrate.solve_ivp(fun, (t0, t1), y0.reshape(-1).numpy(), rtol=tol, atol=tol, method="RK45")
        assert res.nfev == sol.nfev and res.n_accepted == len(sol.t) - 1 and res.t == t1
        np.testing.assert_allclose(res.y.reshape(-1).numpy(), sol.y[:, -1], rtol=1e-12, atol=1e-14)
        assert res.n_rejected == (sol.nfev - 2) // 6 - res.n_accepted
    assert solve_rk45(lambda y, t: y, coef_fn, y0, 0.5, 0.5, 1e-3, 1e-3).nfev == 0


def test_solve_rk45_raises_on_a_nan_derivative():
    """A NaN derivative at the start raises at once; one that appears later makes every attempt fail (scipy's
    rule shrinks the step by MIN_FACTOR) until the step is below 10 ulp of t."""
    y0 = torch.ones(2, 3, dtype=torch.float64)
    unit = lambda t: (np.zeros_like(t), np.ones_like(t))  # noqa: E731
    with pytest.raises(RuntimeError, match="non-finite"):
        solve_rk45(lambda y, t: y * float("nan"), unit, y0, 1.0, 0.0, 1e-3, 1e-3)
    with pytest.raises(RuntimeError, match="step size"):
        solve_rk45(lambda y, t: -y if t > 0.5 else y * float("nan"), unit, y0, 1.0, 0.0, 1e-3, 1e-3)


def test_rk45_syncs_once_per_attempt(monkeypatch):
    """The host reads one number per attempt (plus two for the first step): count ``Tensor.tolist``."""
    import pydiff.runtime.rk45 as rk
    calls = {"n": 0}
    real = torch.Tensor.tolist

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    y0 = torch.randn(2, 4)
    res = rk.solve_rk45(lambda y, t: torch.tanh(y), lambda t: (-np.ones_like(t), np.ones_like(t)), y0, 1.0, 0.0,
                        1e-5, 1e-5)
    assert calls["n"] == 2 + res.n_accepted + res.n_rejected


# ----------------------------------------------------------------------------- the Dormand-Prince tableau
def test_dormand_prince_tableau():
    C, A, BH, E = dopri.C_EXACT, dopri.A_EXACT, dopri.B_HAT_EXACT, dopri.E_EXACT
    b = A[6]
    for s in range(1, 7):
        assert sum(A[s]) == C[s]  # row sums are the nodes
    # order conditions of the 5th-order weights up to order 4 (and two of order 5), the 4th-order weights up to 4
    for w, order in ((list(b) + [Fraction(0)], 5), (list(BH), 4)):
        assert sum(w) == 1
        assert sum(wi * C[i] for i, wi in enumerate(w)) == Fraction(1, 2)
        assert sum(wi * C[i] ** 2 for i, wi in enumerate(w)) == Fraction(1, 3)
        assert sum(wi * C[i] ** 3 for i, wi in enumerate(w)) == Fraction(1, 4)
        if order == 5:
            assert sum(wi * C[i] ** 4 for i, wi in enumerate(w)) == Fraction(1, 5)
    assert sum(E) == 0 and E[1] == 0 and A[6][1] == 0
    assert max(len(h) for h in dopri.HIST) <= 6


def test_attempt_rows_reproduce_the_stages():
    """Rows applied with plain arithmetic (w = P x + Q m; out = B0 w + sum_k Bk h_k) give the tableau's
    stage states, y_new and the error estimate."""
    from pydiff.ops import COL
    rng = np.random.default_rng(0)
    h, p, q = -0.3, rng.normal(size=6), rng.normal(size=6)
    rows = dopri.attempt_rows(h, p, q)
    y = rng.normal(size=4)
    k = [rng.normal(size=4)] + [None] * 6
    ys = y + h * dopri.A[1, 0] * k[0]
    np.testing.assert_allclose(rows[0, COL["A"]] * y + rows[0, COL["D"]] * k[0], ys)
    for s in range(1, 7):
        r = rows[s]
        m = rng.normal(size=4)
        k[s] = p[s - 1] * ys + q[s - 1] * m
        w = r[COL["P"]] * ys + r[COL["Q"]] * m
        hist = [y if j == "y" else k[j] for j in dopri.HIST[s - 1]]
        out = r[COL["B0"]] * w + sum(r[COL[f"B{n}"]] * v for n, v in enumerate(hist, start=1))
        if s < 6:
            expect = y + h * sum(dopri.A[s + 1, j] * k[j] for j in range(s + 1))
        else:
            expect = h * sum(dopri.E[j] * k[j] for j in range(7))
        np.testing.assert_allclose(out, expect, rtol=1e-13, atol=1e-13)
        ys = out


# ----------------------------------------------------------------------------- the face
def test_get_sampling_fn_ode():
    cfg = types.SimpleNamespace(sampling=types.SimpleNamespace(method="ode", noise_removal=True),
                                device="cpu", training=types.SimpleNamespace(continuous=True))
    sde, _, model = toy("vp", 1000, True)
    fn = sampling.get_sampling_fn(cfg, sde, SHAPE, lambda x: x, 1e-3)
    torch.manual_seed(0)
    x, nfe = fn(model)
    torch.manual_seed(0)
    y, nfe2 = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, denoise=True, device="cpu")(model)
    assert nfe == nfe2 and torch.equal(x, y)


def test_prior_and_generator_match_the_reference_draws():
    """z=None draws the prior as the reference (one randn of the shape); denoising draws one more tensor."""
    sde, osde, model = toy("ve", 1000, True)
    for denoise in (False, True):
        sampler = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, denoise=denoise, rtol=1e-3, atol=1e-3,
                                           device="cpu")
        torch.manual_seed(5)
        x, _ = sampler(model)
        after = torch.randn(2)
        torch.manual_seed(5)
        z = torch.randn(SHAPE) * 50
        if denoise:
            torch.randn(SHAPE)
        assert torch.equal(after, torch.randn(2))
        y, _ = sampler(model, z=z)
        assert torch.equal(x, y)


def test_inverse_scaler_is_applied():
    sde, _, model = toy("vp", 1000, True)
    torch.manual_seed(0)
    z = torch.randn(SHAPE)
    a, _ = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, device="cpu", rtol=1e-3, atol=1e-3)(model, z=z)
    b, _ = sampling.get_ode_sampler(sde, SHAPE, lambda x: 2 * x + 1, device="cpu", rtol=1e-3, atol=1e-3)(model, z=z)
    assert torch.allclose(b, 2 * a + 1)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(rtol=0.0), ValueError, "rtol"),
    (dict(rtol=-1e-5), ValueError, "rtol"),
    (dict(atol=0.0), ValueError, "atol"),
    (dict(atol="1e-5"), TypeError, "atol"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(eps=2.0), ValueError, "eps"),
    (dict(method="euler"), ValueError, "method"),
    (dict(method=3), TypeError, "method"),
    (dict(solver="torchdiffeq"), ValueError, "solver"),
    (dict(solver="rk45", method="RK23"), ValueError, "method"),
    (dict(shape=()), ValueError, "shape"),
    (dict(inverse_scaler=None), TypeError, "inverse_scaler"),
    (dict(sde="vp"), TypeError, "sde"),
])
def test_bad_arguments(kw, exc, match):
    args = dict(sde=VPSDE(N=20), shape=SHAPE, inverse_scaler=lambda x: x, device="cpu")
    args.update(kw)
    with pytest.raises(exc, match=match):
        sampling.get_ode_sampler(**args)


def test_bad_latent():
    sde, _, model = toy("ve", 20, True)
    sampler = sampling.get_ode_sampler(VESDE(N=20), SHAPE, lambda x: x, device="cpu", solver="rk45")
    with pytest.raises(ValueError, match="z"):
        sampler(model, z=torch.zeros(1, 2, 3))
    with pytest.raises(TypeError, match="z"):
        sampler(model, z=np.zeros(SHAPE))
    with pytest.raises(TypeError, match="z"):
        sampler(model, z=torch.zeros(SHAPE, dtype=torch.float16))


def test_other_scipy_methods_run():
    """``method`` is passed to solve_ivp (here RK23 and DOP853): same NFE as the transcription."""
    sde, osde, model = toy("vp", 1000, True)
    for method in ("RK23", "DOP853"):
        torch.manual_seed(0)
        ref, ref_nfe, _ = oracle.ode_sample(osde, model, SHAPE, rtol=1e-3, atol=1e-3, method=method)
        torch.manual_seed(0)
        out, nfe = sampling.get_ode_sampler(sde, SHAPE, lambda x: x, rtol=1e-3, atol=1e-3, method=method,
                                            device="cpu")(model)
        assert nfe == ref_nfe and rel_l2(out, ref) < 1e-4
