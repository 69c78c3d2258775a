"""Every compiled backend against the plain-PyTorch reference, on fresh random inputs of odd sizes (docs/ops.md v2).

Outputs are poisoned (NaN) before each call so that an element a kernel fails to write shows up.
"""
import math

import pytest
import torch

from helpers import ALL_BACKENDS, DTYPES, TOL, backend_device, backend_params, supports_dtype
from pydiff.ops import COL, K_MAX, NCOEF, coef_row, dynamic_threshold, fused_step, philox_normal, sumsq
from pydiff.ops.dynamic_threshold import dynamic_threshold_reference, quantile_rank
from pydiff.ops.philox import philox_normal_reference
from pydiff.ops.sumsq import sumsq_reference

SHAPES = [(1, 3, 7, 13), (5, 4, 17, 31), (2, 4, 64, 64), (3,), (7, 1), (4, 257)]
COEF_MODES = ["single", "per_sample", "index_scalar", "index_batch", "index_negative", "index_view"]
FEATURES = {
    # name: (n_hist, w_out, clip, threshold, noise, m2, var)
    "plain": (0, False, False, False, None, False, False),
    "w_out_clip": (0, True, True, False, None, False, False),
    "threshold": (0, True, False, True, None, False, False),
    "hist1_noise": (1, False, False, False, "tensor", False, False),
    "hist3_philox": (3, True, True, False, "philox", False, False),
    "hist2_thresh_philox": (2, True, False, True, "philox", False, False),
    "hist6_rng": (6, True, True, False, "rng", False, False),
    "cfg_m2": (1, True, True, False, None, True, False),
    "var_noise": (0, False, False, False, "tensor", False, True),
    "var_m2_rng": (4, True, False, False, "rng", True, True),
    "hist5_m2_thresh": (5, True, False, True, "philox", True, False),
}


def _skip_unsupported(backend, dtype):
    if not supports_dtype(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")


def _make_coef(mode, B, gen, device, clip):
    """A random table and index for a row-selection mode; ``index_view`` passes ``table[2:]`` (a view whose
    storage starts two rows in) with negative and positive rows."""
    R = {"single": 1, "per_sample": B}.get(mode, 6)
    coef = torch.randn(R + 2, NCOEF, generator=gen, dtype=torch.float64)
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.3 if clip else math.inf
    coef[:, COL["VA"]] *= 0.3  # e = exp(VA + VB v) stays O(1)
    coef[:, COL["VB"]] *= 0.3
    index = None
    if mode == "index_scalar":
        index = torch.randint(0, R, (), generator=gen)
    elif mode == "index_batch":
        index = torch.randint(0, R, (B,), generator=gen)
    elif mode in ("index_negative", "index_view"):
        index = torch.randint(-R, R, (B,), generator=gen)
    coef = coef[2:] if mode == "index_view" else coef[:R]
    coef = coef.to(device)
    index = index.to(device) if index is not None else None
    if mode == "single" and torch.rand((), generator=gen) < 0.5:
        coef = coef[0]  # the 1-D form
    return coef, index


def _randn(shape, dtype, gen, device, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def _call(backend, x, m, coef, index, want_w, kw):
    out = torch.full_like(x, float("nan"))
    wo = torch.full_like(x, float("nan")) if want_w else None
    res = fused_step(x, m, coef, index=index, out=out, w_out=wo, backend=backend, **kw)
    assert res is out
    return out, wo


def _fused_cases():
    """The full cross for the compiled backends; the Triton interpreter (~100x slower than a GPU) gets every
    mode and feature in float32 on the small shapes, and the other dtypes and the latent shape on a subset."""
    for bp in backend_params():
        triton = bp.values[0] == "triton"
        for dtype in DTYPES:
            for shape in SHAPES:
                for mode in COEF_MODES:
                    for feature in FEATURES:
                        if triton and (shape == (2, 4, 64, 64) or dtype != torch.float32) and not (
                                mode in ("single", "index_view") and feature in ("plain", "hist6_rng", "var_m2_rng")):
                            continue
                        yield pytest.param(bp.values[0], dtype, shape, mode, feature, marks=bp.marks,
                                           id=f"{feature}-{mode}-{'x'.join(map(str, shape))}-{dtype}-{bp.id}")


@pytest.mark.parametrize("backend,dtype,shape,mode,feature", list(_fused_cases()))
def test_fused_step_matches_reference(backend, dtype, shape, mode, feature):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, mode, feature)) % 2**31)
    n_hist, want_w, clip, want_thresh, noise_kind, want_m2, want_var = FEATURES[feature]
    B = shape[0]
    x = _randn(shape, dtype, gen, device, 2.0)
    m = _randn(shape, dtype, gen, device)
    kw = dict(hist=tuple(_randn(shape, dtype, gen, device) for _ in range(n_hist)))
    coef, index = _make_coef(mode, B, gen, device, clip)
    if want_thresh:
        kw["threshold"] = (torch.rand(B, generator=gen, dtype=torch.float64) * 2 + 0.5).to(device)
    if noise_kind == "tensor":
        kw["noise"] = _randn(shape, dtype, gen, device)
    elif noise_kind == "philox":
        kw["seed"] = int(torch.randint(0, 2**62, (), generator=gen)) * 3
        kw["offset"] = int(torch.randint(0, 2**40, (), generator=gen))
    elif noise_kind == "rng":
        kw["rng"] = torch.randint(-2**62, 2**62, (2,), generator=gen).to(device)
        kw["offset"] = int(torch.randint(0, 2**40, (), generator=gen))
    if want_m2:
        kw["m2"] = _randn(shape, dtype, gen, device)
    if want_var:
        kw["var"] = _randn(shape, dtype, gen, device)
    ref_out, ref_w = _call("reference", x, m, coef, index, want_w, kw)
    out, w_out = _call(backend, x, m, coef, index, want_w, kw)
    assert not out.isnan().any(), "unwritten or NaN output elements"
    tol = dict(TOL[dtype])
    if noise_kind in ("philox", "rng") and dtype == torch.float64:
        tol = dict(TOL[torch.float32])  # Philox normals are float32 math (libm rounding differs per backend)
    torch.testing.assert_close(out, ref_out, **tol)
    if want_w:
        assert not w_out.isnan().any()
        torch.testing.assert_close(w_out, ref_w, **TOL[dtype])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("k", range(K_MAX + 1))
