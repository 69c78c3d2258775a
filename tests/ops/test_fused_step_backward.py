"""fused_step_backward: the reference twin against torch.autograd through fused_step_reference (an independent
oracle: plain torch ops differentiated by autograd), then every compiled backend against the reference.

Outputs are poisoned (NaN) before each call so that an element a kernel fails to write shows up.
"""
import itertools
import math

import pytest
import torch

from helpers import ALL_BACKENDS, DTYPES, TOL, backend_device, backend_params, supports_dtype
from pydiff.ops import COL, NCOEF, coef_row
from pydiff.ops import backends as registry
from pydiff.ops._validate import normalize_rows
from pydiff.ops.fused_step import fused_step_reference, select_rows
from pydiff.ops.fused_step_backward import fused_step_backward, fused_step_backward_reference

COEF_MODES = ["single", "per_sample", "index_scalar", "index_batch", "index_negative", "index_view"]
NOISE_KINDS = [None, "tensor", "seed", "rng"]


def _randn(shape, dtype, gen, device="cpu", scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _make_coef(mode, B, gen, device, clip):
    """A random table and index for a row-selection mode (``index_view``: a view ``table[2:]``, rows of both
    signs). VA, VB are kept small so that e = exp(VA + VB v) stays O(1); |S| >= 1 so that clipping engages."""
    R = {"single": 1, "per_sample": B}.get(mode, 6)
    coef = torch.randn(R + 2, NCOEF, generator=gen, dtype=torch.float64)
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.3 if clip else math.inf
    coef[:, COL["VA"]] *= 0.3
    coef[:, COL["VB"]] *= 0.3
    s = coef[:, COL["S"]]
    coef[:, COL["S"]] = torch.where(s < 0, -1.0, 1.0) * (1.0 + s.abs())  # |w'| often exceeds the bounds
    index = None
    if mode == "index_scalar":
        index = torch.randint(0, R, (), generator=gen)
    elif mode == "index_batch":
        index = torch.randint(0, R, (B,), generator=gen)
    elif mode in ("index_negative", "index_view"):
        index = torch.randint(-R, R, (B,), generator=gen)
    coef = coef[2:] if mode == "index_view" else coef[:R]
    return coef.to(device), (index.to(device) if index is not None else None)


def _case(shape, dtype, device, gen, mode, noise_kind, want_m2, want_var, want_thr, want_gw, clip):
    """Random forward inputs and output gradients for one configuration."""
    B = shape[0]
    x = _randn(shape, dtype, gen, device, 2.0)
    m = _randn(shape, dtype, gen, device)
    coef, index = _make_coef(mode, B, gen, device, clip)
    kw = {}
    if noise_kind == "tensor":
        kw["noise"] = _randn(shape, dtype, gen, device)
    elif noise_kind == "seed":
        kw["seed"] = int(torch.randint(0, 2**62, (), generator=gen)) * 3
        kw["offset"] = int(torch.randint(0, 2**40, (), generator=gen))
    elif noise_kind == "rng":
        kw["rng"] = torch.randint(-2**62, 2**62, (2,), generator=gen).to(device)
        kw["offset"] = int(torch.randint(0, 2**40, (), generator=gen))
    if want_m2:
        kw["m2"] = _randn(shape, dtype, gen, device)
    if want_var:
        kw["var"] = _randn(shape, dtype, gen, device)
    if want_thr:
        kw["threshold"] = (torch.rand(B, generator=gen, dtype=torch.float64) * 2 + 0.5).to(device)
    grad_out = _randn(shape, dtype, gen, device)
    grad_w = _randn(shape, dtype, gen, device) if want_gw else None
    return x, m, coef, index, kw, grad_out, grad_w


def _autograd(x, m, coef, index, kw, grad_out, grad_w):
    """dL/d(x, m, m2, noise, var) of L = <grad_out, x'> + <grad_w, w> through fused_step_reference."""
    B = x.shape[0]
    c2, idx, istride, rstride = normalize_rows(coef, index, B, x)
    leaves = {"x": x.clone().requires_grad_(), "m": m.clone().requires_grad_()}
    for name in ("m2", "noise", "var"):
        if kw.get(name) is not None:
            leaves[name] = kw[name].clone().requires_grad_()
    out = torch.empty_like(x)
    w_out = torch.empty_like(x) if grad_w is not None else None
    fused_step_reference(leaves["x"], leaves["m"], c2, idx, istride, rstride, out, w_out, (), leaves.get("noise"),
                         kw.get("seed"), kw.get("offset", 0), kw.get("rng"), kw.get("threshold"), leaves.get("m2"),
                         leaves.get("var"))
    loss = (out * grad_out).sum()
    if grad_w is not None:
        loss = loss + (w_out * grad_w).sum()
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return {n: (torch.zeros_like(x) if gr is None else gr) for n, gr in zip(names, grads)}


def _poisoned(x, want):
    return torch.full_like(x, math.nan) if want else None


def _run(impl, x, m, coef, index, kw, grad_out, grad_w, dnoise=True, dvar=True):
    """Call a normalized implementation with NaN-poisoned outputs; returns them by name."""
    B = x.shape[0]
    c2, idx, istride, rstride = normalize_rows(coef, index, B, x)
    thr = kw.get("threshold")
    if thr is not None:
        thr = thr.to(c2.dtype)
    outs = {"x": _poisoned(x, True), "m": _poisoned(x, True), "m2": _poisoned(x, kw.get("m2") is not None),
            "noise": _poisoned(x, dnoise and kw.get("noise") is not None),
            "var": _poisoned(x, dvar and kw.get("var") is not None)}
    impl(grad_out, grad_w, x, m, c2, idx, istride, rstride, kw.get("noise"), kw.get("seed"), kw.get("offset", 0),
         kw.get("rng"), thr, kw.get("m2"), kw.get("var"), outs["x"], outs["m"], outs["m2"], outs["noise"], outs["var"])
    return {k: v for k, v in outs.items() if v is not None}


_AUTOGRAD_CASES = list(itertools.product(NOISE_KINDS, [False, True], [False, True], [False, True], [False, True],
                                         [False, True]))


@pytest.mark.parametrize("noise_kind,want_m2,want_var,want_thr,want_gw,clip", _AUTOGRAD_CASES,
                         ids=["-".join(f"{n}={v}" for n, v in zip(("noise", "m2", "var", "thr", "gw", "clip"), c))
                              for c in _AUTOGRAD_CASES])
def test_reference_matches_autograd(noise_kind, want_m2, want_var, want_thr, want_gw, clip):
    """Every optional input, in float64; the row-selection mode rotates over the cases."""
    case = (noise_kind, want_m2, want_var, want_thr, want_gw, clip)
    mode = COEF_MODES[_AUTOGRAD_CASES.index(case) % len(COEF_MODES)]
    gen = torch.Generator().manual_seed(1000 + _AUTOGRAD_CASES.index(case))
    args = _case((3, 5, 7), torch.float64, "cpu", gen, mode, noise_kind, want_m2, want_var, want_thr, want_gw, clip)
    expect = _autograd(*args)
    got = _run(fused_step_backward_reference, *args)
    assert set(got) == set(expect), (set(got), set(expect))
    for name, value in got.items():
        torch.testing.assert_close(value, expect[name], atol=1e-12, rtol=1e-12, msg=f"d{name}")
    if clip or want_thr:  # the clip must cut some elements and pass others, or the case does not test its mask
        frac = _clipped_fraction(*args)
        assert 0.0 < frac < 1.0, frac


def _clipped_fraction(x, m, coef, index, kw, grad_out, grad_w):
    B = x.shape[0]
    view = (B,) + (1,) * (x.ndim - 1)
    c2, idx, istride, rstride = normalize_rows(coef, index, B, x)
    r = select_rows(c2, idx, istride, rstride, B)
    col = lambda name: r[:, COL[name]].view(view)  # noqa: E731
    me = m if kw.get("m2") is None else col("M1") * m + col("M2") * kw["m2"]
    wp = col("S") * (col("P") * x + col("Q") * me)
    bound = col("CLIP") if kw.get("threshold") is None else kw["threshold"].view(view)
    return (wp.abs() > bound).double().mean().item()


@pytest.mark.parametrize("mode", COEF_MODES)
def test_reference_matches_autograd_every_row_mode(mode):
    gen = torch.Generator().manual_seed(COEF_MODES.index(mode))
    args = _case((4, 3, 11), torch.float64, "cpu", gen, mode, "rng", True, True, False, True, True)
    expect = _autograd(*args)
    got = _run(fused_step_backward_reference, *args)
    for name, value in got.items():
        torch.testing.assert_close(value, expect[name], atol=1e-12, rtol=1e-12, msg=f"d{name}")


def test_clip_mask_engages():
    """A clip that cuts most elements: their x/m gradients are exactly the unclipped path's (A, D terms)."""
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).view(1, 13)
    m = torch.zeros_like(x)
    coef = torch.tensor(coef_row(P=1.0, Q=0.5, B0=2.0, A=0.25, D=0.75, CLIP=1.0), dtype=torch.float64)
    go = torch.ones_like(x)
    dx, dm, dm2, dn, dv = fused_step_backward(go, x, m, coef, backend="reference")
    inside = x.abs() <= 1.0
    torch.testing.assert_close(dx, torch.where(inside, 0.25 + 2.0, 0.25).to(x.dtype))
    torch.testing.assert_close(dm, torch.where(inside, 0.75 + 2.0 * 0.5, 0.75).to(x.dtype))
    assert dm2 is None and dn is None and dv is None


