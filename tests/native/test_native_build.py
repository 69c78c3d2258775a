"""Tests of the native build itself: the compiled modules import and carry the column layout, Philox
matches the published known-answer vectors and the header's host function bit for bit, the raw-pointer
entry points check their arguments, every CPU ISA level gives bit-identical results, and the C++ kernels
follow docs/ops.md at sizes that exercise the OpenMP chunking. The op-by-op comparison of every backend
against the reference is tests/ops/test_backends_agree.py.
"""
import importlib
import itertools
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from pydiff.ops.columns import COL, COLUMNS, K_MAX, NCOEF, coef_row
from pydiff.ops.philox import philox4x32_10_reference

HAS_CUDA = torch.cuda.is_available()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Random123 kat_vectors, philox4x32_10: (counter c0..c3, key k0 k1) -> output
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _nvcc_present():
    if os.environ.get("PYDIFF_BUILD_CUDA", "auto").strip().lower() in ("0", "off", "no", "false"):
        return False
    return any(p and os.path.isfile(p) for p in (os.environ.get("CUDACXX"), shutil.which("nvcc")))


@pytest.fixture(scope="module")
def C():
    return importlib.import_module("pydiff._C")


@pytest.fixture(scope="module")
def cpu():
    from pydiff.ops.backends import cpu
    if not cpu.available():
        pytest.skip(f"cpu backend unavailable: {cpu.unavailable_reason()}")
    return cpu


@pytest.fixture(scope="module")
def C_cuda():
    try:
        return importlib.import_module("pydiff._C_cuda")
    except ImportError:
        pytest.skip("pydiff._C_cuda was not built")


@pytest.fixture
def each_isa(C):
    """Runs the test body once per ISA level this CPU supports; restores the default level afterwards."""
    def run(fn):
        results = {}
        try:
            for isa in C.supported_isas():
                C.set_isa(isa)
                results[isa] = fn()
        finally:
            C.set_isa("")
        return results
    return run