def test_fused_step_every_history_count(backend, k):
    """K = 0..6 history tensors, each with its own weight: out = sum_k (k+1) h_k exactly (small integers)."""
    device = backend_device(backend)
    shape = (3, 37)
    hist = tuple(torch.full(shape, float(2 ** j), device=device) for j in range(k))
    coef = torch.tensor(coef_row(**{f"B{j + 1}": float(j + 1) for j in range(k)}), device=device)
    x = torch.zeros(shape, device=device)
    out = fused_step(x, x, coef, hist=hist, backend=backend)
    expect = sum((j + 1) * 2 ** j for j in range(k))
    assert torch.equal(out, torch.full(shape, float(expect), device=device))


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_step_aliasing(backend, dtype):
    """An output may be an input: out=x and w_out=m, m2 or a history tensor (in-place multistep updates)."""
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(7)
    shape = (3, 5, 11, 7)
    x = _randn(shape, dtype, gen, device)
    m = _randn(shape, dtype, gen, device)
    h1, h2 = _randn(shape, dtype, gen, device), _randn(shape, dtype, gen, device)
    g2 = _randn(shape, dtype, gen, device)
    coef, _ = _make_coef("per_sample", 3, gen, device, clip=True)
    tol64 = TOL[torch.float32 if dtype == torch.float64 else dtype]
    for hist, w_alias, extra in [((h1,), "m", {}), ((h1, h2), "h2", dict(seed=5, offset=9)),
                                 ((h1,), "m2", dict(m2=g2))]:
        ref_out, ref_w = _call("reference", x, m, coef, None, True, dict(hist=hist, **extra))
        xa, ma, h2a, g2a = x.clone(), m.clone(), h2.clone(), g2.clone()
        hist_a = tuple(h2a if h is h2 else h for h in hist)
        extra_a = {k: (g2a if v is g2 else v) for k, v in extra.items()}
        w_target = {"m": ma, "h2": h2a, "m2": g2a}[w_alias]
        fused_step(xa, ma, coef, out=xa, w_out=w_target, hist=hist_a, backend=backend, **extra_a)
        torch.testing.assert_close(xa, ref_out, **tol64)
        torch.testing.assert_close(w_target, ref_w, **TOL[dtype])


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
def test_fused_step_rejects_partial_overlap(backend):
    device = backend_device(backend)
    buf = torch.randn(10, device=device)
    x, out = buf[:8].view(2, 4), buf[1:9].view(2, 4)
    coef = torch.tensor(coef_row(P=1.0, B0=1.0), device=device)
    with pytest.raises(ValueError, match="partially overlaps x"):
        fused_step(x, torch.ones_like(x), coef, out=out, backend=backend)
    y = torch.randn(2, 4, device=device)
    both = torch.empty(2, 4, device=device)
    with pytest.raises(ValueError, match="overlaps out"):
        fused_step(y, y, coef, out=both, w_out=both, backend=backend)


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
def test_fused_step_propagates_nan(backend):
    device = backend_device(backend)
    x = torch.ones(2, 9, device=device)
    x[1, 4] = float("nan")
    coef = torch.tensor(coef_row(P=1.0, B0=1.0, CLIP=0.5), device=device)  # out = clamp(x, +-0.5)
    out = fused_step(x, torch.zeros_like(x), coef, backend=backend)
    assert out[1, 4].isnan() and not out[0].isnan().any() and (out[0] == 0.5).all()


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
def test_nan_clip_bound_gives_nan(backend):
    """A NaN clip bound (or threshold) is NaN, never a silent pass-through (torch.clamp semantics)."""
    device = backend_device(backend)
    x = torch.randn(2, 3, device=device)
    out = fused_step(x, torch.zeros_like(x), torch.tensor(coef_row(P=1, B0=1, CLIP=math.nan), device=device),
                     backend=backend)
    assert out.isnan().all()
    thr = torch.tensor([1.0, math.nan], device=device)
    out = fused_step(x, torch.zeros_like(x), torch.tensor(coef_row(P=1, B0=1), device=device), threshold=thr,
                     backend=backend)
    assert not out[0].isnan().any() and out[1].isnan().all()


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
def test_index_rule(backend):
    """Negative rows wrap (also on a view); a CPU index out of [-R, R) raises IndexError before any kernel."""
    device = backend_device(backend)
    table = torch.stack([torch.tensor(coef_row(P=1.0, B0=10.0 * k)) for k in range(4)]).to(device)
    x = torch.ones(2, 3, device=device)
    out = fused_step(x, x, table[:3], index=torch.tensor([-1, 0], device=device), backend=backend)
    assert torch.equal(out[0], torch.full((3,), 20.0, device=device)) and torch.equal(out[1], torch.zeros(3, device=device))
    out = fused_step(x, x, table[1:], index=torch.tensor([-1, -3], device=device), backend=backend)
    assert torch.equal(out[:, 0], torch.tensor([30.0, 10.0], device=device))
    for bad in ([3, 0], [0, -4], [100000, 0]):
        if device.type == "cpu":
            with pytest.raises(IndexError, match="out of range"):
                fused_step(x, x, table[:3], index=torch.tensor(bad, device=device), backend=backend)
            with pytest.raises(IndexError, match="out of range"):
                dynamic_threshold(x, x, table[:3], index=torch.tensor(bad, device=device), backend=backend)
        else:  # on an accelerator: NaN rows, no out-of-bounds read, no sync
            out = fused_step(x, x, table[:3], index=torch.tensor(bad, device=device), backend=backend)
            assert out[0].isnan().all() != out[1].isnan().all()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (5, 4, 17, 31), (3, 1), (2, 1000)], ids=str)
