"""Tests of the native build itself: the compiled modules import, Philox matches the published
known-answer vectors, the raw-pointer entry points check their arguments, and the C++ kernels agree
with the reference at sizes that exercise the OpenMP chunking. The op-by-op comparison of every backend
against the reference is tests/test_ops.py.
"""
import importlib
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from pydiff.ops import COL, NCOEF, coef_row, fused_step, philox_normal, sumsq
from pydiff.ops.philox import philox4x32_10_reference

HAS_CUDA = torch.cuda.is_available()

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
def C_cuda():
    try:
        return importlib.import_module("pydiff._C_cuda")
    except ImportError:
        pytest.skip("pydiff._C_cuda was not built")


# ---------------------------------------------------------------------------------------------- build

def test_cpu_module_imports(C):
    assert C.FLOAT32 != C.FLOAT16 and C.NCOEF == NCOEF
    info = C.build_info()
    assert info["openmp"] > 0 and info["max_threads"] >= 1
    from pydiff import _backend_cpu
    assert _backend_cpu.available()


@pytest.mark.skipif(not _nvcc_present(), reason="nvcc not found (or PYDIFF_BUILD_CUDA=0)")
def test_cuda_module_built_when_nvcc_present():
    # cudart is linked statically: the module imports without a GPU or driver
    mod = importlib.import_module("pydiff._C_cuda")
    assert mod.device_count() >= 0
    assert mod.runtime_version() > 0
    assert mod.archs()


def test_cuda_backend_available_matches_torch():
    from pydiff import _backend_cuda
    if not HAS_CUDA:
        assert not _backend_cuda.available()


@pytest.mark.parametrize("module", ["pydiff._backend_cpu", "pydiff._backend_cuda"])
def test_launchers_import_without_native_modules(module):
    code = (
        "import sys; sys.modules['pydiff._C'] = None; sys.modules['pydiff._C_cuda'] = None\n"
        f"import {module} as m; assert m.available() is False; print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


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
    """z(seed, offset, g) uses key = (seed lo, seed hi), ctr = (g lo, g hi, offset lo, offset hi)."""
    seed, offset = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    for g in (0, 1, 2**32 + 5, 2**63 + 7):
        r = C.philox4x32_10(g & 0xFFFFFFFF, g >> 32, offset & 0xFFFFFFFF, offset >> 32, seed & 0xFFFFFFFF, seed >> 32)
        u1 = ((r[0] >> 8) + 0.5) * 2.0 ** -24
        u2 = ((r[1] >> 8) + 0.5) * 2.0 ** -24
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)
        assert C.philox_normal_value(seed, offset, g) == pytest.approx(z, rel=1e-5, abs=1e-6)


def test_philox_normal_extremes(C):
    # u1 is at least 2^-25: |z| <= sqrt(-2 ln 2^-25) ~ 5.89, never inf/nan
    out = torch.empty(1 << 16)
    C.philox_normal(C.FLOAT32, out.numel(), out.data_ptr(), 2**64 - 1, 2**64 - 1)
    assert torch.isfinite(out).all() and out.abs().max() < 5.9
    assert abs(out.mean().item()) < 0.02 and abs(out.std().item() - 1) < 0.02


# ---------------------------------------------------------------------------------------------- argument checks

def _fs_args(C, **kw):
    x = torch.zeros(2, 8)
    coef = torch.zeros(1, NCOEF)
    args = dict(dtype=C.FLOAT32, B=2, N=8, x=x.data_ptr(), m=x.data_ptr(), coef=coef.data_ptr(), R=1, index=0,
                index_stride=0, row_stride=0, out=x.data_ptr(), w_out=0, hist=[], noise=0, seed=None, offset=0,
                threshold=0)
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
    (dict(hist=[1, 2, 3, 4]), ValueError),
    (dict(hist=[0]), ValueError),
    (dict(noise=8, seed=1), ValueError),         # noise and seed are exclusive
    (dict(seed=-1), TypeError),
    (dict(seed=2**64), TypeError),
    (dict(offset=2**64), TypeError),
])
def test_fused_step_argument_checks(C, bad, exc):
    args, keep = _fs_args(C, **bad)
    with pytest.raises(exc):
        C.fused_step(**args)


def test_fused_step_index_out_of_range(C):
    idx = torch.tensor([0, 5], dtype=torch.int64)
    args, keep = _fs_args(C, index=idx.data_ptr(), index_stride=1)
    with pytest.raises(IndexError):
        C.fused_step(**args)


def test_fused_step_negative_index_wraps(C):
    coef = torch.stack([torch.tensor(coef_row(P=1.0, B0=1.0)), torch.tensor(coef_row(P=1.0, B0=2.0))]).float()
    x = torch.ones(2, 5)
    out = fused_step(x, x, coef, index=torch.tensor([-1, 0]), backend="cpu")
    assert torch.equal(out, torch.tensor([[2.0] * 5, [1.0] * 5]))


