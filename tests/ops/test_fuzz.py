"""Seeded random cross-backend property tests of the four ops: every backend against the reference twin.

Each example draws a shape (odd sizes, 1-D to 4-D), a dtype, strides (non-contiguous views are given to the
public functions, which copy them), aliasing (out = x, w_out = m / m2 / a history tensor), a row-selection mode
(one row, per sample, scalar / batch / negative index, a view of a larger table), 0..6 history tensors, the
optional inputs (noise tensor, Philox seed, rng tensor, threshold, m2, var) and value ranges with zeros, signed
zeros, tiny and large magnitudes, inf and NaN sprinkled in. Budget per CI run: FUZZ_CASES examples per backend
and op family (the Triton interpreter gets a smaller budget: it is ~100x slower). A failure prints the seed
of the example; ``FUZZ_SEED_BASE`` moves the whole campaign.
"""
import math
import os

import pytest
import torch

from helpers import TOL, backend_device, backend_params, supports_dtype
from pydiff.ops import COL, K_MAX, NCOEF, dynamic_threshold, fused_step, philox_normal, sumsq

FUZZ_CASES = {"cpu": 600, "triton": 96, "cuda": 600}
CHUNKS = 12
BASE = int(os.environ.get("FUZZ_SEED_BASE", "20261201"))
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _setup(backend, seed):
    """The device, generator, dtype (one the backend takes) and shape of one example."""
    g = torch.Generator().manual_seed(seed)
    dtype = DTYPES[int(torch.randint(0, 4, (), generator=g))]
    if not supports_dtype(backend, dtype):
        dtype = torch.float32
    return backend_device(backend), g, dtype, _shape(g)


def _shape(g):
    nd = int(torch.randint(1, 5, (), generator=g))
    B = int(torch.randint(1, 6, (), generator=g))
    inner = [int(torch.randint(1, 12, (), generator=g)) for _ in range(nd - 1)]
    return (B, *inner)


def _values(shape, dtype, g, device, extremes):
    scale = float([1.0, 1e-3, 1e3, 1.0][int(torch.randint(0, 4, (), generator=g))])
    v = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if extremes:
        flat = v.view(-1)
        n = flat.numel()
        for val in (0.0, -0.0, 1e-30, math.inf, -math.inf, math.nan):
            if torch.rand((), generator=g) < 0.3:
                flat[int(torch.randint(0, n, (), generator=g))] = val
    return v.to(dtype).to(device)


def _maybe_strided(t, g):
    """Half the time, the same values as a non-contiguous view (a transposed copy transposed back)."""
    if t.ndim >= 2 and torch.rand((), generator=g) < 0.5:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t


def _coef(g, B, device, dtype):
    mode = ["single", "per_sample", "index_scalar", "index_batch", "index_negative", "view"][
        int(torch.randint(0, 6, (), generator=g))]
    R = {"single": 1, "per_sample": B}.get(mode, int(torch.randint(1, 9, (), generator=g)))
    table = torch.randn(R + 1, NCOEF, generator=g, dtype=torch.float64)
    for name in ("VA", "VB"):
        table[:, COL[name]] *= 0.2
    clip = torch.rand((), generator=g)
    table[:, COL["CLIP"]] = math.inf if clip < 0.5 else table[:, COL["CLIP"]].abs() + 0.1
    for name in ("S", "O", "M1"):  # sometimes exactly the defaults
        if torch.rand((), generator=g) < 0.4:
            table[:, COL[name]] = 1.0
    table = table[1:] if mode == "view" else table[:R]
    index = None
    if mode == "index_scalar":
        index = torch.randint(0, R, (), generator=g)
    elif mode == "index_batch":
        index = torch.randint(0, R, (B,), generator=g)
    elif mode in ("index_negative", "view"):
        index = torch.randint(-R, R, (B,), generator=g)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    return table.to(device, cdt), (None if index is None else index.to(device))


def _close(got, ref, dtype, what, seed):
    tol = TOL[dtype]
    finite = ref[torch.isfinite(ref)]
    scale = 1.0 + (finite.abs().max().item() if finite.numel() else 0.0)
    torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=tol["atol"] * scale, equal_nan=True,
                               msg=lambda m: f"{what}, fuzz seed {seed}: {m}")