# ------------------------------------------------------------------------------------------ backends

SHAPES = [(1, 3, 7, 13), (5, 4, 17, 31), (3,), (7, 1), (4, 257), (2, 4, 64, 64)]
FEATURES = {
    # name: (noise, m2, var, threshold, grad_w, clip)
    "plain": (None, False, False, False, False, False),
    "clip_gw": (None, False, False, False, True, True),
    "threshold_gw": (None, False, False, True, True, False),
    "noise": ("tensor", False, False, False, False, True),
    "seed_no_var": ("seed", True, False, False, True, True),
    "var_noise": ("tensor", False, True, False, True, True),
    "var_seed_m2": ("seed", True, True, False, False, True),
    "var_rng_thr": ("rng", False, True, True, True, False),
    "cfg_m2_thr": (None, True, False, True, False, False),
    "everything": ("tensor", True, True, True, True, False),
}


def _backend_cases():
    """The full cross for cpu (and cuda); the Triton interpreter gets every feature in float32 on the small
    shapes and the other dtypes on a subset."""
    for bp in backend_params(op="fused_step_backward"):
        triton = bp.values[0] == "triton"
        for dtype in DTYPES:
            for shape in SHAPES:
                for mode_i, feature in enumerate(FEATURES):
                    if triton and (shape == (2, 4, 64, 64) or (dtype != torch.float32 and feature not in (
                            "plain", "everything", "var_rng_thr"))):
                        continue
                    mode = COEF_MODES[(mode_i + SHAPES.index(shape)) % len(COEF_MODES)]
                    yield pytest.param(bp.values[0], dtype, shape, mode, feature, marks=bp.marks,
                                       id=f"{feature}-{mode}-{'x'.join(map(str, shape))}-{dtype}-{bp.id}")