def _bits(t):
    """Bit pattern of a float tensor, for exact comparisons that also cover NaN and -0.0."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


# ---------------------------------------------------------------------------------------------- build

def test_cpu_module_imports(C, cpu):
    assert C.FLOAT32 != C.FLOAT16 and C.NCOEF == NCOEF and C.K_MAX == K_MAX
    assert tuple(C.COLUMNS) == COLUMNS
    info = C.build_info()
    assert info["openmp"] > 0 and info["max_threads"] >= 1
    assert cpu.available() and cpu.unavailable_reason() is None


def test_isa_levels(C):
    compiled, supported = C.compiled_isas(), C.supported_isas()
    assert "baseline" in compiled and "baseline" in supported
    assert set(supported) <= set(compiled)
    assert C.isa() == supported[0]  # the best level is chosen by default
    with pytest.raises(ValueError, match="unknown CPU ISA level"):
        C.set_isa("sse9")
    assert C.isa() == supported[0]


@pytest.mark.parametrize("env,ok", [("baseline", True), ("sse9", False)])
def test_isa_environment_variable(env, ok):
    code = ("from pydiff.ops.backends import cpu\n"
            "print(cpu.available(), cpu._C.isa() if cpu.available() else cpu.unavailable_reason())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYDIFF_CPU_ISA": env})
    assert res.returncode == 0, res.stderr
    if ok:
        assert res.stdout.split() == ["True", env]
    else:
        assert res.stdout.startswith("False") and "PYDIFF_CPU_ISA" in res.stdout and "sse9" in res.stdout


def test_stale_column_layout_is_reported():
    from pydiff.ops.backends import _native
    good = types.SimpleNamespace(__name__="fake", COLUMNS=COLUMNS, K_MAX=K_MAX)
    assert _native.layout_mismatch(good) is None
    old = types.SimpleNamespace(__name__="fake", COLUMNS=("P", "Q", "A", "D", "B0"), K_MAX=3)
    reason = _native.layout_mismatch(old)
    assert "stale build: columns differ" in reason and "rebuild" in reason


@pytest.mark.skipif(not _nvcc_present(), reason="nvcc not found (or PYDIFF_BUILD_CUDA=0)")
def test_cuda_module_built_when_nvcc_present():
    # cudart is linked statically: the module imports without a GPU or driver
    try:
        mod = importlib.import_module("pydiff._C_cuda")
    except ImportError:
        pytest.skip("pydiff._C_cuda not built in this checkout (PYDIFF_BUILD_CUDA=1 python setup.py build_ext)")
    assert mod.device_count() >= 0
    assert mod.runtime_version() > 0
    assert mod.archs()
    assert tuple(mod.COLUMNS) == COLUMNS and mod.K_MAX == K_MAX


def test_cuda_backend_available_matches_torch():
    from pydiff.ops.backends import cuda
    if not HAS_CUDA:
        assert not cuda.available() and cuda.unavailable_reason()


@pytest.mark.parametrize("module", ["pydiff.ops.backends.cpu", "pydiff.ops.backends.cuda"])
def test_launchers_import_without_native_modules(module):
    code = (
        "import sys; sys.modules['pydiff._C'] = None; sys.modules['pydiff._C_cuda'] = None\n"
        f"import {module} as m; assert m.available() is False; print('reason:', m.unavailable_reason())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "reason: pydiff._C" in res.stdout, res.stderr


# ---------------------------------------------------------------------------------------------- Philox

@pytest.mark.parametrize("ctr,key,expect", PHILOX_KAT)
def test_philox_known_answers_cpu(C, ctr, key, expect):
    assert C.philox4x32_10(*ctr, *key) == expect


@pytest.mark.parametrize("ctr,key,expect", PHILOX_KAT)
def test_philox_known_answers_cuda_module(C_cuda, ctr, key, expect):
    assert C_cuda.philox4x32_10(*ctr, *key) == expect


@pytest.mark.parametrize("ctr,key,expect", PHILOX_KAT)
def test_philox_known_answers_reference(ctr, key, expect):
    words = philox4x32_10_reference(*(torch.tensor([c], dtype=torch.int64) for c in ctr), *key)
    assert tuple(int(w) for w in words) == expect


def test_philox_counter_layout(C):
    """z(key, o, g) uses key = (k lo, k hi), ctr = (c lo, c hi, o lo, o hi) with c = g >> 2; words (r0, r1) for
    g mod 4 in {0, 1}, (r2, r3) for {2, 3}; z is within float32 rounding of sqrt(-2 ln u1) cos(2 pi u2) (even g)
    or sin(2 pi u2) (odd g) computed in double."""
    seed, offset = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    for g in (0, 1, 2, 3, 4, 2**32 + 5, 2**34 + 6, 2**63 + 7, 2**64 - 1):
        c = g >> 2
        r = C.philox4x32_10(c & 0xFFFFFFFF, c >> 32, offset & 0xFFFFFFFF, offset >> 32, seed & 0xFFFFFFFF, seed >> 32)
        a, b = (r[2], r[3]) if g & 2 else (r[0], r[1])
        u1 = ((a >> 8) + 0.5) * 2.0 ** -24
        u2 = ((b >> 8) + 0.5) * 2.0 ** -24
        trig = math.sin if g & 1 else math.cos
        z = math.sqrt(-2.0 * math.log(u1)) * trig(2 * math.pi * u2)
        assert C.philox_normal_value(seed, offset, g) == pytest.approx(z, rel=1e-5, abs=1e-6)


def test_philox_normal_extremes(cpu):
    # u1 is at least 2^-25: |z| <= sqrt(-2 ln 2^-25) ~ 5.89, never inf/nan
    out = torch.empty(1 << 16)
    cpu.philox_normal(out, 2**64 - 1, 2**64 - 1, None)
    assert torch.isfinite(out).all() and out.abs().max() < 5.9
    assert abs(out.mean().item()) < 0.02 and abs(out.std().item() - 1) < 0.02


def test_cpu_philox_bit_identical_to_header_host_function(C, cpu, each_isa):
    """The vectorised kernels give exactly pydiff_math.h's scalar z, at every ISA level (so cpu and cuda,
    which compiles the same function, agree bit for bit)."""
    n = 4099  # g beyond 2^32 is covered by test_philox_counter_layout (it would need a 16 GB tensor here)
    for key, off in ((2**63 + 12345, 2**40 + 3), (2**64 - 1, 2**32 - 1), (0, 0)):
        expect = torch.tensor([C.philox_normal_value(key, off, g) for g in range(n)], dtype=torch.float32)

        def run():
            out = torch.empty(n)
            cpu.philox_normal(out, key, off, None)
            return out
        for isa, got in each_isa(run).items():
            assert torch.equal(_bits(got), _bits(expect)), (isa, key, off)


def test_rng_tensor_and_host_seed_give_the_same_noise(cpu):
    """rng = [key bits, base]: key = uint64(rng[0]), ctr_offset = rng[1] + offset (mod 2^64)."""
    key, base, off = 2**64 - 5, 2**63 + 9, 2**63 + 100
    rng = torch.tensor([key - 2**64, base - 2**64], dtype=torch.int64)  # the int64 bit patterns
    ctr = (base + off) % 2**64
    a, b = torch.empty(3, 1000), torch.empty(3, 1000)
    cpu.philox_normal(a, key, ctr, None)
    cpu.philox_normal(b, None, off, rng)
    assert torch.equal(_bits(a), _bits(b))
    x = torch.randn(3, 1000)
    coef = torch.tensor(coef_row(P=1.0, B0=0.5, C=0.25), dtype=torch.float32).reshape(1, -1)
    outs = []
    for seed, offset, r in ((key, ctr, None), (None, off, rng)):
        o = torch.empty_like(x)
        cpu.fused_step(x, x, coef, None, 0, 0, o, None, (), None, seed, offset, r, None, None, None)
        outs.append(o)
    assert torch.equal(outs[0], outs[1])
    s1 = cpu.sumsq(x, None, key, ctr, None)
    s2 = cpu.sumsq(x, None, None, off, rng)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(s1[1], (a.double() ** 2).sum(1).float(), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------- argument checks

def _fs_args(C, **kw):
    x = torch.zeros(2, 8)
    coef = torch.zeros(1, NCOEF)
    args = dict(dtype=C.FLOAT32, B=2, N=8, x=x.data_ptr(), m=x.data_ptr(), coef=coef.data_ptr(), R=1, index=0,
                index_stride=0, row_stride=0, out=x.data_ptr(), w_out=0, hist=[], noise=0, seed=None, offset=0,
                rng=0, threshold=0, m2=0, var=0)
    args.update(kw)
    return args, (x, coef)


@pytest.mark.parametrize("bad,exc", [
    (dict(dtype=7), ValueError),
    (dict(B=-1), ValueError),
    (dict(x=0), ValueError),
    (dict(out=0), ValueError),
    (dict(coef=0), ValueError),
    (dict(R=0), ValueError),
    (dict(index_stride=2), ValueError),
    (dict(row_stride=3), ValueError),
    (dict(row_stride=1, R=1), ValueError),      # one row per sample needs R >= B
    (dict(hist=[8] * 7), ValueError),           # at most K_MAX = 6
    (dict(hist=[0]), ValueError),
    (dict(noise=8, seed=1), ValueError),        # noise, seed and rng are exclusive
    (dict(noise=8, rng=8), ValueError),
    (dict(seed=1, rng=8), ValueError),
    (dict(seed=-1), TypeError),
    (dict(seed=2**64), TypeError),
    (dict(offset=2**64), TypeError),
])
def test_fused_step_argument_checks(C, bad, exc):
    args, keep = _fs_args(C, **bad)
    with pytest.raises(exc):
        C.fused_step(**args)


@pytest.mark.parametrize("rows", [[0, 5], [-3, 0], [0, 2**62]])
def test_fused_step_index_out_of_range(C, rows):
    idx = torch.tensor(rows, dtype=torch.int64)
    coef = torch.zeros(2, NCOEF)
    args, keep = _fs_args(C, index=idx.data_ptr(), index_stride=1, coef=coef.data_ptr(), R=2)
    with pytest.raises(IndexError):
        C.fused_step(**args)


def test_fused_step_negative_index_wraps(cpu):
    coef = torch.stack([torch.tensor(coef_row(P=1.0, B0=1.0)), torch.tensor(coef_row(P=1.0, B0=2.0))]).float()
    x = torch.ones(2, 5)
    out = torch.empty_like(x)
    cpu.fused_step(x, x, coef, torch.tensor([-1, -2]), 1, 0, out, None, (), None, None, 0, None, None, None, None)
    assert torch.equal(out, torch.tensor([[2.0] * 5, [1.0] * 5]))


def test_empty_sizes_are_noops(C):
    C.fused_step(C.FLOAT32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, [], 0, None, 0)
    C.philox_normal(C.FLOAT32, 0, 0, 1, 2)
    C.sumsq(C.FLOAT32, 0, 0, 0, 0, None, 0, 0, 0)


def test_other_argument_checks(C):
    with pytest.raises(ValueError):
        C.sumsq(C.FLOAT32, 1, 4, 8, 8, 1, 0, 0, 8)  # b and seed
    with pytest.raises(ValueError):
        C.sumsq(C.FLOAT32, 1, 4, 8, 0, 1, 0, 8, 8)  # seed and rng
    with pytest.raises(ValueError):  # hi beyond the sample
        C.dynamic_threshold(C.FLOAT32, 1, 4, 8, 0, 0, 0, 0, 0, 0, 0, 3, 4, 0.5, 1.0, 8)
    with pytest.raises(ValueError):  # hi more than one rank above lo
        C.dynamic_threshold(C.FLOAT32, 1, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0.5, 1.0, 8)
    with pytest.raises(ValueError):  # weight outside [0, 1]
        C.dynamic_threshold(C.FLOAT32, 1, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1.5, 1.0, 8)
    with pytest.raises(ValueError):
        C.philox_normal(9, 4, 8, 1, 2)
    with pytest.raises(ValueError):
        C.philox_normal(C.FLOAT32, 4, 8, None, 2)  # neither seed nor rng


def test_cuda_entry_points_reject_float64(C_cuda):
    # checked before anything touches the GPU, so this runs without one
    with pytest.raises(ValueError):
        C_cuda.fused_step(C_cuda.FLOAT64, 1, 4, 8, 8, 8, 1, 0, 0, 0, 8, 0, [], 0, None, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        C_cuda.philox_normal(C_cuda.FLOAT64, 4, 8, 1, 2, 0, 0, 0)


# ---------------------------------------------------------------------------------------------- the contract on cpu

def _formula(x, m, coef, hist=(), m2=None, var=None, z=None, threshold=None):
    """docs/ops.md's fused_step written out in torch (one row per sample), returns (out, w)."""
    T = torch.float64 if x.dtype == torch.float64 else torch.float32
    view = (x.shape[0],) + (1,) * (x.ndim - 1)
    c = lambda name: coef[:, COL[name]].to(T).view(view)  # noqa: E731
    xf, mf = x.to(T), m.to(T)
    me = mf if m2 is None else c("M1") * mf + c("M2") * m2.to(T)
    w = c("S") * (c("P") * xf + c("Q") * me)
    if threshold is None:
        w = torch.maximum(torch.minimum(w, c("CLIP")), -c("CLIP"))
    else:
        s = threshold.to(T).view(view)
        w = torch.maximum(torch.minimum(w, s), -s) / s
    acc = c("A") * xf + c("D") * me + c("B0") * w
    for k, h in enumerate(hist, start=1):
        acc = acc + c(f"B{k}") * h.to(T)
    e = None if var is None else torch.exp(c("VA") + c("VB") * var.to(T))
    if m2 is not None:
        acc = acc + (c("G") * m2.to(T) if e is None else c("G") * (e * e) * m2.to(T))
    if z is not None:
        acc = acc + (c("C") * z.to(T) if e is None else c("C") * e * z.to(T))
    return (c("O") * acc).to(x.dtype), w.to(x.dtype)


