"""The ops as PyTorch operators: torch.library.opcheck, torch.compile(fullgraph=True), DLPack arrays, and the
rules of the eager shortcut (pydiff/ops/library.py)."""
import math

import numpy as np
import pytest
import torch

from pydiff.ops import COL, NCOEF, dynamic_threshold, fused_step, philox_normal, sumsq
from pydiff.ops.dynamic_threshold import dynamic_threshold_op
from pydiff.ops.fused_step import fused_step_functional_op, fused_step_op
from pydiff.ops.library import eager
from pydiff.ops.philox import philox_normal_op
from pydiff.ops.sumsq import sumsq_op

# opcheck scripts the op with torch.jit internally, which warns of its own deprecation
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _inputs(B=3, shape=(2, 5), dtype=torch.float32, seed=0, R=4):
    g = torch.Generator().manual_seed(seed)
    sh = (B,) + shape
    t = {k: torch.randn(sh, generator=g).to(dtype) for k in ("x", "m", "h1", "h2", "z", "m2", "v")}
    coef = torch.randn(R, NCOEF, generator=g, dtype=torch.float64)
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.5
    coef[:, COL["VA"]] *= 0.3
    coef[:, COL["VB"]] *= 0.3
    t["coef"] = coef.to(torch.float64 if dtype == torch.float64 else torch.float32)
    t["index"] = torch.tensor([0, R - 1, -2][:B] + [1] * max(0, B - 3))
    t["s"] = torch.rand(B, generator=g, dtype=t["coef"].dtype) + 1.0
    return t


# (index, w_out, hist, noise kind, threshold, m2, var)
FUSED_CASES = {
    "plain": (False, False, 0, None, False, False, False),
    "table_w_hist_noise": (True, True, 2, "tensor", False, False, False),
    "seed_threshold": (False, True, 1, "seed", True, False, False),
    "rng_m2_var": (True, True, 0, "rng", False, True, True),
    "uint64_seed": (True, False, 0, "seed_high", False, True, False),
}


def _fused_args(case, t, out, w):
    use_index, use_w, n_hist, noise, thresh, use_m2, use_var = FUSED_CASES[case]
    coef = t["coef"] if use_index else t["coef"][0:1]
    seed = {"seed": 12345, "seed_high": (1 << 63) + 7 - (1 << 64)}.get(noise)
    rng = torch.tensor([3, 9]) if noise == "rng" else None
    return (t["x"], t["m"], coef, t["index"] if use_index else None, 1 if use_index else 0, 0, out,
            w if use_w else None, [t["h1"], t["h2"]][:n_hist], t["z"] if noise == "tensor" else None, seed, 5, rng,
            t["s"] if thresh else None, t["m2"] if use_m2 else None, t["v"] if use_var else None, None)


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_fused_step(case, dtype):
    t = _inputs(dtype=dtype)
    out, w = torch.empty_like(t["x"]), torch.empty_like(t["x"])
    torch.library.opcheck(fused_step_op, _fused_args(case, t, out, w))


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_opcheck_fused_step_functional_with_grad(case):
    t = _inputs(dtype=torch.float64)
    args = list(_fused_args(case, t, None, None))
    del args[6:8]  # the functional form has no out / w_out
    for k in (0, 1):
        args[k] = args[k].clone().requires_grad_()
    args.insert(-1, bool(FUSED_CASES[case][1]))  # want_w
    torch.library.opcheck(fused_step_functional_op, tuple(args))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("source", ["b", "seed", "rng", "none"])
def test_opcheck_sumsq(source, grad):
    t = _inputs()
    a = t["x"].clone().requires_grad_(grad)
    b = t["m"].clone().requires_grad_(grad) if source == "b" else None
    seed = 77 if source == "seed" else None
    rng = torch.tensor([1, -2]) if source == "rng" else None
    torch.library.opcheck(sumsq_op, (a, b, seed, 4, rng, None))