@pytest.mark.parametrize("backend,dtype,shape,mode,feature", list(_backend_cases()))
def test_backend_matches_reference(backend, dtype, shape, mode, feature):
    if not supports_dtype(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, mode, feature)) % 2**31)
    noise_kind, want_m2, want_var, want_thr, want_gw, clip = FEATURES[feature]
    args = _case(shape, dtype, device, gen, mode, noise_kind, want_m2, want_var, want_thr, want_gw, clip)
    ref = _run(registry.implementation("reference", "fused_step_backward"), *args)
    got = _run(registry.implementation(backend, "fused_step_backward"), *args)
    assert set(got) == set(ref)
    tol = dict(TOL[dtype])
    if noise_kind in ("seed", "rng") and dtype == torch.float64:
        tol = dict(TOL[torch.float32])  # Philox normals are float32 math (libm rounding differs per backend)
    for name, value in got.items():
        assert not value.isnan().any(), f"d{name}: unwritten or NaN elements"
        torch.testing.assert_close(value, ref[name], **tol, msg=f"d{name}")


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS, op="fused_step_backward"))
def test_public_function(backend):
    """The public wrapper: which gradients come back, and that they are the normalized op's."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(3)
    x, m, coef, index, kw, go, gw = _case((3, 2, 9), torch.float32, device, gen, "index_negative", "tensor", True,
                                          True, False, True, True)
    dx, dm, dm2, dn, dv = fused_step_backward(go, x, m, coef, grad_w=gw, index=index, backend=backend, **kw)
    ref = _run(registry.implementation("reference", "fused_step_backward"), x, m, coef, index, kw, go, gw)
    for name, value in (("x", dx), ("m", dm), ("m2", dm2), ("noise", dn), ("var", dv)):
        torch.testing.assert_close(value, ref[name], **TOL[torch.float32])
    _, _, _, dn, dv = fused_step_backward(go, x, m, coef, grad_w=gw, index=index, backend=backend, noise_grad=False,
                                          var_grad=False, **kw)
    assert dn is None and dv is None
    dx, dm, dm2, dn, dv = fused_step_backward(go, x, m, coef, index=index, backend=backend, seed=5)
    assert dm2 is None and dn is None and dv is None


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS, op="fused_step_backward"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_optional_gradients_may_be_skipped(backend, dtype):
    """dm2, dnoise and dvar may be None with their inputs present: the other gradients are unchanged."""
    if not supports_dtype(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(11)
    args = _case((2, 33), dtype, device, gen, "per_sample", "tensor", True, True, True, True, False)
    impl = registry.implementation(backend, "fused_step_backward")
    full = _run(impl, *args)
    part = _run(impl, *args, dnoise=False, dvar=False)
    assert set(part) == {"x", "m", "m2"}
    for name, value in part.items():
        assert torch.equal(value, full[name])


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS, op="fused_step_backward"))
def test_output_may_be_an_input(backend):
    """Every input element is read before its gradients are written: dx may be grad_out, dm may be m."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(5)
    x, m, coef, index, kw, go, gw = _case((3, 40), torch.float32, device, gen, "per_sample", "tensor", False, True,
                                          False, True, True)
    impl = registry.implementation(backend, "fused_step_backward")
    ref = _run(impl, x, m, coef, index, kw, go, gw)
    c2, idx, istride, rstride = normalize_rows(coef, index, 3, x)
    go_a, m_a = go.clone(), m.clone()
    dn, dv = torch.empty_like(x), torch.empty_like(x)
    impl(go_a, gw, x, m_a, c2, idx, istride, rstride, kw["noise"], None, 0, None, None, None, kw["var"], go_a, m_a,
         None, dn, dv)
    torch.testing.assert_close(go_a, ref["x"], **TOL[torch.float32])
    torch.testing.assert_close(m_a, ref["m"], **TOL[torch.float32])
    torch.testing.assert_close(dv, ref["var"], **TOL[torch.float32])