@pytest.mark.parametrize("source", ["one", "two", "philox", "rng"])
def test_sumsq_matches_reference(backend, dtype, shape, source):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, source)) % 2**31)
    a = _randn(shape, dtype, gen, device)
    b = _randn(shape, dtype, gen, device) if source == "two" else None
    seed = 1234567 if source == "philox" else None
    rng = torch.tensor([-5, 2**40], device=device) if source == "rng" else None
    got = sumsq(a, b, seed=seed, offset=3, rng=rng, backend=backend)
    ref = sumsq_reference(a, b, seed, 3, rng)
    got = torch.stack(got) if isinstance(got, tuple) else got[None]
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # sums of N squares: relative error grows like sqrt(N) * eps of the accumulator
    tol = 1e-10 if dtype == torch.float64 and source in ("one", "two") else 2e-5  # Philox normals: float32 math
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (5, 4, 17, 31), (4, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("mode", ["x0_only", "single", "index_batch", "m2"])
@pytest.mark.parametrize("ratio", [0.995, 0.5, 1.0])
def test_dynamic_threshold_matches_reference(backend, dtype, shape, mode, ratio):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(hash((backend, str(dtype), shape, mode, ratio)) % 2**31)
    B = shape[0]
    x = _randn(shape, dtype, gen, device, 3.0)
    m = coef = index = m2 = None
    if mode != "x0_only":
        m = _randn(shape, dtype, gen, device, 3.0)
        coef, index = _make_coef("index_batch" if mode == "index_batch" else "single", B, gen, device, clip=False)
        m2 = _randn(shape, dtype, gen, device, 3.0) if mode == "m2" else None
    max_val = 2.5
    got = dynamic_threshold(x, m, coef, index=index, m2=m2, ratio=ratio, max_val=max_val, backend=backend)
    ref = dynamic_threshold(x, m, coef, index=index, m2=m2, ratio=ratio, max_val=max_val, backend="reference")
    assert got.shape == (B,)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def test_dynamic_threshold_reference_is_torch_quantile():
    """The quantile rule agrees with torch.quantile in float64, where torch's own rank arithmetic is exact."""
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 1000, 4099):
        x = torch.randn(3, n, generator=gen, dtype=torch.float64) * 4
        for ratio in (0.5, 0.9, 0.995, 1.0, 1 / 3):
            lo, hi, wt = quantile_rank(ratio, n)
            got = dynamic_threshold_reference(x, None, None, None, 0, 0, None, lo, hi, wt, math.inf)
            expect = torch.quantile(x.abs(), ratio, dim=1).clamp(min=1.0)
            torch.testing.assert_close(got, expect, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
def test_dynamic_threshold_nan_and_inf(backend):
    """Any NaN in a sample gives NaN; inf values give inf where the interpolation would give inf - inf."""
    device = backend_device(backend)
    x = torch.tensor([[1.5, 2.0, 3.0, 4.0], [2.0, math.nan, 3.0, 4.0], [2.0, 3.0, math.inf, math.inf],
                      [2.0, 3.0, 5.0, math.inf]], device=device)
    got = dynamic_threshold(x, ratio=0.9, max_val=math.inf, backend=backend)
    assert got[1].isnan() and got[2] == math.inf and got[3] == math.inf
    assert got[0].item() == pytest.approx(3.7, rel=1e-6)


def test_quantile_rank_is_exact_at_large_n():
    """float64 rank: the weight at N = 3*2^20 is 0.5 (float32 would give 0.365), and ratio = 1 hits N-1 exactly."""
    n = 3 * 2 ** 20
    lo, hi, wt = quantile_rank(0.5, n)
    assert (lo, hi, wt) == ((n - 1) // 2, (n - 1) // 2 + 1, 0.5)
    assert quantile_rank(1.0, 2 ** 24 + 4) == (2 ** 24 + 3, 2 ** 24 + 3, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params(("reference", "cpu")))
def test_dynamic_threshold_beyond_2_24_elements(backend):
    """Ratio 1 on N > 2^24 elements reads the last sorted element (once an out-of-bounds read on cpu)."""
    x = torch.full((2, 2 ** 24 + 4), 1.5)
    x[1] = 7.0
    got = dynamic_threshold(x, ratio=1.0, max_val=math.inf, backend=backend)
    assert got.tolist() == [1.5, 7.0]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 7, 13), (1000,), (2, 3, 5)], ids=str)
