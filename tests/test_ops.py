"""Every compiled backend against the plain-PyTorch reference, on fresh random inputs of odd sizes.

Outputs are poisoned (NaN) before each call so that an element a kernel fails to write shows up.
"""
import math

import pytest
import torch

from helpers import DTYPES, TOL, backend_device, backend_params, supports_dtype
from pydiff.ops import NCOEF, COL, coef_row, dynamic_threshold, fused_step, philox_normal, sumsq
from pydiff.ops.dynamic_threshold import dynamic_threshold_reference
from pydiff.ops.philox import philox_normal_reference
from pydiff.ops.sumsq import sumsq_reference

SHAPES = [(1, 3, 7, 13), (5, 4, 17, 31), (2, 4, 64, 64), (3,), (7, 1), (4, 257)]
COEF_MODES = ["single", "per_sample", "index_scalar", "index_batch"]
FEATURES = {
    # name: (n_hist, w_out, clip, threshold, noise)
    "plain": (0, False, False, False, None),
    "w_out_clip": (0, True, True, False, None),
    "threshold": (0, True, False, True, None),
    "hist1_noise": (1, False, False, False, "tensor"),
    "hist3_philox": (3, True, True, False, "philox"),
    "hist2_thresh_philox": (2, True, False, True, "philox"),
}


def _skip_unsupported(backend, dtype):
    if not supports_dtype(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")


def _make_coef(mode, B, gen, device, clip):
    R = {"single": 1, "per_sample": B, "index_scalar": 6, "index_batch": 6}[mode]
    coef = torch.randn(R, NCOEF, generator=gen, dtype=torch.float64)
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.3 if clip else math.inf
    index = None
    if mode == "index_scalar":
        index = torch.randint(0, R, (), generator=gen)
    elif mode == "index_batch":
        index = torch.randint(0, R, (B,), generator=gen)
    coef = coef.to(device)
    index = index.to(device) if index is not None else None
    if mode == "single" and torch.rand((), generator=gen) < 0.5:
        coef = coef[0]  # the 1-D form
    return coef, index


def _randn(shape, dtype, gen, device, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _reference_step(x, m, coef, index, w_out, hist, noise, seed, offset, threshold):
    out = torch.full_like(x, float("nan"))
    wo = torch.full_like(x, float("nan")) if w_out else None
    fused_step(x, m, coef, index=index, out=out, w_out=wo, hist=hist, noise=noise, seed=seed, offset=offset,
               threshold=threshold, backend="reference")
    return out, wo


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", COEF_MODES)
@pytest.mark.parametrize("feature", list(FEATURES))
def test_fused_step_matches_reference(backend, dtype, shape, mode, feature):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, mode, feature)) % 2**31)
    n_hist, want_w, clip, want_thresh, noise_kind = FEATURES[feature]
    B = shape[0]
    x = _randn(shape, dtype, gen, device, 2.0)
    m = _randn(shape, dtype, gen, device)
    hist = tuple(_randn(shape, dtype, gen, device) for _ in range(n_hist))
    coef, index = _make_coef(mode, B, gen, device, clip)
    threshold = None
    if want_thresh:
        threshold = (torch.rand(B, generator=gen, dtype=torch.float64) * 2 + 0.5).to(device)
    noise = _randn(shape, dtype, gen, device) if noise_kind == "tensor" else None
    seed = int(torch.randint(0, 2**62, (), generator=gen)) if noise_kind == "philox" else None
    offset = int(torch.randint(0, 2**40, (), generator=gen)) if noise_kind == "philox" else 0

    ref_out, ref_w = _reference_step(x, m, coef, index, want_w, hist, noise, seed, offset, threshold)
    out = torch.full_like(x, float("nan"))
    w_out = torch.full_like(x, float("nan")) if want_w else None
    res = fused_step(x, m, coef, index=index, out=out, w_out=w_out, hist=hist, noise=noise, seed=seed,
                     offset=offset, threshold=threshold, backend=backend)
    assert res is out
    assert not out.isnan().any(), "unwritten or NaN output elements"
    tol = dict(TOL[dtype])
    if noise_kind == "philox" and dtype == torch.float64:
        tol = dict(TOL[torch.float32])  # Philox normals are float32 math (libm rounding differs per backend)
    torch.testing.assert_close(out, ref_out, **tol)
    if want_w:
        assert not w_out.isnan().any()
        torch.testing.assert_close(w_out, ref_w, **TOL[dtype])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_step_aliasing(backend, dtype):
    """out may be x and w_out may be model_output or a history tensor: in-place multistep updates."""
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(7)
    shape = (3, 5, 11, 7)
    x = _randn(shape, dtype, gen, device)
    m = _randn(shape, dtype, gen, device)
    h1, h2 = _randn(shape, dtype, gen, device), _randn(shape, dtype, gen, device)
    coef, _ = _make_coef("per_sample", 3, gen, device, clip=True)
    ref_out, ref_w = _reference_step(x, m, coef, None, True, (h1, h2), None, 5, 9, None)
    x2, m2, h2b = x.clone(), m.clone(), h2.clone()
    fused_step(x2, m2, coef, out=x2, w_out=m2, hist=(h1,), backend=backend)  # out=x, w_out=m
    r1, w1 = _reference_step(x, m, coef, None, True, (h1,), None, None, 0, None)
    torch.testing.assert_close(x2, r1, **TOL[dtype])
    torch.testing.assert_close(m2, w1, **TOL[dtype])
    x3 = x.clone()
    fused_step(x3, m, coef, out=x3, w_out=h2b, hist=(h1, h2b), seed=5, offset=9, backend=backend)  # w_out=h2
    torch.testing.assert_close(x3, ref_out, **TOL[torch.float32 if dtype == torch.float64 else dtype])
    torch.testing.assert_close(h2b, ref_w, **TOL[dtype])