@pytest.mark.parametrize("backend", backend_params(("triton", "cuda", "cuda-jit"), op="fused_step_backward"))
def test_out_of_range_row_gives_nan_on_accelerators(backend):
    """The index rule: a row outside [-R, R) reads as NaN, so that sample's gradients are all NaN."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(2)
    x, m, coef, _, kw, go, gw = _case((3, 19), torch.float32, device, gen, "index_batch", "tensor", True, True,
                                      False, True, True)
    index = torch.tensor([1, 6, -7], device=device)  # R = 6: rows 6 and -7 are out of range
    impl = registry.implementation(backend, "fused_step_backward")
    got = _run(impl, x, m, coef, index, kw, go, gw) if device.type != "cpu" else None
    if got is None:  # a CPU index is checked by normalize_rows: call the normalized op directly
        outs = [torch.zeros_like(x) for _ in range(5)]
        impl(go, gw, x, m, coef.float(), index, 1, 0, kw["noise"], None, 0, None, None, kw["m2"], kw["var"], *outs)
        got = dict(zip(("x", "m", "m2", "noise", "var"), outs))
    ok_index = torch.tensor([1, 1, 1], device=device)
    ref = _run(registry.implementation("reference", "fused_step_backward"), x, m, coef, ok_index, kw, go, gw)
    for name, value in got.items():
        assert value[1:].isnan().all(), f"d{name}"
        torch.testing.assert_close(value[0], ref[name][0], **TOL[torch.float32])


def test_cpu_index_out_of_range_raises():
    x = torch.randn(2, 5)
    coef = torch.tensor(coef_row(P=1.0, B0=1.0)).expand(3, NCOEF).contiguous()
    for backend in ("reference",) + (("cpu",) if backend_device("cpu") is not None else ()):
        with pytest.raises(IndexError, match="out of range"):
            fused_step_backward(x, x, x, coef, index=torch.tensor([0, 3]), backend=backend)
    if backend_device("cpu") is not None:
        impl = registry.implementation("cpu", "fused_step_backward")
        outs = [torch.empty_like(x) for _ in range(2)]
        with pytest.raises(IndexError, match="out of range"):
            impl(x, None, x, x, coef, torch.tensor([0, -4]), 1, 0, None, None, 0, None, None, None, None, *outs, None,
                 None, None)


def test_bad_input():
    x = torch.randn(2, 5)
    coef = torch.tensor(coef_row(P=1.0, B0=1.0))
    with pytest.raises(ValueError, match="grad_out has shape"):
        fused_step_backward(torch.randn(2, 4), x, x, coef)
    with pytest.raises(TypeError, match="grad_w has dtype"):
        fused_step_backward(x, x, x, coef, grad_w=x.double())
    with pytest.raises(ValueError, match="give either noise or seed"):
        fused_step_backward(x, x, x, coef, noise=x, seed=1)
    with pytest.raises(TypeError, match="noise_grad must be a bool"):
        fused_step_backward(x, x, x, coef, noise=x, noise_grad=1)
    with pytest.raises(ValueError, match="threshold must hold B=2"):
        fused_step_backward(x, x, x, coef, threshold=torch.ones(3))
    with pytest.raises(TypeError, match="grad_out must be a torch.Tensor"):
        fused_step_backward(None, x, x, coef)


def test_empty_batch():
    x = torch.empty(0, 4)
    out = fused_step_backward(x, x, x, torch.tensor(coef_row()))
    assert out[0].shape == (0, 4) and out[1].shape == (0, 4)


def _native(name):
    try:
        import importlib

        mod = importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not built")
    if not hasattr(mod, "fused_step_backward"):
        pytest.skip(f"{name} is a build without fused_step_backward")
    return mod


def _native_args(mod, **over):
    """Valid raw arguments for a (2, 4) float32 backward on host pointers (never launched when a check fails)."""
    t = torch.zeros(2, 4)
    coef = torch.tensor(coef_row(), dtype=torch.float32)
    p = t.data_ptr()
    args = dict(dtype=mod.FLOAT32, B=2, N=4, grad_out=p, grad_w=0, x=p, m=p, coef=coef.data_ptr(), R=1, index=0,
                index_stride=0, row_stride=0, noise=0, seed=None, offset=0, rng=0, threshold=0, m2=0, var=0,
                dx=p, dm=p, dm2=0, dnoise=0, dvar=0)
    args.update(over)
    return args, (t, coef)


@pytest.mark.parametrize("bad,match", [
    (dict(dm2=8), "dm2 needs m2"),
    (dict(dnoise=8), "dnoise needs a noise tensor"),
    (dict(dvar=8), "dvar needs var"),
    (dict(noise=8, seed=1), "give either seed or rng|at most one of noise"),
    (dict(dx=0), "must not be null"),
    (dict(dtype=99), "unsupported dtype"),
    (dict(row_stride=1), "one coef row per sample"),
])
def test_cpu_module_argument_checks(bad, match):
    C = _native("pydiff._C")
    args, keep = _native_args(C, **bad)
    with pytest.raises(ValueError, match=match):
        C.fused_step_backward(**args)


def test_cuda_module_rejects_float64():
    C_cuda = _native("pydiff._C_cuda")
    args, keep = _native_args(C_cuda, dtype=C_cuda.FLOAT64)
    with pytest.raises(ValueError, match="float64 is not supported"):
        C_cuda.fused_step_backward(**args, device=0, stream=0)