def test_philox_normal_matches_reference(backend, dtype, shape):
    _skip_unsupported(backend, dtype)
    device = backend_device(backend)
    for seed, offset in [(0, 0), (2**64 - 1, 2**64 - 1), (987654321123, 17)]:
        got = philox_normal(shape, seed=seed, offset=offset, dtype=dtype, device=device, backend=backend)
        ref = torch.empty(shape, dtype=dtype, device=device)
        philox_normal_reference(ref, seed, offset, None)
        # float32 math on every backend (libm rounding differs), then one rounding to dtype
        torch.testing.assert_close(got, ref, **TOL[torch.float32 if dtype == torch.float64 else dtype])


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
def test_rng_tensor_is_seed_and_offset(backend):
    """rng = [seed bits, base] with host offset o draws what seed=seed, offset=base+o draws (mod 2^64)."""
    from pydiff.ops import seed_to_int64

    device = backend_device(backend)
    shape = (3, 2, 9, 5)
    for seed, base, off in [(42, 5, 0), (2**64 - 3, 2**63 + 11, 7), (2**63, 2**64 - 2, 5)]:
        rng = torch.tensor([seed_to_int64(seed), seed_to_int64(base)], device=device)
        want = philox_normal(shape, seed=seed, offset=(base + off) % 2**64, device=device, backend=backend)
        got = philox_normal(shape, rng=rng, offset=off, device=device, backend=backend)
        assert torch.equal(got, want)
        coef = torch.tensor(coef_row(C=1.0), device=device)
        x = torch.zeros(shape, device=device)
        assert torch.equal(fused_step(x, x, coef, rng=rng, offset=off, backend=backend), want)
        torch.testing.assert_close(sumsq(x, rng=rng, offset=off, backend=backend)[1],
                                   want.reshape(3, -1).square().sum(1), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("backend", backend_params(ALL_BACKENDS))
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
