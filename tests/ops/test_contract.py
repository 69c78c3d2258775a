"""The operators themselves (``torch.ops.pydiff.*``) check the normalized signature before a backend reads raw
pointers: a tensor of another shape, dtype or layout raises a ValueError/TypeError naming it (it was read or written
out of bounds before: garbage, or a corrupted heap). Also: outputs never share memory with the side inputs, NumPy
outputs must be writable plain views, in-place outputs and autograd do not mix silently."""
import numpy as np
import pytest
import torch

import pydiff.ops as ops
from pydiff.ops import backend_available

B, N = 3, 8
BACKENDS = ["reference", "cpu"] if backend_available("cpu") else ["reference"]


def _args(**over):
    x = torch.randn(B, N)
    a = dict(x=x, m=torch.randn(B, N), coef=torch.tensor([ops.coef_row(P=1.0, Q=0.5, B0=1.0, A=0.25)],
                                                         dtype=torch.float32),
             index=None, index_stride=0, row_stride=0, out=torch.empty(B, N), w_out=None, hist=[], noise=None,
             seed=None, offset=0, rng=None, threshold=None, m2=None, var=None)
    a.update(over)
    return a


def _call(backend, a):
    return torch.ops.pydiff.fused_step(a["x"], a["m"], a["coef"], a["index"], a["index_stride"], a["row_stride"],
                                       a["out"], a["w_out"], a["hist"], a["noise"], a["seed"], a["offset"], a["rng"],
                                       a["threshold"], a["m2"], a["var"], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_fused_step_runs_when_normalized(backend):
    a = _args()
    _call(backend, a)
    want = ops.fused_step(a["x"], a["m"], a["coef"][0], backend="reference")
    torch.testing.assert_close(a["out"], want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("over,exc,match", [
    (dict(out=torch.empty(1, N)), ValueError, "out has shape"),
    (dict(m=torch.randn(1, N)), ValueError, "model_output has shape"),
    (dict(m=torch.randn(B, N, dtype=torch.float64)), TypeError, "model_output has dtype"),
    (dict(out=torch.empty(B, N, dtype=torch.int32)), TypeError, "out has dtype"),
    (dict(out=torch.empty(N, B).t()), ValueError, "out must be contiguous"),
    (dict(x=torch.randn(N, B).t()), ValueError, "x must be contiguous"),
    (dict(coef=torch.zeros(1, 20, dtype=torch.float64)), TypeError, "coef must be torch.float32"),
    (dict(coef=torch.zeros(1, 7)), ValueError, "coef must have shape"),
    (dict(coef=torch.zeros(0, 20)), ValueError, "coef must have shape|coef has no rows"),
    (dict(row_stride=1), ValueError, "row_stride=1 needs one per sample"),
    (dict(index=torch.zeros(1, dtype=torch.int32)), TypeError, "index must be torch.int64"),
    (dict(index=torch.zeros(2, dtype=torch.int64), index_stride=1), ValueError, "index must have shape"),
    (dict(threshold=torch.ones(B, dtype=torch.float64)), TypeError, "threshold must be torch.float32"),
    (dict(threshold=torch.ones(B + 1)), ValueError, "threshold must have shape"),
    (dict(rng=torch.zeros(3, dtype=torch.int64)), ValueError, "rng must have shape"),
    (dict(noise=torch.randn(B, N), seed=1), ValueError, "either noise or seed"),
    (dict(hist=[torch.randn(B, N - 1)]), ValueError, r"hist\[0\] has shape"),
    (dict(var=torch.randn(B, 1)), ValueError, "var has shape"),
])
def test_raw_fused_step_rejects(backend, over, exc, match):
    with pytest.raises(exc, match=match):
        _call(backend, _args(**over))


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_raw_ops_reject(backend):
    a = torch.randn(B, N)
    with pytest.raises(ValueError, match="b has shape"):
        torch.ops.pydiff.sumsq(a, torch.randn(B, 2), None, 0, None, backend)
    with pytest.raises(ValueError, match="out must be contiguous"):
        torch.ops.pydiff.philox_normal(torch.empty(N, B).t(), 1, 0, None, backend)
    with pytest.raises(ValueError, match="give seed or rng"):
        torch.ops.pydiff.philox_normal(torch.empty(B, N), None, 0, None, backend)
    with pytest.raises(ValueError, match="coef must have shape"):
        torch.ops.pydiff.langevin_step(a, torch.randn(B, N), torch.ones(1, 3), 0, False, torch.empty(B, N), None,
                                       torch.randn(B, N), None, 0, None, backend)
    with pytest.raises(ValueError, match="fewer than coef_stride"):
        torch.ops.pydiff.langevin_step(a, torch.randn(B, N), torch.ones(1, 2), 1, False, torch.empty(B, N), None,
                                       torch.randn(B, N), None, 0, None, backend)
    with pytest.raises(ValueError, match="lo and hi must be ranks"):
        torch.ops.pydiff.dynamic_threshold(a, None, None, None, 0, 0, None, 3, N, 0.5, 1.0, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_never_share_memory_with_side_inputs(backend):
    x = torch.randn(B, N)
    buf = torch.zeros(B, 20)
    buf[0] = torch.tensor(ops.coef_row(P=1.0, B0=1.0))
    with pytest.raises(ValueError, match="out overlaps coef"):  # out's memory holds the coefficient row
        ops.fused_step(x, x, buf[0], out=buf.view(-1)[:B * N].view(B, N), backend=backend)
    thr = torch.ones(B * N)
    with pytest.raises(ValueError, match="overlaps threshold"):
        ops.fused_step(x, x, torch.tensor(ops.coef_row(P=1.0, B0=1.0)), threshold=thr[:B], out=thr.view(B, N),
                       backend=backend)


def test_raw_mutating_ops_refuse_a_gradient():
    x = torch.randn(B, N, requires_grad=True)
    a = _args(x=x)
    with pytest.raises(RuntimeError, match="records no gradient"):
        _call("reference", a)
    with torch.no_grad():
        _call("reference", a)  # no gradient asked: fine
    with pytest.raises(RuntimeError, match="records no gradient"):
        torch.ops.pydiff.langevin_step(x, torch.randn(B, N), torch.ones(1, 2), 0, False, torch.empty(B, N), None,
                                       torch.randn(B, N), None, 0, None, "reference")


def test_in_place_output_under_autograd_is_a_clear_error():
    row = torch.tensor(ops.coef_row(P=1.0, B0=1.0, A=0.5))
    x = torch.randn(B, N, requires_grad=True) * 1.0
    with pytest.raises(ValueError, match="out is x while autograd records"):
        ops.fused_step(x, torch.randn(B, N), row, out=x)
    m = torch.randn(B, N, requires_grad=True) * 1.0
    with pytest.raises(ValueError, match="w_out is model_output while autograd records"):
        ops.fused_step(torch.randn(B, N), m, row, w_out=m)
    y = ops.fused_step(x, torch.randn(B, N), row)  # a new tensor: differentiable
    y.sum().backward()


def test_numpy_outputs_must_be_writable_plain_views():
    x = np.random.default_rng(0).standard_normal((B, N)).astype(np.float32)
    row = ops.coef_row(P=1.0, B0=1.0)
    ro = np.zeros_like(x)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out is a read-only array"):
        ops.fused_step(x, x, row, out=ro)
    assert (ro == 0).all()
    frozen = x.copy()
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match="x is a read-only array"):
        ops.fused_step(frozen, frozen, row, out=frozen)
    with pytest.raises(ValueError, match="negative stride"):
        ops.fused_step(x, x, row, out=np.zeros_like(x)[:, ::-1])
    # a negative-stride input is copied (torch's DLPack importer would end the process)
    got = ops.fused_step(x[:, ::-1], x, row, backend="reference")
    np.testing.assert_allclose(got, x[:, ::-1], rtol=0, atol=0)


def test_argument_rules_of_the_public_ops():
    """One rule for ints (TypeError for another type, ValueError out of range; NumPy ints are ints), reals
    (NumPy floats are reals), shapes and clip bounds."""
    x = torch.randn(B, N)
    row = ops.coef_row(P=1.0, B0=1.0)
    # a negative seed is an int64 bit pattern, as the docstring says: the same stream as its unsigned value
    torch.testing.assert_close(ops.philox_normal((B, N), seed=-1), ops.philox_normal((B, N), seed=2**64 - 1),
                               rtol=0, atol=0)
    torch.testing.assert_close(ops.philox_normal((B, N), seed=5, offset=np.int64(3)),
                               ops.philox_normal((B, N), seed=5, offset=3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="offset must be an int"):
        ops.philox_normal((B, N), seed=1, offset=-1)
    with pytest.raises(ValueError, match="shape must hold non-negative ints"):
        ops.philox_normal((B, -1), seed=1)
    with pytest.raises(ValueError, match="CLIP must be >= 0"):
        ops.coef_row(P=1.0, CLIP=-1.0)
    ops.dynamic_threshold(x, ratio=np.float32(0.9), max_val=np.float64(2.0))
    with pytest.raises(TypeError, match="ratio must be a real number"):
        ops.dynamic_threshold(x, ratio="0.9")
    with pytest.raises(ValueError, match="ratio must be"):
        ops.dynamic_threshold(x, ratio=1.5)
    assert ops.fused_step(x, x, torch.tensor(row)).shape == x.shape