@pytest.mark.parametrize("with_model", [False, True])
def test_opcheck_dynamic_threshold(with_model):
    t = _inputs()
    if with_model:
        args = (t["x"], t["m"], t["coef"], t["index"], 1, 0, t["m2"], 3, 4, 0.25, 3.0, None)
    else:
        args = (t["x"], None, None, None, 0, 0, None, 3, 4, 0.25, 3.0, None)
    torch.library.opcheck(dynamic_threshold_op, args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_opcheck_philox_normal(dtype):
    out = torch.empty(3, 7, dtype=dtype)
    torch.library.opcheck(philox_normal_op, (out, -5, 2, None, None))
    torch.library.opcheck(philox_normal_op, (out, None, 2, torch.tensor([4, 5]), None))


def _every_op(x, m, h, z, coef, index, rng):
    w = torch.empty_like(x)
    s = dynamic_threshold(x, m, coef, index=index, ratio=0.9, max_val=3.0)
    y = fused_step(x, m, coef, index=index, w_out=w, hist=(h,), noise=z, threshold=s)
    q = sumsq(y, w)
    n = philox_normal(x.shape, rng=rng, offset=7)
    y2 = fused_step(y, w, coef, index=index, rng=rng, offset=3, m2=n)
    q2 = sumsq(y2, seed=5)
    return y, w, q[0], q[1], n, y2, s, q2[1]


def test_compile_fullgraph_every_op():
    torch._dynamo.reset()
    t = _inputs(B=3, shape=(4, 6))
    args = (t["x"], t["m"], t["h1"], t["z"], t["coef"], t["index"], torch.tensor([11, 12]))
    expected = _every_op(*args)
    explain = torch._dynamo.explain(_every_op)(*args)
    assert explain.graph_break_count == 0, explain.break_reasons
    got = torch.compile(_every_op, fullgraph=True)(*args)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_compile_aliasing_outputs():
    """``out=x`` and ``w_out=model_output`` (a drop-in's in-place history) under functionalization."""
    torch._dynamo.reset()
    t = _inputs()
    coef, index = t["coef"], torch.tensor(1)

    def f(x, m):
        x, m = x.clone(), m.clone()
        fused_step(x, m, coef, index=index, out=x, w_out=m)
        fused_step(x, m, coef, index=index, out=x, w_out=m, hist=(m,))
        return x, m

    expected = f(t["x"], t["m"])
    got = torch.compile(f, fullgraph=True)(t["x"], t["m"])
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_compile_cpu_index_out_of_range_still_raises():
    """The CPU index rule needs the index values: the implementation checks them when the graph runs."""
    torch._dynamo.reset()
    t = _inputs()
    f = torch.compile(lambda x, m, i: fused_step(x, m, t["coef"], index=i), fullgraph=True)
    f(t["x"], t["m"], torch.tensor(1))
    with pytest.raises(IndexError, match="out of range"):
        f(t["x"], t["m"], torch.tensor(9))


def test_eager_shortcut_conditions():
    x = torch.randn(2, 3)
    assert eager(x)
    assert not eager(torch.nn.Parameter(x))  # a subclass goes through the dispatcher
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert not eager(torch.empty(2, 3))


def test_operator_and_public_function_agree():
    t = _inputs()
    out = torch.empty_like(t["x"])
    args = _fused_args("table_w_hist_noise", t, out, torch.empty_like(t["x"]))
    torch.ops.pydiff.fused_step(*args)
    w = torch.empty_like(t["x"])
    got = fused_step(t["x"], t["m"], t["coef"], index=t["index"], w_out=w, hist=(t["h1"], t["h2"]), noise=t["z"],
                     offset=5)
    torch.testing.assert_close(got, out, rtol=0, atol=0)
    torch.testing.assert_close(w, args[7], rtol=0, atol=0)


def test_numpy_arrays_in_and_out():
    t = _inputs()
    x, m, coef = t["x"].numpy(), t["m"].numpy(), t["coef"][0].numpy()
    expected = fused_step(t["x"], t["m"], t["coef"][0])
    got = fused_step(x, m, coef)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, expected.numpy())
    out = np.empty_like(x)
    assert fused_step(x, m, coef, out=out) is out  # the caller's object comes back, written in place
    np.testing.assert_array_equal(out, expected.numpy())
    s = sumsq(x)
    assert isinstance(s, np.ndarray)
    np.testing.assert_allclose(s, (t["x"].double() ** 2).sum(dim=(1, 2)).numpy(), rtol=1e-6)
    thr = dynamic_threshold(x, ratio=0.5)
    assert isinstance(thr, np.ndarray) and thr.shape == (3,)


def test_numpy_array_zero_copy():
    x = np.zeros((2, 4), dtype=np.float32)
    coef = np.zeros(NCOEF, dtype=np.float32)
    coef[COL["A"]], coef[COL["O"]] = 2.0, 1.0
    x[:] = 1.5
    fused_step(x, x, coef, out=x)
    np.testing.assert_array_equal(x, np.full((2, 4), 3.0, dtype=np.float32))


def test_dynamic_threshold_refuses_gradients():
    x = torch.randn(2, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="has no backward"):
        dynamic_threshold(x)
    with torch.no_grad():
        dynamic_threshold(x)  # fine without autograd recording


def test_dynamic_threshold_operator_backward_raises():
    x = torch.randn(2, 8, requires_grad=True)
    s = dynamic_threshold_op(x, None, None, None, 0, 0, None, 3, 4, 0.5, 2.0, None)
    with pytest.raises(RuntimeError, match="has no backward"):
        s.sum().backward()


def test_sumsq_gradient():
    a = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: sumsq(a, b), (a, b))
    assert torch.autograd.gradcheck(lambda a: sumsq(a, seed=3), (a,))


def test_fused_step_coef_or_threshold_requiring_grad_is_refused():
    t = _inputs()
    coef = t["coef"][0].clone().requires_grad_()
    with pytest.raises(ValueError, match="coef or threshold"):
        fused_step(t["x"], t["m"], coef)
    s = t["s"].clone().requires_grad_()
    with pytest.raises(ValueError, match="coef or threshold"):
        fused_step(t["x"], t["m"], t["coef"][0], threshold=s)


def test_nan_free_compile_cases():
    """A clip bound of +inf and a NaN-free table survive tracing unchanged (no constant folding of inf)."""
    torch._dynamo.reset()
    t = _inputs()
    coef = t["coef"][0].clone()
    coef[COL["CLIP"]] = math.inf
    f = torch.compile(lambda x, m: fused_step(x, m, coef), fullgraph=True)
    torch.testing.assert_close(f(t["x"], t["m"]), fused_step(t["x"], t["m"], coef), rtol=0, atol=0)
