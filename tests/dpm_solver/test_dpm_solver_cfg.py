"""``DPM_Solver`` with ``model_wrapper(guidance_type='classifier-free')``: the fused step combines the output pair.

The authors' wrapper semantics: one batched call on ``[x, x]`` with ``[unconditional_condition, condition]``, each
output converted to noise, then ``eps_u + s (eps_c - eps_u)``. pydiff hands the raw pair to the fused step
(``m = out_u``, ``m2 = out_c``, ``M1 = 1 - s``, ``M2 = s``) with the conversion folded into the rows; the two are the
same because the weights sum to 1 and the conversion is affine. Checked against the float64 transcription
(pydiff.testing.dpm_solver) run on the guided noise, and against the same solver combining in torch first.
"""
import pytest
import torch

from pydiff.dpm_solver import DPM_Solver, model_wrapper
from pydiff.dpm_solver.wrapper import WrappedModel
from pydiff.testing import dpm_solver as R
from pydiff.testing import gaussian as go
from helpers import backend_params, rel_l2
from test_dpm_solver_parity import S, SHAPE, _mu_of, check, raw_model, schedules, x_T

SCALE = 2.5


class CountingModel:
    """``raw_model`` counting its calls and the batch each call gets."""

    def __init__(self, fn):
        self.fn, self.batches = fn, []

    def __call__(self, x, t_input, cond=None, **kw):
        self.batches.append(x.shape[0])
        return self.fn(x, t_input, cond, **kw)


class TorchCombined(WrappedModel):
    """The wrapper with the pair path switched off: the solver gets ``out_u + s (out_c - out_u)`` from torch."""

    cfg_pair = False


def wrapped(ns, rs, model_type, scale=SCALE, counting=False):
    B = SHAPE[0]
    model = raw_model(ns, rs, model_type, _mu_of)
    if counting:
        model = CountingModel(model)
    fn = model_wrapper(model, ns, model_type=model_type, guidance_type="classifier-free",
                       condition=torch.ones(B), unconditional_condition=torch.zeros(B), guidance_scale=scale)
    return fn, model


def guided_ref(rs, scale=SCALE):
    """The guided noise for the float64 transcription: ``eps_u + s (eps_c - eps_u)`` (the authors' wrapper)."""
    B = SHAPE[0]
    mu_c, mu_u = _mu_of(torch.ones(B)), _mu_of(torch.zeros(B))

    def guided(x, t):
        a, sg = rs.alpha(t), rs.sigma(t)
        e_u, e_c = go.eps_pred(x, a, sg, mu_u, S), go.eps_pred(x, a, sg, mu_c, S)
        return e_u + scale * (e_c - e_u)
    return guided


METHODS = [("multistep", 1), ("multistep", 2), ("multistep", 3), ("singlestep", 2), ("singlestep", 3),
           ("singlestep_fixed", 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("model_type", ["noise", "x_start", "v", "score"])
@pytest.mark.parametrize("method,order", METHODS)
@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_guided_solver_matches_the_authors_semantics(alg, method, order, model_type, dtype):
    ns, rs = schedules("discrete_linear")
    fn, _ = wrapped(ns, rs, model_type)
    solver = DPM_Solver(fn, ns, algorithm_type=alg, backend="reference")
    assert solver._guidance() == SCALE  # the pair path
    x = x_T(dtype, seed=6)
    ours = solver.sample(x, steps=10, order=order, method=method, skip_type="logSNR")
    ref = R.sample(guided_ref(rs), rs, x.double(), steps=10, order=order, method=method, skip_type="logSNR",
                   algorithm_type=alg)
    check(ours, ref, dtype)


@pytest.mark.parametrize("case", ["adaptive2", "adaptive3", "thresholding", "denoise_to_zero", "callable_x0"])
def test_guided_solver_options(case):
    ns, rs = schedules("linear")
    fn, _ = wrapped(ns, rs, "v")
    x = x_T(torch.float64, seed=7)
    solver_kw, sample_kw, ref_kw = {}, dict(steps=10, order=2), {}
    if case.startswith("adaptive"):
        sample_kw = dict(method="adaptive", order=int(case[-1]))
    elif case == "thresholding":
        solver_kw = dict(correcting_x0_fn="dynamic_thresholding", thresholding_max_val=0.8,
                         dynamic_thresholding_ratio=0.9)
        ref_kw = dict(thresholding=(0.9, 0.8))
    elif case == "denoise_to_zero":
        sample_kw["denoise_to_zero"] = True
    else:
        solver_kw = dict(correcting_x0_fn=lambda x0, t: 0.9 * x0)
        ref_kw = dict(thresholding=lambda x0: 0.9 * x0)
    ours = DPM_Solver(fn, ns, backend="reference", **solver_kw).sample(x, **sample_kw)
    ref = R.sample(guided_ref(rs), rs, x, **sample_kw, **ref_kw)
    check(ours, ref, torch.float64)


@pytest.mark.parametrize("backend", ["reference"] + backend_params())
@pytest.mark.parametrize("method,order", [("multistep", 3), ("singlestep", 3)])
@pytest.mark.parametrize("alg", ["dpmsolver++", "dpmsolver"])
def test_fused_pair_equals_torch_combine(alg, method, order, backend):
    """The same solver on the same backend, the pair combined in the kernel or in torch first: float32 rounding."""
    ns, rs = schedules("discrete_linear")
    fn, _ = wrapped(ns, rs, "x_start")
    x = x_T(torch.float32, seed=8)
    ours = DPM_Solver(fn, ns, algorithm_type=alg, backend=backend).sample(x, steps=10, order=order, method=method)
    fn.__class__ = TorchCombined
    plain = DPM_Solver(fn, ns, algorithm_type=alg, backend=backend)
    assert plain._guidance() is None
    want = plain.sample(x, steps=10, order=order, method=method)
    assert rel_l2(ours, want) < 2e-6


def test_one_batched_call_per_evaluation():
    ns, rs = schedules("discrete_linear")
    fn, model = wrapped(ns, rs, "noise", counting=True)
    DPM_Solver(fn, ns).sample(x_T(torch.float32), steps=6, order=2)
    assert model.batches == [2 * SHAPE[0]] * 6


def test_scale_one_or_no_unconditional_condition_is_one_call():
    """The authors' shortcut: guidance_scale 1 (or no unconditional condition) is a single conditional call,
    no pair."""
    ns, rs = schedules("discrete_linear")
    fn, model = wrapped(ns, rs, "noise", scale=1.0, counting=True)
    solver = DPM_Solver(fn, ns)
    assert solver._guidance() is None
    solver.sample(x_T(torch.float32), steps=4, order=2)
    assert model.batches == [SHAPE[0]] * 4


def test_classifier_free_callable_still_combines_like_the_authors():
    """The wrapper itself (``model_fn(x, t)``, used by the solver's helper methods) is the authors' eps."""
    ns, rs = schedules("discrete_linear")
    fn, _ = wrapped(ns, rs, "v")
    x = x_T(torch.float64)
    t = torch.full((SHAPE[0],), 0.4, dtype=torch.float64)
    ref = guided_ref(rs)(x, 0.4)
    assert rel_l2(fn(x, t), ref) < 1e-7  # 2.6e-9 measured: the discrete schedule's table is float32