def _coef(B, gen, T):
    coef = torch.randn(B, NCOEF, generator=gen, dtype=torch.float64)
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.5
    coef[:, COL["VB"]] *= 0.3
    return coef.to(T)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", range(K_MAX + 1))
def test_fused_step_history_count(cpu, dtype, K):
    """K = 0..6 history tensors (with m2 and a noise tensor): bitwise the contract's formula."""
    gen = torch.Generator().manual_seed(K)
    shape = (3, 5, 41)
    mk = lambda: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    x, m, m2, z = mk(), mk(), mk(), mk()
    hist = tuple(mk() for _ in range(K))
    T = torch.float64 if dtype == torch.float64 else torch.float32
    coef = _coef(3, gen, T)
    out, w = torch.empty_like(x), torch.empty_like(x)
    cpu.fused_step(x, m, coef, None, 0, 1, out, w, hist, z, None, 0, None, None, m2, None)
    e_out, e_w = _formula(x, m, coef, hist, m2=m2, z=z)
    assert torch.equal(out, e_out) and torch.equal(w, e_w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fused_step_variance_input(cpu, dtype):
    """e = exp(VA + VB*v) scales the guidance and noise terms; exp may differ from torch's by an ulp."""
    gen = torch.Generator().manual_seed(11)
    shape = (2, 3000)
    mk = lambda: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    x, m, m2, v, z = mk(), mk(), mk(), mk(), mk()
    coef = _coef(2, gen, dtype)
    out = torch.empty_like(x)
    cpu.fused_step(x, m, coef, None, 0, 1, out, None, (), z, None, 0, None, None, m2, v)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(out, _formula(x, m, coef, m2=m2, var=v, z=z)[0], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("thr", [False, True])
def test_nan_clip_bound_gives_nan(cpu, dtype, thr):
    """clamp propagates a NaN bound (CLIP or threshold) like torch.clamp with tensor bounds."""
    x = torch.linspace(-3, 3, 64, dtype=torch.float64).to(dtype).reshape(2, 32)
    T = torch.float64 if dtype == torch.float64 else torch.float32
    coef = torch.tensor(np.stack([coef_row(P=1.0, B0=1.0, CLIP=math.nan), coef_row(P=1.0, B0=1.0, CLIP=1.0)]),
                        dtype=T)
    threshold = torch.tensor([math.nan, 2.0], dtype=T) if thr else None
    out, w = torch.empty_like(x), torch.empty_like(x)
    cpu.fused_step(x, x, coef, None, 0, 1, out, w, (), None, None, 0, None, threshold, None, None)
    assert torch.isnan(out[0]).all() and torch.isnan(w[0]).all()
    expect = torch.clamp(x[1].to(T), -2, 2) / 2 if thr else torch.clamp(x[1].to(T), -1, 1)
    assert torch.equal(out[1], expect.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinite_clip_leaves_every_bit(cpu, each_isa, dtype):
    """Rows with CLIP = +inf (the default, no clip) take a kernel path without the clamp; clamping by +-inf
    is the identity, so every level gives the formula's bits there and the same bits as baseline, with
    NaN, +-inf and -0.0 inputs, finite-CLIP rows in the same call, and a length that leaves vector tails."""
    gen = torch.Generator().manual_seed(31)
    shape = (4, 1013)
    T = torch.float64 if dtype == torch.float64 else torch.float32
    mk = lambda: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    x, m, m2, z = mk(), mk(), mk(), mk()
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, 60000.0, -60000.0], dtype=torch.float64)
    x[:, :8] = special.to(dtype)
    m[:, 8:16] = special.to(dtype)
    hist = (mk(), mk())
    coef = _coef(4, gen, T)
    coef[0::2, COL["CLIP"]] = math.inf
    coef[3, COL["S"]] = 1e30  # finite CLIP rows clip some values
    cases = [((), {}), ((), {"z": z}), (hist, {"m2": m2}), (hist[:1], {"m2": m2, "z": z})]

    def run():
        res = []
        for h, o in cases:
            out, w = torch.empty_like(x), torch.empty_like(x)
            cpu.fused_step(x, m, coef, None, 0, 1, out, w, h, o.get("z"), None, 0, None, None, o.get("m2"), None)
            res.append((out, w))
        return res
    results = each_isa(run)
    for isa, res in results.items():
        for (h, o), (out, w), (b_out, b_w) in zip(cases, res, results["baseline"]):
            assert torch.equal(_bits(out), _bits(b_out)) and torch.equal(_bits(w), _bits(b_w)), isa
            e_out, e_w = _formula(x, m, coef, h, m2=o.get("m2"), z=o.get("z"))
            for got, exp in ((out, e_out), (w, e_w)):
                nan = torch.isnan(exp)
                assert torch.equal(torch.isnan(got), nan), isa
                assert torch.equal(_bits(got)[~nan], _bits(exp)[~nan]), isa


def test_fused_step_large_threads_and_chunks(cpu):
    """N = 70085: several 16384-element chunks and a ragged tail, every thread count gives the same bits."""
    gen = torch.Generator().manual_seed(3)
    shape = (3, 5, 131, 107)
    x = torch.randn(shape, generator=gen)
    m = torch.randn(shape, generator=gen)
    hist = (torch.randn(shape, generator=gen),)
    coef = _coef(3, gen, torch.float32)
    e_out, e_w = _formula(x, m, coef, hist)
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out, w = torch.empty_like(x), torch.empty_like(x)
            cpu.fused_step(x, m, coef, None, 0, 1, out, w, hist, None, None, 0, None, None, None, None)
            assert torch.equal(out, e_out) and torch.equal(w, e_w)
            assert torch.equal(cpu.sumsq(x, None, 9, 1, None), cpu.sumsq(x, None, 9, 1, None))
    finally:
        torch.set_num_threads(old)


def test_fused_step_aliasing(cpu):
    """out may be x and w_out may be m (identical storage): each element is read before it is written."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 40000, generator=gen)
    m = torch.randn(4, 40000, generator=gen)
    coef = _coef(4, gen, torch.float32)
    e_out, e_w = _formula(x, m, coef)
    cpu.fused_step(x, m, coef, None, 0, 1, x, m, (), None, None, 0, None, None, None, None)
    assert torch.equal(x, e_out) and torch.equal(m, e_w)


def test_dynamic_threshold_huge_sample_top_rank(cpu):
    """ratio = 1 at N > 2^24: lo = hi = N - 1 (a float32 rank would round and read past the sample)."""
    N = 2**24 + 4
    x = torch.full((2, N), 1.5)
    x[1] = 7.0
    pos = 1.0 * (N - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, N - 1)
    s = cpu.dynamic_threshold(x, None, None, None, 0, 0, None, lo, hi, pos - lo, math.inf)
    assert s.tolist() == [1.5, 7.0]


def test_dynamic_threshold_quantile_rule(cpu):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 1001, generator=gen, dtype=torch.float64) * 3
    x[2, 17] = math.inf
    x[2, 18] = -math.inf  # v[hi] == v[lo] == inf at ratio 1
    x[3, 5] = math.nan
    for ratio in (0.0, 0.37, 0.995, 1.0):
        pos = ratio * 1000
        lo = int(math.floor(pos))
        hi = min(lo + 1, 1000)
        s = cpu.dynamic_threshold(x, None, None, None, 0, 0, None, lo, hi, pos - lo, 5.0)
        q = torch.quantile(x.abs(), ratio, dim=1)
        assert torch.equal(s[:2], torch.clamp(q[:2], min=1.0, max=5.0))
        assert math.isnan(s[3].item())
        if ratio == 1.0:
            assert s[2].item() == 5.0


# ---------------------------------------------------------------------------------------------- ISA levels

def test_isa_levels_are_bit_identical(cpu, each_isa):
    """Every level this CPU runs gives the same bits: no FMA contraction, only correctly rounded operations,
    the same polynomial log/cos."""
    gen = torch.Generator().manual_seed(21)
    shape = (3, 20011)
    cases = []
    for dtype in DTYPES:
        T = torch.float64 if dtype == torch.float64 else torch.float32
        mk = lambda: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
        x, m, m2, v, z = mk(), mk(), mk(), mk(), mk()
        x[0, :7] = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, 65504.0], dtype=torch.float64).to(dtype)
        hist = tuple(mk() for _ in range(K_MAX))
        coef = _coef(3, gen, T)
        thr = torch.tensor([1.5, 2.0, 0.7], dtype=T)
        for K, opts in itertools.product((0, 3, 6), ({}, {"m2": m2}, {"z": z}, {"seed": 77}, {"thr": thr},
                                                      {"m2": m2, "seed": 5, "thr": thr})):
            cases.append((dtype, x, m, coef, hist[:K], opts))

    def run():
        res = []
        for dtype, x, m, coef, hist, o in cases:
            out, w = torch.empty_like(x), torch.empty_like(x)
            cpu.fused_step(x, m, coef, None, 0, 1, out, w, hist, o.get("z"), o.get("seed"), 3, None, o.get("thr"),
                           o.get("m2"), None)
            alone = torch.empty_like(x)  # without w_out: the other store path of the half types
            cpu.fused_step(x, m, coef, None, 0, 1, alone, None, hist, o.get("z"), o.get("seed"), 3, None,
                           o.get("thr"), o.get("m2"), None)
            res += [out, w, alone]
        res += list(cpu.sumsq(cases[0][1], cases[0][2], None, 0, None))
        res += list(cpu.sumsq(cases[0][1], None, 3, 4, None))
        res.append(cpu.dynamic_threshold(cases[0][1][1:], cases[0][2][1:], cases[0][3], None, 0, 0, None, 100, 101,
                                         0.25, 3.0))
        for dtype in DTYPES:
            out = torch.empty(5, 3001, dtype=dtype)
            cpu.philox_normal(out, 2**64 - 1, 12, None)
            res.append(out)
        return res
    results = each_isa(run)
    base = results["baseline"]
    for isa, res in results.items():
        for k, (a, b) in enumerate(zip(res, base)):
            assert torch.equal(_bits(a), _bits(b)), (isa, k)


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_cuda_matches_cpu_on_current_stream(C_cuda, cpu):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    from pydiff.ops.backends import cuda
    gen = torch.Generator().manual_seed(5)
    shape = (3, 4, 65, 67)
    mk = lambda: torch.randn(shape, generator=gen)  # noqa: E731
    x, m, m2 = mk(), mk(), mk()
    hist = tuple(mk() for _ in range(K_MAX))
    coef = _coef(3, gen, torch.float32)
    ref, ref_w = torch.empty_like(x), torch.empty_like(x)
    cpu.fused_step(x, m, coef, None, 0, 1, ref, ref_w, hist, None, 77, 3, None, None, m2, None)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        xd, md, m2d, cd = x.cuda(), m.cuda(), m2.cuda(), coef.cuda()
        hd = tuple(h.cuda() for h in hist)
        wd = torch.empty_like(xd)
        cuda.fused_step(xd, md, cd, None, 0, 1, xd, wd, hd, None, 77, 3, None, None, m2d, None)
    s.synchronize()
    # same header, same rounding (--fmad=false): equal bits, the Philox noise included
    assert torch.equal(xd.cpu(), ref) and torch.equal(wd.cpu(), ref_w)


@pytest.mark.gpu
def test_cuda_index_out_of_range_gives_nan_rows(C_cuda):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    from pydiff.ops.backends import cuda
    x = torch.ones(3, 1000, device="cuda")
    coef = torch.tensor(coef_row(P=1.0, B0=1.0), dtype=torch.float32, device="cuda").reshape(1, -1)
    out, w = torch.empty_like(x), torch.empty_like(x)
    idx = torch.tensor([0, 1, -2], device="cuda")
    cuda.fused_step(x, x, coef, idx, 1, 0, out, w, (), None, None, 0, None, None, None, None)
    assert torch.equal(out[0], x[0]) and torch.isnan(out[1:]).all() and torch.isnan(w[1:]).all()


@pytest.mark.gpu
def test_cuda_rng_tensor_is_read_on_device(C_cuda, cpu):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    from pydiff.ops.backends import cuda
    rng = torch.tensor([-3, 2**62], dtype=torch.int64)
    a = torch.empty(4, 5001)
    cpu.philox_normal(a, None, 9, rng)
    b = torch.empty(4, 5001, device="cuda")
    cuda.philox_normal(b, None, 9, rng.cuda())
    assert torch.equal(_bits(b.cpu()), _bits(a))


@pytest.mark.gpu
def test_cuda_sumsq_is_deterministic(C_cuda, cpu):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    from pydiff.ops.backends import cuda
    a = torch.randn(4, 1 << 20, device="cuda")
    r1 = cuda.sumsq(a, None, 1, 2, None)
    r2 = cuda.sumsq(a, None, 1, 2, None)
    assert torch.equal(r1, r2)
    torch.testing.assert_close(r1.cpu(), cpu.sumsq(a.cpu(), None, 1, 2, None), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_dynamic_threshold_matches_cpu(C_cuda, cpu):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    from pydiff.ops.backends import cuda
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4097, generator=gen) * 2
    m = torch.randn(3, 4097, generator=gen)
    coef = _coef(3, gen, torch.float32)
    for lo, hi, wt in ((4000, 4001, 0.3), (4096, 4096, 0.0), (10, 11, 0.75)):
        ref = cpu.dynamic_threshold(x, m, coef, None, 0, 1, None, lo, hi, wt, 4.0)
        got = cuda.dynamic_threshold(x.cuda(), m.cuda(), coef.cuda(), None, 0, 1, None, lo, hi, wt, 4.0)
        assert torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_conversions_every_bit_pattern(cpu, each_isa, dtype):
    """Every fp16/bf16 bit pattern through the block conversions of the vector levels and the scalar ones
    of baseline: w = x reads and writes each value unchanged (NaN canonicalized), out = x/3 rounds every
    value once (the zero coefficients times an infinite x give NaN there, so out is checked on finite x);
    a length that is not a multiple of the vector width exercises the scalar tails."""
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)[:-5].reshape(1, -1).contiguous()
    m = torch.full_like(x, -0.0)  # Q*m = -0.0 keeps the sign of a zero x
    coef = torch.tensor(coef_row(P=1.0, A=1.0 / 3.0), dtype=torch.float32).reshape(1, -1)

    def run():
        out, w = torch.empty_like(x), torch.empty_like(x)
        cpu.fused_step(x, m, coef, None, 0, 0, out, w, (), None, None, 0, None, None, None, None)
        return out, w
    results = each_isa(run)
    expect_out = (x.float() * coef[0, COL["A"]]).to(dtype)
    nan, fin = torch.isnan(x), torch.isfinite(x)
    for isa, (out, w) in results.items():
        assert torch.equal(torch.isnan(w), nan), isa
        assert torch.equal(_bits(w)[~nan], _bits(x)[~nan]), isa
        assert torch.equal(_bits(out)[fin], _bits(expect_out)[fin]), isa
        assert torch.equal(_bits(out), _bits(results["baseline"][0])), isa
        assert torch.equal(_bits(w), _bits(results["baseline"][1])), isa


_BF16_CASES = """
import torch
from pydiff.ops.backends import cpu
from pydiff.ops.columns import coef_row
cpu._C.set_isa("avx512")
x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)[:-5].reshape(1, -1)
m = torch.full_like(x, -0.0)
coef = torch.tensor(coef_row(P=1.0, A=1.0 / 3.0), dtype=torch.float32).reshape(1, -1)
res = []
ddim = coef_row(P=1.0, Q=-0.5, S=1.3, A=1e-38, D=0.7, B0=0.9, C=0.2, CLIP=2.0)
for c in (coef, torch.tensor(ddim, dtype=torch.float32).reshape(1, -1)):
    for z in (None, m.clone().fill_(0.5)):
        out, w = torch.empty_like(x), torch.empty_like(x)
        cpu.fused_step(x, m, c, None, 0, 0, out, w, (), z, None, 0, None, None, None, None)
        res += [out.view(torch.int16), w.view(torch.int16)]
"""


def test_avx512_bf16_integer_rounding_matches_avx512bf16(C, tmp_path):
    """The avx512 level's two bf16 roundings give the same bits: vcvtneps2bf16 (used where the CPU has
    AVX512-BF16; it flushes denormals and keeps NaN payloads, which the kernel fixes up) and the integer
    rounding (PYDIFF_CPU_AVX512BF16=0), on every bf16 bit pattern, with and without clip and noise; the
    A = 1e-38 row makes denormal float32 results."""
    if "avx512" not in C.supported_isas():
        pytest.skip("this CPU has no AVX-512")
    path = tmp_path / "int.pt"
    code = _BF16_CASES + f"torch.save(res, {str(path)!r})\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYDIFF_CPU_AVX512BF16": "0"})
    assert proc.returncode == 0, proc.stderr
    scope = {}
    try:
        exec(_BF16_CASES, scope)
    finally:
        C.set_isa("")
    got = torch.load(path)
    assert len(got) == len(scope["res"]) == 8
    for k, (a, b) in enumerate(zip(got, scope["res"])):
        assert torch.equal(a, b), k
