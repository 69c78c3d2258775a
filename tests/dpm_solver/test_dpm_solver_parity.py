"""pydiff.dpm_solver against an independent float64 transcription of the papers (pydiff.testing.dpm_solver).

Data: closed-form Gaussian (pydiff.testing.gaussian), so the model is the exact noise prediction; both
sides get the same x_T. The reference evaluates the schedule in Python floats and the updates in their
published, difference form; pydiff runs its float64 plans through fused steps.

Tolerances:
* float64 data: 1e-9 relative L2 on the whole grid (the two sides compute the same numbers).
* float32 data: 1e-4 relative L2, strictly on the 324-case grid. The noise-form ('dpmsolver') singlestep-3
  cases on the discrete cosine schedule are ill-conditioned in float32: their first step multiplies x by
  alpha_t/alpha_s ~ 3000 and cancels it against the noise term, so merely rounding the model's input and
  output to float32 moves the reference's own result by 4-6e-5 (its "float32 floor"). With the output scale
  O (docs/ops.md) the worst grid case is 9.9e-5 (2026-11-26; 1.35e-4 without O) — inside the bound, with
  little room. The option cases (adaptive included) are strict too.
"""
import itertools

import pytest
import torch

from pydiff.testing import gaussian as go
from helpers import cosine_alphas_cumprod, backend_params, rel_l2
from pydiff.dpm_solver import DPM_Solver, NoiseScheduleVP, model_wrapper
from pydiff.testing import dpm_solver as R

SHAPE = (2, 3, 4, 4)
MU, S = go.make_data(SHAPE, seed=1)
N_TRAIN = 1000


def _cosine_alphas_cumprod(n=N_TRAIN):
    return cosine_alphas_cumprod(n, dtype=torch.float32)


_BETAS = torch.linspace(1e-4, 0.02, N_TRAIN, dtype=torch.float32)
_ACP = _cosine_alphas_cumprod()
SCHEDULES = {
    "discrete_linear": (lambda: NoiseScheduleVP("discrete", betas=_BETAS),
                        lambda: R.DiscreteSchedule(betas=_BETAS.double())),
    "discrete_cosine": (lambda: NoiseScheduleVP("discrete", alphas_cumprod=_ACP),
                        lambda: R.DiscreteSchedule(alphas_cumprod=_ACP.double())),
    "linear": (lambda: NoiseScheduleVP("linear"), lambda: R.LinearSchedule()),
}
_CACHE = {}


def schedules(name):
    if name not in _CACHE:
        ours, ref = SCHEDULES[name]
        _CACHE[name] = (ours(), ref())
    return _CACHE[name]


def x_T(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64).to(dtype)


def _alpha_sigma(rs, t, like):
    ts = [float(v) for v in t.double().reshape(-1)]
    a = torch.tensor([rs.alpha(v) for v in ts], dtype=torch.float64)
    s = torch.tensor([rs.sigma(v) for v in ts], dtype=torch.float64)
    return go.bcast(a, like), go.bcast(s, like)


def exact_eps_model(rs, mu=MU, s=S):
    """The model for pydiff: ``model_fn(x, t)`` with t of shape (B,), exact in float64, returned in x's dtype."""
    def model_fn(x, t):
        a, sg = _alpha_sigma(rs, t, x)
        return go.eps_pred(x.double(), a, sg, mu, s).to(x.dtype)
    return model_fn


def exact_eps_ref(rs, mu=MU, s=S):
    """The model for the reference: ``noise_fn(x, t)`` with a float t, exact in float64."""
    def noise_fn(x, t):
        return go.eps_pred(x, rs.alpha(t), rs.sigma(t), mu, s)
    return noise_fn


def check(ours, ref, dtype, tol32=1e-4):
    err = rel_l2(ours, ref)
    assert err < (1e-9 if dtype == torch.float64 else tol32), err
    return err


GRID = list(itertools.product(["dpmsolver++", "dpmsolver"], ["singlestep", "singlestep_fixed", "multistep"],
                              [1, 2, 3], ["time_uniform", "logSNR", "time_quadratic"], [10, 15]))


