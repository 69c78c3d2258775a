"""The CPU Philox normal, bit for bit: philox_normal, fused_step's in-kernel noise and sumsq's Philox row on the
``cpu`` backend against an independent float32 evaluation of the contract's formula (docs/ops.md, "Philox"),
at every ISA level this CPU runs (the AVX-512 and AVX2 levels draw 16 / 8 normals per vector), 1 and 2 threads,
every dtype, sizes that end mid-vector and mid-block, keys and offsets with their high bits set.

The oracle: the Philox words of the reference (pydiff/ops/philox.py), then pydiff_math.h's uniform, polynomial
log and cos and Box-Muller, one float32 torch operation per C operation in the same order (torch's CPU element-
wise ops round each result to float32, like the kernels' -ffp-contract=off code; the square root is numpy's). The reference backend itself
uses libm's log/cos and differs from this by a few ulp, so it cannot be the bitwise oracle.

Counters past 2^32 (the carry of g's low word inside a vector, g wrapping at 2^64) need more elements than a
tensor here can hold: a small C++ program checks those against the scalar philox_normal_z at each vector level.
"""
from fractions import Fraction

import numpy as np
import pytest
import torch

from pydiff.ops import coef_row, fused_step, philox_normal, sumsq
from pydiff.ops.philox import _split, philox4x32_10_reference

C = pytest.importorskip("pydiff._C", reason="the cpu backend is not built")
_MASK = (1 << 32) - 1


def _f32(text):
    """The float32 nearest to the decimal literal ``text`` (as C rounds ``<text>f``), as a 0-dim tensor; rounding
    through float64 could differ in a near-tie, so the neighbours are checked against the exact decimal."""
    f = np.float32(float(text))
    exact = Fraction(text)
    near = [f, np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))]
    assert min(near, key=lambda c: abs(Fraction(float(c)) - exact)) == f, text
    return torch.tensor(f)


def _i32(t):
    return t.view(torch.int32)


def _poly_logf(x):
    ux = _i32(x).to(torch.int64) & _MASK
    e = (ux >> 23) - 126
    m = ((ux & 0x007FFFFF) | 0x3F000000).to(torch.int32).view(torch.float32)
    small = m < _f32("0.707106781186547524")
    e = torch.where(small, e - 1, e)
    one = _f32("1.0")
    m = torch.where(small, (m + m) - one, m - one)
    z = m * m
    y = _f32("7.0376836292e-2")
    for sign, c in [(-1, "1.1514610310e-1"), (1, "1.1676998740e-1"), (-1, "1.2420140846e-1"),
                    (1, "1.4249322787e-1"), (-1, "1.6668057665e-1"), (1, "2.0000714765e-1"),
                    (-1, "2.4999993993e-1"), (1, "3.3333331174e-1")]:
        y = y * m - _f32(c) if sign < 0 else y * m + _f32(c)
    y = y * m * z
    fe = e.to(torch.float32)  # exact: |e| < 2^24
    y = y + _f32("-2.12194440e-4") * fe
    y = y - _f32("0.5") * z
    r = m + y
    return r + _f32("0.693359375") * fe


def _poly_sincosf(a):
    """(sin a, cos a) as pydiff_math.h's poly_sincosf."""
    j = (a * _f32("1.27323954473516")).to(torch.int32)  # truncation, a >= 0
    j = (j + 1) & ~1
    y = j.to(torch.float32)
    r = ((a - y * _f32("0.78515625")) - y * _f32("2.4187564849853515625e-4")) - y * _f32("3.77489497744594108e-8")
    q = j & 7
    zz = r * r
    c = _f32("2.443315711809948e-5")
    c = c * zz - _f32("1.388731625493765e-3")
    c = c * zz + _f32("4.166664568298827e-2")
    c = c * zz * zz
    c = c - _f32("0.5") * zz
    c = c + _f32("1.0")
    s = _f32("-1.9515295891e-4")
    s = s * zz + _f32("8.3321608736e-3")
    s = s * zz - _f32("1.6666654611e-1")
    s = s * zz * r
    s = s + r
    swap = (q & 2) != 0
    vc, vs = torch.where(swap, s, c), torch.where(swap, c, s)
    return torch.where((q == 4) | (q == 6), -vs, vs), torch.where((q == 2) | (q == 4), -vc, vc)


def _uniform(r):
    return ((r >> 8).to(torch.float32) + _f32("0.5")) * _f32("5.9604644775390625e-08")