@pytest.mark.parametrize("backend", backend_params())
def test_fused_step_propagates_nan(backend):
    device = backend_device(backend)
    x = torch.ones(2, 9, device=device)
    x[1, 4] = float("nan")
    coef = torch.tensor(coef_row(P=1.0, B0=1.0, CLIP=0.5), device=device)  # out = clamp(x, +-0.5)
    out = fused_step(x, torch.zeros_like(x), coef, backend=backend)
    assert out[1, 4].isnan() and not out[0].isnan().any() and (out[0] == 0.5).all()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (5, 4, 17, 31), (3, 1), (2, 1000)], ids=str)
@pytest.mark.parametrize("source", ["one", "two", "philox"])
def test_sumsq_matches_reference(backend, dtype, shape, source):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, source)) % 2**31)
    a = _randn(shape, dtype, gen, device)
    b = _randn(shape, dtype, gen, device) if source == "two" else None
    seed = 1234567 if source == "philox" else None
    got = sumsq(a, b, seed=seed, offset=3, backend=backend)
    ref = sumsq_reference(a, b, seed, 3)
    got = torch.stack(got) if isinstance(got, tuple) else got[None]
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # sums of N squares: relative error grows like sqrt(N) * eps of the accumulator
    tol = 1e-10 if dtype == torch.float64 and source != "philox" else 2e-5  # Philox normals: float32 math
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (5, 4, 17, 31), (4, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("mode", ["x0_only", "single", "index_batch"])
@pytest.mark.parametrize("ratio", [0.995, 0.5, 1.0])
def test_dynamic_threshold_matches_reference(backend, dtype, shape, mode, ratio):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, mode, ratio)) % 2**31)
    B = shape[0]
    x = _randn(shape, dtype, gen, device, 3.0)
    if mode == "x0_only":
        m = coef = index = None
        args = (x, None, None, None, 0, 0)
    else:
        m = _randn(shape, dtype, gen, device, 3.0)
        coef, index = _make_coef("single" if mode == "single" else "index_batch", B, gen, device, clip=False)
        coef2 = coef.reshape(-1, NCOEF).to(torch.float64 if dtype == torch.float64 else torch.float32)
        args = (x, m, coef2, index, int(index is not None and index.numel() > 1), 0)
    max_val = 2.5
    got = dynamic_threshold(x, m, coef, index=index, ratio=ratio, max_val=max_val, backend=backend)
    ref = dynamic_threshold_reference(*args, ratio, max_val)
    assert got.shape == (B,)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (1000,), (2, 3, 5)], ids=str)
def test_philox_normal_matches_reference(backend, dtype, shape):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    for seed, offset in [(0, 0), (2**64 - 1, 2**64 - 1), (987654321123, 17)]:
        got = philox_normal(shape, seed=seed, offset=offset, dtype=dtype, device=device, backend=backend)
        ref = torch.empty(shape, dtype=dtype, device=device)
        philox_normal_reference(ref, seed, offset)
        # float32 math on every backend (libm rounding differs), then one rounding to dtype
        torch.testing.assert_close(got, ref, **TOL[torch.float32 if dtype == torch.float64 else dtype])


@pytest.mark.parametrize("backend", backend_params())
def test_fused_step_noise_is_philox_normal(backend):
    """The in-kernel noise is exactly philox_normal's tensor: C=1 and nothing else gives z itself."""
    device = backend_device(backend)
    shape = (3, 2, 9, 5)
    coef = torch.tensor(coef_row(C=1.0), device=device)
    x = torch.randn(shape, device=device)
    z = fused_step(x, x, coef, seed=42, offset=5, backend=backend)
    expect = philox_normal(shape, seed=42, offset=5, device=device, backend="reference")
    torch.testing.assert_close(z, expect, atol=2e-5, rtol=2e-5)
    ss_x, ss_z = sumsq(x, seed=42, offset=5, backend=backend)
    torch.testing.assert_close(ss_z, expect.reshape(3, -1).square().sum(1), rtol=2e-5, atol=2e-5)