def _grid_ids(p):
    return "-".join(str(v) for v in p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("alg,method,order,skip,steps", GRID, ids=[_grid_ids(p) for p in GRID])
def test_parity_grid(sched, alg, method, order, skip, steps, dtype):
    ns, rs = schedules(sched)
    x = x_T(dtype)
    solver = DPM_Solver(exact_eps_model(rs), ns, algorithm_type=alg, backend="reference")
    ours = solver.sample(x, steps=steps, order=order, skip_type=skip, method=method)
    kw = dict(steps=steps, order=order, skip_type=skip, method=method, algorithm_type=alg)
    ref = R.sample(exact_eps_ref(rs), rs, x.double(), **kw)
    check(ours, ref, dtype)  # strict: the 1e-4 in float32, 1e-9 in float64


# ------------------------------------------------------------------------------------------------ options
OPTION_CASES = {
    # name: (sample kwargs, schedule)
    "taylor-singlestep3": (dict(method="singlestep", order=3, steps=15, solver_type="taylor"), "linear"),
    "taylor-singlestep2": (dict(method="singlestep_fixed", order=2, steps=10, solver_type="taylor"), "discrete_linear"),
    "taylor-multistep2": (dict(method="multistep", order=2, steps=10, solver_type="taylor"), "discrete_cosine"),
    "taylor-multistep3": (dict(method="multistep", order=3, steps=15, solver_type="taylor",
                               skip_type="logSNR"), "linear"),
    "lower_order_final-6": (dict(method="multistep", order=3, steps=6, lower_order_final=True), "discrete_linear"),
    "no_lower_order_final-6": (dict(method="multistep", order=3, steps=6, lower_order_final=False),
                               "discrete_linear"),
    "no_lower_order_final-15": (dict(method="multistep", order=2, steps=15, lower_order_final=False), "linear"),
    "denoise_to_zero-multistep": (dict(method="multistep", order=2, steps=10, denoise_to_zero=True), "discrete_cosine"),
    "denoise_to_zero-singlestep": (dict(method="singlestep", order=3, steps=10, denoise_to_zero=True,
                                        skip_type="logSNR"), "linear"),
    "adaptive-2": (dict(method="adaptive", order=2), "linear"),
    "adaptive-2-tol": (dict(method="adaptive", order=2, atol=1e-3, rtol=1e-2, solver_type="taylor"),
                       "discrete_cosine"),
    "adaptive-3": (dict(method="adaptive", order=3, solver_type="taylor"), "discrete_linear"),
    "adaptive-3-tol": (dict(method="adaptive", order=3, atol=0.02, rtol=0.1), "discrete_cosine"),
    "warmup-singlestep": (dict(method="multistep", order=3, steps=12, warmup="singlestep"), "linear"),
    "third_order-consistent": (dict(method="multistep", order=3, steps=12, third_order="consistent",
                                    skip_type="logSNR"), "discrete_linear"),
    "t_range": (dict(method="multistep", order=2, steps=8, t_start=0.7, t_end=0.01), "discrete_linear"),
    # DPM-Solver-fast with fewer steps than its order: the authors' singlestep runs the orders [1] / [2]
    "singlestep-3-steps1": (dict(method="singlestep", order=3, steps=1), "discrete_linear"),
    "singlestep-3-steps2": (dict(method="singlestep", order=3, steps=2, skip_type="logSNR"), "linear"),
    "singlestep-2-steps1": (dict(method="singlestep", order=2, steps=1), "discrete_cosine"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_parity_options(case, alg, dtype):
    """Adaptive included in float32: its error estimate x_high - x_low is computed from coefficient
    differences (pydiff/runtime/adaptive.py), so float32 takes the same steps as float64 (before: 2e-2 to 2e-1 off)."""
    kwargs, sched = OPTION_CASES[case]
    ns, rs = schedules(sched)
    x = x_T(dtype, seed=2)
    ours = DPM_Solver(exact_eps_model(rs), ns, algorithm_type=alg, backend="reference").sample(x, **kwargs)
    ref = R.sample(exact_eps_ref(rs), rs, x.double(), algorithm_type=alg, **kwargs)
    check(ours, ref, dtype)


def test_adaptive_reports_nfe():
    ns, rs = schedules("linear")
    solver = DPM_Solver(exact_eps_model(rs), ns, backend="reference")
    solver.sample(x_T(torch.float64), method="adaptive", order=3)
    assert solver.adaptive_nfe is not None and solver.adaptive_nfe % 3 == 0 and solver.adaptive_nfe > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("method,order", [("multistep", 2), ("singlestep", 3), ("multistep", 3)])
@pytest.mark.parametrize("ratio,max_val", [(0.995, 1.0), (0.9, 1.5), (0.8, 0.7)])
def test_parity_dynamic_thresholding(method, order, ratio, max_val, dtype):
    ns, rs = schedules("discrete_linear")
    mu, s = go.make_data(SHAPE, seed=3, mu_range=(-2.0, 2.0), s_range=(0.05, 0.6))  # |x0| > 1 often
    x = x_T(dtype, seed=4)
    solver = DPM_Solver(exact_eps_model(rs, mu, s), ns, algorithm_type="dpmsolver++",
                        correcting_x0_fn="dynamic_thresholding", thresholding_max_val=max_val,
                        dynamic_thresholding_ratio=ratio, backend="reference")
    kw = dict(steps=10, order=order, method=method, skip_type="time_uniform", algorithm_type="dpmsolver++")
    ours = solver.sample(x, **{k: v for k, v in kw.items() if k != "algorithm_type"})
    ref = R.sample(exact_eps_ref(rs, mu, s), rs, x.double(), thresholding=(ratio, max_val), **kw)
    plain = R.sample(exact_eps_ref(rs, mu, s), rs, x.double(), **kw)
    assert rel_l2(plain, ref) > 1e-3, "thresholding must be active in this test"
    check(ours, ref, dtype)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_parity_dynamic_thresholding_denoise_to_zero(alg):
    ns, rs = schedules("linear")
    mu, s = go.make_data(SHAPE, seed=3, mu_range=(-2.0, 2.0), s_range=(0.05, 0.6))
    x = x_T(torch.float64, seed=4)
    solver = DPM_Solver(exact_eps_model(rs, mu, s), ns, algorithm_type=alg,
                        correcting_x0_fn="dynamic_thresholding", backend="reference")
    ours = solver.sample(x, steps=8, order=2, denoise_to_zero=True)
    ref = R.sample(exact_eps_ref(rs, mu, s), rs, x, steps=8, order=2, denoise_to_zero=True, algorithm_type=alg,
                   thresholding=(0.995, 1.0))
    check(ours, ref, torch.float64)


# ------------------------------------------------------------------------------------------------ model_wrapper
def _t_continuous(ns, t_input):
    return t_input / 1000.0 + 1.0 / ns.total_N if ns.schedule == "discrete" else t_input


def raw_model(ns, rs, model_type, mu_of=None):
    """A network of ``model_type`` for the oracle; with ``mu_of(cond)`` it is conditional (classifier-free)."""
    pred = go.PREDICTIONS[model_type]

    def model(x, t_input, cond=None, scale_kw=1.0):
        a, sg = _alpha_sigma(rs, _t_continuous(ns, t_input), x)
        mu = MU if cond is None else mu_of(cond)
        return (scale_kw * pred(x.double(), a, sg, mu, S)).to(x.dtype)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("model_type", ["noise", "x_start", "v", "score"])
@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("sched", ["discrete_linear", "linear"])
def test_parity_model_wrapper_types(sched, alg, model_type, dtype):
    ns, rs = schedules(sched)
    model_fn = model_wrapper(raw_model(ns, rs, model_type), ns, model_type=model_type,
                             model_kwargs={"scale_kw": 1.0})
    x = x_T(dtype, seed=5)
    ours = DPM_Solver(model_fn, ns, algorithm_type=alg, backend="reference").sample(
        x, steps=10, order=2, skip_type="logSNR", method="multistep")
    ref = R.sample(exact_eps_ref(rs), rs, x.double(), steps=10, order=2, skip_type="logSNR",
                   method="multistep", algorithm_type=alg)
    check(ours, ref, dtype)


def _mu_of(cond):
    return MU + 0.5 * go.bcast(cond.double(), MU.unsqueeze(0).expand(cond.shape[0], *MU.shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("model_type", ["noise", "v"])
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_parity_classifier_free_guidance(alg, scale, model_type, dtype):
    ns, rs = schedules("discrete_linear")
    B = SHAPE[0]
    cond, uncond = torch.ones(B), torch.zeros(B)
    model_fn = model_wrapper(raw_model(ns, rs, model_type, _mu_of), ns, model_type=model_type,
                             guidance_type="classifier-free", condition=cond, unconditional_condition=uncond,
                             guidance_scale=scale)
    x = x_T(dtype, seed=6)
    ours = DPM_Solver(model_fn, ns, algorithm_type=alg, backend="reference").sample(
        x, steps=10, order=3, method="singlestep", skip_type="logSNR")
    mu_c, mu_u = _mu_of(cond), _mu_of(uncond)

    def guided(x, t):
        a, sg = rs.alpha(t), rs.sigma(t)
        e_u, e_c = go.eps_pred(x, a, sg, mu_u, S), go.eps_pred(x, a, sg, mu_c, S)
        return e_u + scale * (e_c - e_u)
    ref = R.sample(guided, rs, x.double(), steps=10, order=3, method="singlestep", skip_type="logSNR",
                   algorithm_type=alg)
    check(ours, ref, dtype)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_parity_classifier_guidance(alg):
    ns, rs = schedules("linear")
    target = torch.full(SHAPE[1:], 0.5, dtype=torch.float64)
    k, scale = 0.3, 2.0

    def classifier_fn(x, t_input, cond):
        return -0.5 * k * ((x - cond) ** 2).reshape(x.shape[0], -1).sum(1)
    model_fn = model_wrapper(raw_model(ns, rs, "noise"), ns, guidance_type="classifier", condition=target,
                             classifier_fn=classifier_fn, guidance_scale=scale)
    x = x_T(torch.float64, seed=7)
    ours = DPM_Solver(model_fn, ns, algorithm_type=alg, backend="reference").sample(x, steps=10, order=2)

    def guided(x, t):
        return go.eps_pred(x, rs.alpha(t), rs.sigma(t), MU, S) - scale * rs.sigma(t) * (-k * (x - target))
    ref = R.sample(guided, rs, x, steps=10, order=2, algorithm_type=alg)
    check(ours, ref, torch.float64)


@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_parity_continuous_cosine(alg):
    ns, rs = NoiseScheduleVP("cosine"), R.CosineSchedule()
    x = x_T(torch.float32, seed=8)
    for method, order in [("multistep", 3), ("singlestep", 2)]:
        ours = DPM_Solver(exact_eps_model(rs), ns, algorithm_type=alg, backend="reference").sample(
            x, steps=12, order=order, method=method, skip_type="logSNR")
        ref = R.sample(exact_eps_ref(rs), rs, x.double(), steps=12, order=order, method=method,
                       skip_type="logSNR", algorithm_type=alg)
        check(ours, ref, torch.float32)


COMPILED_CASES = {
    "multistep3++": (dict(algorithm_type="dpmsolver++"), dict(method="multistep", order=3, steps=12), None),
    "singlestep3": (dict(algorithm_type="dpmsolver"), dict(method="singlestep", order=3, steps=12), None),
    "singlestep_fixed2-taylor": (dict(algorithm_type="dpmsolver++"),
                                 dict(method="singlestep_fixed", order=2, steps=12, solver_type="taylor"), None),
    "adaptive2": (dict(algorithm_type="dpmsolver++"), dict(method="adaptive", order=2), None),
    "thresholding": (dict(algorithm_type="dpmsolver++", correcting_x0_fn="dynamic_thresholding",
                          thresholding_max_val=1.3), dict(method="multistep", order=2, steps=10), (0.995, 1.3)),
}


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", list(COMPILED_CASES))
def test_parity_compiled_backend(backend, dtype, case):
    solver_kw, sample_kw, thresholding = COMPILED_CASES[case]
    ns, rs = schedules("discrete_linear")
    mu, s = go.make_data(SHAPE, seed=3, mu_range=(-2.0, 2.0), s_range=(0.05, 0.6))
    x = x_T(dtype, seed=9)
    ours = DPM_Solver(exact_eps_model(rs, mu, s), ns, backend=backend, **solver_kw).sample(
        x, skip_type="logSNR", **sample_kw)
    ref = R.sample(exact_eps_ref(rs, mu, s), rs, x.double(), skip_type="logSNR", thresholding=thresholding,
                   algorithm_type=solver_kw["algorithm_type"], **sample_kw)
    check(ours, ref, dtype)