def oracle_z(n, seed, offset):
    """float32 z of flat elements 0..n-1 (pydiff_math.h's philox_normal_z): element g from the block of counter
    g >> 2, Box-Muller on its words (r0, r1) for g mod 4 in {0, 1} and (r2, r3) for {2, 3}, cos for even g."""
    g = torch.arange(n, dtype=torch.int64)
    c = g >> 2
    k0, k1 = _split(seed)
    c2, c3 = _split(offset)
    zero = torch.zeros_like(c)
    r = philox4x32_10_reference(c & _MASK, (c >> 32) & _MASK, zero + c2, zero + c3, k0, k1)
    second = (g & 2) != 0
    u1 = _uniform(torch.where(second, r[2], r[0]))
    u2 = _uniform(torch.where(second, r[3], r[1]))
    sin, cos = _poly_sincosf(_f32("6.28318530717958647692") * u2)
    return _sqrt_f32(_f32("-2.0") * _poly_logf(u1)) * torch.where((g & 1) != 0, sin, cos)


def _sqrt_f32(x):
    """Correctly rounded float32 sqrt (torch.sqrt of float32 is not, on some CPU builds: 1 ulp off): the float64
    root rounded to float32 is the correctly rounded float32 root (53 >= 2*24 + 2 bits)."""
    return torch.from_numpy(np.sqrt(x.numpy().astype(np.float64)).astype(np.float32))


def _bits(t):
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    diff = (_bits(got) != _bits(want)).reshape(-1).nonzero()
    assert diff.numel() == 0, f"{diff.numel()} of {got.numel()} differ, first at flat index {diff[0].item()}"


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (seed, offset): zero; all ones (2^64 - 1 wraps the key schedule at once); the low word's wrap at 2^32;
# high bits set on either side
KEYS = [(0, 0), (2**64 - 1, 2**64 - 1), (2**32 - 1, 2**32 - 1), (2**63 + 12345, 2**32), (987654321123, 2**63 + 7)]
# 1 element, one vector less / more one, past a block (512), a Philox task (4096) and a chunk (16384)
SIZES = [1, 15, 17, 513, 4097, 16385]


@pytest.fixture
def isa_levels():
    """The ISA levels this CPU runs; the default level is restored afterwards."""
    levels = list(C.supported_isas())
    yield levels
    C.set_isa("")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def test_oracle_matches_reference_within_ulps():
    """The oracle is the contract's formula: within a few float32 ulp of the libm-based reference."""
    from pydiff.ops.philox import philox_normal_flat

    z = oracle_z(4099, 77, 3)
    ref = philox_normal_flat(torch.arange(4099), 77, 3)
    torch.testing.assert_close(z, ref, atol=2e-6, rtol=4e-7)
    assert not torch.equal(z, torch.zeros_like(z))


def test_philox_normal_bits(isa_levels, threads):
    want32 = {(n, k): oracle_z(n, *k) for n in SIZES for k in KEYS}
    for isa in isa_levels:
        C.set_isa(isa)
        for (n, (seed, offset)), z in want32.items():
            for dtype in DTYPES:
                got = philox_normal((n,), seed=seed, offset=offset, dtype=dtype, backend="cpu")
                assert_same_bits(got, z.to(dtype))