def test_empty_sizes_are_noops(C):
    C.fused_step(C.FLOAT32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, [], 0, None, 0, 0)
    C.philox_normal(C.FLOAT32, 0, 0, 1, 2)


def test_other_argument_checks(C):
    with pytest.raises(ValueError):
        C.sumsq(C.FLOAT32, 1, 4, 8, 8, 1, 0, 8)  # b and seed
    with pytest.raises(ValueError):
        C.dynamic_threshold(C.FLOAT32, 1, 4, 8, 0, 0, 0, 0, 0, 0, 1.5, 1.0, 8)  # ratio > 1
    with pytest.raises(ValueError):
        C.philox_normal(9, 4, 8, 1, 2)


def test_cuda_entry_points_reject_float64(C_cuda):
    # checked before anything touches the GPU, so this runs without one
    with pytest.raises(ValueError):
        C_cuda.fused_step(C_cuda.FLOAT64, 1, 4, 8, 8, 8, 1, 0, 0, 0, 8, 0, [], 0, None, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        C_cuda.philox_normal(C_cuda.FLOAT64, 4, 8, 1, 2, 0, 0)


# ---------------------------------------------------------------------------------------------- C++ vs reference at OpenMP sizes

def _case(dtype, shape, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    m = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    hist = tuple(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    B = shape[0]
    coef = torch.randn(B, NCOEF, generator=gen, dtype=torch.float64)
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.5
    return x, m, hist, coef


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("nh", [0, 2, 3])
def test_fused_step_large_matches_reference_exactly(dtype, nh):
    """Without noise the C++ kernel rounds exactly like the reference (no FMA contraction): bitwise equal."""
    gen = torch.Generator().manual_seed(nh)
    shape = (3, 5, 131, 107)  # N = 70085: several 16384-element chunks and a ragged tail
    x, m, hist, coef = _case(dtype, shape, gen)
    outs = {}
    for be in ("cpu", "reference"):
        w = torch.full_like(x, math.nan)
        o = fused_step(x, m, coef, w_out=w, hist=hist[:nh], backend=be)
        outs[be] = (o, w)
    assert torch.equal(outs["cpu"][0], outs["reference"][0])
    assert torch.equal(outs["cpu"][1], outs["reference"][1])


def test_fused_step_large_philox(C):
    gen = torch.Generator().manual_seed(3)
    shape = (2, 3, 129, 131)
    x, m, hist, coef = _case(torch.float32, shape, gen)
    got = fused_step(x, m, coef, hist=hist[:1], seed=2**63 + 11, offset=5, backend="cpu")
    ref = fused_step(x, m, coef, hist=hist[:1], seed=2**63 + 11, offset=5, backend="reference")
    # the noise may differ by a few float32 ulp (libm vs torch's vectorised log/cos)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_threads_do_not_change_results():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 100003, generator=gen)
    res = []
    for n in (1, 2, 3):
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            res.append((sumsq(x, seed=9, offset=1, backend="cpu"), philox_normal((7, 30001), seed=3, offset=4,
                                                                                  backend="cpu")))
        finally:
            torch.set_num_threads(old)
    for r in res[1:]:
        assert torch.equal(r[0][0], res[0][0][0]) and torch.equal(r[0][1], res[0][0][1])
        assert torch.equal(r[1], res[0][1])


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_cuda_matches_cpu_on_current_stream(C_cuda):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator().manual_seed(5)
    shape = (3, 4, 65, 67)
    x, m, hist, coef = _case(torch.float32, shape, gen)
    ref = fused_step(x, m, coef, hist=hist, seed=77, offset=3, backend="cpu")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        xd, md = x.cuda(), m.cuda()
        hd = tuple(h.cuda() for h in hist)
        got = fused_step(xd, md, coef.cuda(), out=xd, hist=hd, seed=77, offset=3, backend="cuda")
    s.synchronize()
    torch.testing.assert_close(got.cpu(), ref, atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
def test_cuda_sumsq_is_deterministic(C_cuda):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    a = torch.randn(4, 1 << 20, device="cuda")
    r1 = sumsq(a, seed=1, offset=2, backend="cuda")
    r2 = sumsq(a, seed=1, offset=2, backend="cuda")
    assert torch.equal(r1[0], r2[0]) and torch.equal(r1[1], r2[1])
    torch.testing.assert_close(r1[0].cpu(), sumsq(a.cpu(), backend="cpu"), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_philox_normal_matches_cpu(C_cuda):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        got = philox_normal((5, 1001), seed=2**64 - 3, offset=2**40, dtype=dt, device="cuda", backend="cuda")
        ref = philox_normal((5, 1001), seed=2**64 - 3, offset=2**40, dtype=dt, backend="cpu")
        torch.testing.assert_close(got.cpu(), ref, atol=3e-6 if dt == torch.float32 else 2e-2, rtol=1e-2)