def _fused_case(backend, seed):
    device, g, dtype, shape = _setup(backend, seed)
    B = shape[0]
    extremes = bool(torch.rand((), generator=g) < 0.3)
    x = _values(shape, dtype, g, device, extremes)
    m = _values(shape, dtype, g, device, extremes)
    k = int(torch.randint(0, K_MAX + 1, (), generator=g))
    hist = [_values(shape, dtype, g, device, False) for _ in range(k)]
    coef, index = _coef(g, B, device, dtype)
    kw = {}
    noise_kind = int(torch.randint(0, 4, (), generator=g))
    if noise_kind == 1:
        kw["noise"] = _values(shape, dtype, g, device, False)
    elif noise_kind == 2:
        kw["seed"] = int(torch.randint(0, 2**62, (), generator=g)) * 4 + 3
        kw["offset"] = int(torch.randint(0, 2**62, (), generator=g))
    elif noise_kind == 3:
        kw["rng"] = torch.randint(-2**62, 2**62, (2,), generator=g).to(device)
        kw["offset"] = int(torch.randint(0, 2**62, (), generator=g))
    if torch.rand((), generator=g) < 0.3:
        kw["m2"] = _values(shape, dtype, g, device, extremes)
    if torch.rand((), generator=g) < 0.3:
        kw["var"] = _values(shape, dtype, g, device, False).clamp(-3, 3)
    if torch.rand((), generator=g) < 0.25:
        thr = torch.rand(B, generator=g, dtype=torch.float64) * 3 + 0.2
        kw["threshold"] = thr.to(device)
    want_w = bool(torch.rand((), generator=g) < 0.6)
    alias = ["none", "out=x", "w_out=m", "w_out=hist", "w_out=m2"][int(torch.randint(0, 5, (), generator=g))]

    def run(be):
        xx, mm = x.clone(), m.clone()
        hh = [h.clone() for h in hist]
        kk = dict(kw)
        if "m2" in kk:
            kk["m2"] = kw["m2"].clone()
        out = xx if alias == "out=x" else torch.full_like(x, math.nan)
        w_out = None
        if want_w:
            if alias == "w_out=m":
                w_out = mm
            elif alias == "w_out=hist" and hh:
                w_out = hh[-1]
            elif alias == "w_out=m2" and "m2" in kk:
                w_out = kk["m2"]
            else:
                w_out = torch.full_like(x, math.nan)
        res = fused_step(_maybe_strided(xx, torch.Generator().manual_seed(seed)) if alias != "out=x" else xx,
                         _maybe_strided(mm, torch.Generator().manual_seed(seed + 1)) if w_out is not mm else mm,
                         coef, index=index, out=out, w_out=w_out, hist=hh, backend=be, **kk)
        return res, w_out

    ref_out, ref_w = run("reference")
    out, w = run(backend)
    if "seed" in kw or "rng" in kw:
        dtype_tol = torch.float32 if dtype == torch.float64 else dtype
    else:
        dtype_tol = dtype
    _close(out, ref_out, dtype_tol, "out", seed)
    if want_w:
        _close(w, ref_w, dtype, "w_out", seed)


def _other_case(backend, seed):
    device, g, dtype, shape = _setup(backend, seed)
    B = shape[0]
    a = _values(shape, dtype, g, device, False)
    which = int(torch.randint(0, 3, (), generator=g))
    if which == 0:  # sumsq
        kind = int(torch.randint(0, 4, (), generator=g))
        kw = {}
        if kind == 1:
            kw["b"] = _values(shape, dtype, g, device, False)
        elif kind == 2:
            kw["seed"] = int(torch.randint(0, 2**62, (), generator=g))
        elif kind == 3:
            kw["rng"] = torch.randint(-2**62, 2**62, (2,), generator=g).to(device)
        kw["offset"] = int(torch.randint(0, 2**40, (), generator=g))
        got = sumsq(a, backend=backend, **kw)
        ref = sumsq(a, backend="reference", **kw)
        got, ref = (torch.stack(v) if isinstance(v, tuple) else v for v in (got, ref))
        tol = 1e-10 if dtype == torch.float64 and kind < 2 else 2e-5
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol, msg=lambda m: f"sumsq, fuzz seed {seed}: {m}")
    elif which == 1:  # dynamic_threshold
        ratio = float(torch.rand((), generator=g)) * 0.999 + 0.001 if torch.rand((), generator=g) < 0.8 else 1.0
        max_val = [1.0, 2.5, math.inf][int(torch.randint(0, 3, (), generator=g))]
        kw = {}
        if torch.rand((), generator=g) < 0.6:
            coef, index = _coef(g, B, device, dtype)
            kw = dict(model_output=_values(shape, dtype, g, device, False), coef=coef, index=index)
            if torch.rand((), generator=g) < 0.3:
                kw["m2"] = _values(shape, dtype, g, device, False)
        got = dynamic_threshold(a, ratio=ratio, max_val=max_val, backend=backend, **kw)
        ref = dynamic_threshold(a, ratio=ratio, max_val=max_val, backend="reference", **kw)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol, equal_nan=True,
                                   msg=lambda m: f"dynamic_threshold, fuzz seed {seed}: {m}")
    else:  # philox_normal
        kw = dict(offset=int(torch.randint(0, 2**62, (), generator=g)))
        if torch.rand((), generator=g) < 0.5:
            kw["seed"] = int(torch.randint(0, 2**62, (), generator=g)) * 4 + 1
        else:
            kw["rng"] = torch.randint(-2**62, 2**62, (2,), generator=g).to(device)
        got = philox_normal(shape, dtype=dtype, device=device, backend=backend, **kw)
        ref = philox_normal(shape, dtype=dtype, device=device, backend="reference", **kw)
        torch.testing.assert_close(got, ref, **TOL[torch.float32 if dtype == torch.float64 else dtype],
                                   msg=lambda m: f"philox_normal, fuzz seed {seed}: {m}")


def _seeds(backend, family, chunk):
    n = FUZZ_CASES[backend] // CHUNKS
    start = BASE + 1_000_003 * ("fo".index(family[0])) + chunk * n
    return range(start, start + n)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_fused_step(backend, chunk):
    for seed in _seeds(backend, "fused", chunk):
        _fused_case(backend, seed)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_reductions_and_noise(backend, chunk):
    for seed in _seeds(backend, "other", chunk):
        _other_case(backend, seed)