def test_philox_normal_bits_parallel_size(isa_levels, threads):
    """Above the OpenMP threshold (several chunks per thread), shape (3, 5, 41, 67)."""
    shape = (3, 5, 41, 67)
    z = oracle_z(3 * 5 * 41 * 67, 2**64 - 5, 2**63 + 2**32 - 1).reshape(shape)
    for isa in isa_levels:
        C.set_isa(isa)
        for dtype in DTYPES:
            assert_same_bits(philox_normal(shape, seed=2**64 - 5, offset=2**63 + 2**32 - 1, dtype=dtype,
                                           backend="cpu"), z.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_step_philox_bits(isa_levels, threads, dtype):
    """C = 1 and nothing else: out is z rounded to the dtype. B = 3 samples of N = 4111 elements (tasks that start
    mid-vector), and one sample of 3 chunks + 17 (blocks of 512 within a chunk, the tail of a task); with w_out
    and a threshold, the other code paths of the Philox configurations."""
    coef = torch.tensor(coef_row(C=1.0), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    for shape, (seed, offset) in [((3, 4111), (2**63 + 12345, 2**32)), ((1, 3 * 16384 + 17), (2**64 - 1, 5))]:
        x = torch.randn(shape).to(dtype)
        z = oracle_z(x.numel(), seed, offset).reshape(shape)
        T = torch.float64 if dtype == torch.float64 else torch.float32
        thr = torch.full((shape[0],), 2.0, dtype=T)
        for isa in isa_levels:
            C.set_isa(isa)
            assert_same_bits(fused_step(x, x, coef, seed=seed, offset=offset, backend="cpu"), z.to(dtype))
            w = torch.empty_like(x)
            out = fused_step(x, x, coef, seed=seed, offset=offset, w_out=w, threshold=thr, backend="cpu")
            assert_same_bits(out, z.to(dtype))
            # a real step: the same as with z given as a tensor of the compute type's values
            full = torch.tensor(coef_row(A=0.9, D=0.1, B0=0.2, C=0.05, O=1.5), dtype=T)
            m = torch.randn(shape).to(dtype)
            got = fused_step(x, m, full, seed=seed, offset=offset, backend="cpu")
            if dtype in (torch.float32, torch.float64):
                want = fused_step(x, m, full, noise=z.to(dtype), backend="cpu")
                assert_same_bits(got, want)
            else:  # half-precision noise tensors would round z; the float32 step on the same values, rounded once
                want = fused_step(x.float(), m.float(), full, noise=z, backend="cpu").to(dtype)
                assert_same_bits(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sumsq_philox_bits(isa_levels, threads, dtype):
    """sumsq's Philox row adds the same squares in the same order as sumsq of the z tensor (compute type)."""
    shape = (3, 16384 + 513)
    x = torch.randn(shape).to(dtype)
    T = torch.float64 if dtype == torch.float64 else torch.float32
    seed, offset = 2**64 - 1, 2**32 - 1
    z = oracle_z(x.numel(), seed, offset).reshape(shape).to(T)
    for isa in isa_levels:
        C.set_isa(isa)
        got = sumsq(x, seed=seed, offset=offset, backend="cpu")
        assert_same_bits(got[1], sumsq(z, backend="cpu"))


_LEVEL_FLAGS = {  # the -m flags of the baseline / avx2 / avx512 levels (CMakeLists.txt, PYDIFF_ISA_FLAGS_*)
    "baseline": [],
    "avx2": ["-mavx2", "-mf16c", "-mfma"],
    "avx512": ["-mavx2", "-mf16c", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
               "-mprefer-vector-width=512"],
}
_HARNESS = r"""
#include <cstdio>
#include <cstring>
#include "philox_vec.h"
using namespace pydiff;
int main() {
  if (!__builtin_cpu_supports(LEVEL)) { std::printf("unsupported\n"); return 0; }
  // counters a tensor cannot reach: g lo wrapping into g hi inside a vector, g wrapping at 2^64
  const uint64_t starts[] = {0, 6, 0xFFFFFFFFull - 20, 0x2FFFFFFF0ull, 0xFFFFFFFFFFFFFFFFull - 20, 0x8000000000000000ull - 7};
  const uint64_t keys[] = {0, 0xFFFFFFFFFFFFFFFFull, 0x00000001FFFFFFFFull};
  const uint64_t ctrs[] = {0, 0xFFFFFFFFull, 0xFFFFFFFFFFFFFFFFull};
  long bad = 0, total = 0;
  float z[256];
  for (uint64_t g0 : starts)
    for (uint64_t k : keys)
      for (uint64_t c : ctrs)
        for (int64_t n = 1; n <= 200; n += 7) {
          cpu::PYDIFF_ISA_NS::philox_normal_fill(k, c, g0, n, z);
          for (int64_t i = 0; i < n; ++i, ++total) {
            const float want = philox_normal_z(k, c, g0 + static_cast<uint64_t>(i));
            bad += std::memcmp(&want, &z[i], sizeof want) != 0;
          }
        }
  std::printf("%ld %ld %d\n", bad, total, cpu::PYDIFF_ISA_NS::kPhiloxLanes);
}
"""


@pytest.mark.parametrize("level,lanes", [("baseline", 1), ("avx2", 8), ("avx512", 16)])
def test_vector_fill_matches_scalar_past_2_32(tmp_path, level, lanes):
    """philox_normal_fill of philox_vec.h against pydiff_math.h's scalar philox_normal_z, compiled as the kernel
    TUs are (-O3 -ffp-contract=off and the level's flags), where the counter's low word wraps inside a vector and
    where g wraps at 2^64: element indices no tensor here can have."""
    import shutil
    import subprocess
    from pathlib import Path

    cxx = shutil.which("g++") or shutil.which("c++")
    root = Path(__file__).resolve().parents[2] / "csrc"
    if cxx is None or not (root / "cpu" / "philox_vec.h").is_file():
        pytest.skip("needs a C++ compiler and the csrc/ sources")
    src = tmp_path / "fill.cpp"
    src.write_text(_HARNESS)
    exe = tmp_path / "fill"
    subprocess.run([cxx, "-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-w",
                    f"-DPYDIFF_ISA_NS=isa_{level}", f'-DLEVEL="{ {"avx512": "avx512f", "baseline": "sse2"}.get(level, level)}"',
                    *_LEVEL_FLAGS[level], f"-I{root / 'include'}", f"-I{root / 'cpu'}", str(src), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    if out == ["unsupported"]:
        pytest.skip(f"this CPU has no {level}")
    bad, total, got_lanes = map(int, out)
    assert got_lanes == lanes and total > 0
    assert bad == 0, f"{bad} of {total} differ"
