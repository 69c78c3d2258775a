"""Gradients through the public ops: torch.autograd.gradcheck (finite differences in float64, an oracle independent
of the backward formula) on every backend that takes float64, through fused_step's registered backward."""
import math

import pytest
import torch

from helpers import backend_params
from pydiff.ops import COL, NCOEF, fused_step, sumsq

FLOAT64_BACKENDS = [b for b in backend_params(("reference", "cpu"))]

# (n_hist, w_out, clip, noise kind, m2, var, table+index)
CASES = {
    "plain": (0, False, False, None, False, False, False),
    "w_out_clip": (0, True, True, None, False, False, True),
    "hist3_noise": (3, True, False, "tensor", False, False, True),
    "cfg_m2_philox": (1, True, True, "seed", True, False, False),
    "var_noise": (0, False, False, "tensor", False, True, True),
    "var_m2_rng": (2, True, False, "rng", True, True, False),
}


def _setup(case, B=2, shape=(3, 4), seed=0):
    n_hist, use_w, clip, noise, use_m2, use_var, use_index = CASES[case]
    g = torch.Generator().manual_seed(seed)
    sh = (B,) + shape
    R = 3 if use_index else B
    coef = torch.randn(R, NCOEF, generator=g, dtype=torch.float64)
    coef[:, COL["CLIP"]] = 0.8 if clip else math.inf
    coef[:, COL["VA"]] *= 0.3
    coef[:, COL["VB"]] *= 0.3
    index = torch.tensor([2, -3]) if use_index else None
    tensors = {"x": torch.randn(sh, generator=g, dtype=torch.float64),
               "m": torch.randn(sh, generator=g, dtype=torch.float64)}
    for k in range(n_hist):
        tensors[f"h{k}"] = torch.randn(sh, generator=g, dtype=torch.float64)
    if noise == "tensor":
        tensors["noise"] = torch.randn(sh, generator=g, dtype=torch.float64)
    if use_m2:
        tensors["m2"] = torch.randn(sh, generator=g, dtype=torch.float64)
    if use_var:
        tensors["var"] = torch.randn(sh, generator=g, dtype=torch.float64)
    kw = {"seed": 1234} if noise == "seed" else {"rng": torch.tensor([5, -6])} if noise == "rng" else {}
    return coef, index, tensors, n_hist, use_w, kw


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_fused_step(case, backend):
    coef, index, tensors, n_hist, use_w, kw = _setup(case)
    names = list(tensors)

    def f(*args):
        t = dict(zip(names, args))
        w = torch.empty_like(t["x"]) if use_w else None
        out = fused_step(t["x"], t["m"], coef, index=index, w_out=w, hist=[t[f"h{k}"] for k in range(n_hist)],
                         noise=t.get("noise"), m2=t.get("m2"), var=t.get("var"), backend=backend, **kw)
        return (out, w) if use_w else out

    inputs = tuple(v.clone().requires_grad_() for v in tensors.values())
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_gradcheck_threshold_constant(backend):
    """A (detached) dynamic-thresholding scale masks and rescales the gradient of w."""
    g = torch.Generator().manual_seed(3)
    coef = torch.randn(NCOEF, generator=g, dtype=torch.float64)
    x = torch.randn(2, 9, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 9, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.7, 1.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, m: fused_step(x, m, coef, threshold=s, backend=backend), (x, m))


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_gradient_matches_autograd_of_plain_torch(backend):
    """DDIM's update written in plain torch vs the same update as one fused step: equal gradients."""
    a, a_prev = 0.6, 0.8
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    ref = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    coef = torch.zeros(NCOEF, dtype=torch.float64)
    coef[COL["S"]], coef[COL["P"]], coef[COL["Q"]] = 1 / math.sqrt(a), 1.0, -math.sqrt(1 - a)
    coef[COL["CLIP"]], coef[COL["B0"]], coef[COL["D"]] = math.inf, math.sqrt(a_prev), math.sqrt(1 - a_prev)
    coef[COL["O"]] = 1.0
    got = fused_step(x, eps, coef, backend=backend)
    go = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, (x, eps), go)
    grads = torch.autograd.grad(got, (x, eps), go)
    for e, g in zip(expected, grads):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_float32_gradients_flow_on_cpu():
    x = torch.randn(2, 4, 8, requires_grad=True)
    coef = torch.zeros(NCOEF)
    coef[COL["A"]], coef[COL["O"]] = 2.0, 1.0
    y = fused_step(x, torch.zeros_like(x), coef)
    assert y.requires_grad
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_no_grad_mode_records_nothing():
    x = torch.randn(2, 4, requires_grad=True)
    coef = torch.zeros(NCOEF)
    coef[COL["A"]], coef[COL["O"]] = 1.0, 1.0
    with torch.no_grad():
        assert not fused_step(x, x.detach(), coef).requires_grad


def test_double_backward_is_refused():
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    coef = torch.zeros(NCOEF, dtype=torch.float64)
    coef[COL["A"]], coef[COL["O"]] = 1.5, 1.0
    y = fused_step(x, torch.zeros_like(x), coef)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="has no backward"):
        gx.sum().backward()


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
def test_gradcheck_sumsq(backend):
    a = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sumsq(a, b, backend=backend), (a, b))
