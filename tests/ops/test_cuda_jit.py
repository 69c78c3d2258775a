"""The ``cuda-jit`` backend: registry entry, misuse errors that name the cause, the disk-cache key, finding the
sources from a checkout and from an install; without a GPU, every launch (fused_step_backward's included) names a
kernel that NVRTC compiles with matching parameters; on a GPU (with CuPy), agreement with the reference and the cpu
backend's Philox noise bit for bit, the vector and scalar (misaligned view) paths, the backward against the
reference and the cuda backend, and the cache on disk.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pydiff.ops import backends as registry
from pydiff.ops.backends import _nvrtc, cuda_jit
from pydiff.ops.columns import coef_row

HAS_CUDA = torch.cuda.is_available()
JIT_OK = registry.backend_available("cuda-jit")


def test_registry_entry_and_automatic_order():
    assert "cuda-jit" in registry.BACKENDS
    assert registry.runs_on("cuda-jit", "cuda", torch.float16)
    assert not registry.runs_on("cuda-jit", "cpu")
    assert not registry.runs_on("cuda-jit", "cuda", torch.float64)
    assert registry.AUTOMATIC_ORDER["cuda"] == ("cuda", "cuda-jit", "triton")
    why = registry.unavailable_reason("cuda-jit")
    assert why is None or (isinstance(why, str) and why)


def test_missing_cupy_names_the_extra():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "from pydiff.ops import backends as r\n"
            "print(r.unavailable_reason('cuda-jit'))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYDIFF_BACKEND": ""})
    assert res.returncode == 0, res.stderr
    assert "pip install pydiff[cupy]" in res.stdout


def test_missing_nvrtc_is_named(monkeypatch):
    pytest.importorskip("cupy")
    monkeypatch.setattr(_nvrtc._Lib, "tried", True)
    monkeypatch.setattr(_nvrtc._Lib, "handle", None)
    monkeypatch.setattr(_nvrtc._Lib, "error", "libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12)")
    assert "libnvrtc not found" in cuda_jit.unavailable_reason()


def _args(x, **kw):
    a = dict(x=x, m=x, coef=torch.tensor(coef_row()).view(1, -1), index=None, index_stride=0, row_stride=0,
             out=x, w_out=None, hist=(), noise=None, seed=None, offset=0, rng=None, threshold=None, m2=None, var=None)
    a.update(kw)
    return a


def test_cpu_tensor_is_refused_by_name():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="cuda-jit backend runs on CUDA tensors; x is on cpu"):
        cuda_jit.fused_step(**_args(x))
    with pytest.raises(ValueError, match="CUDA tensors; a is on cpu"):
        cuda_jit.sumsq(x, None, None, 0, None)
    with pytest.raises(ValueError, match="CUDA tensors; out is on cpu"):
        cuda_jit.philox_normal(x, 1, 0, None)
    with pytest.raises(ValueError, match="CUDA tensors; x is on cpu"):
        cuda_jit.dynamic_threshold(x, None, None, None, 0, 0, None, 0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="CUDA tensors; x is on cpu"):
        cuda_jit.langevin_step(x, x, torch.ones(1, 2), 0, False, x, None, x, None, 0, None)


def test_float64_is_refused_by_name():
    if not HAS_CUDA:
        x = torch.zeros(2, 8, dtype=torch.float64)
        with pytest.raises((TypeError, ValueError), match="float64|CUDA tensors"):
            cuda_jit.fused_step(**_args(x))
        return
    x = torch.zeros(2, 8, dtype=torch.float64, device="cuda")
    with pytest.raises(TypeError, match="does not take torch.float64"):
        cuda_jit.fused_step(**_args(x))


def test_cuda_backend_refuses_cpu_tensors_by_name():
    from pydiff.ops import resolve_backend
    from pydiff.ops.backends import cuda

    for name in ("cuda", "cuda-jit"):
        with pytest.raises(ValueError, match="cannot run on cpu tensors"):
            resolve_backend(name, torch.zeros(2, 3))
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="the cuda backend runs on CUDA tensors; x is on cpu"):
        cuda.fused_step(**_args(x))
    with pytest.raises(ValueError, match="the cuda backend runs on CUDA tensors; out is on cpu"):
        cuda.philox_normal(x, 1, 0, None)
    with pytest.raises(ValueError, match="the cuda backend runs on CUDA tensors; x is on cpu"):
        cuda.langevin_step(x, x, torch.ones(1, 2), 0, False, x, None, x, None, 0, None)


def test_grid_rule():
    # capped at SMs x 8 blocks in total, at least one block, samples on y up to 65535
    assert cuda_jit.grid_2d(10, 1, 132) == (1, 1)
    assert cuda_jit.grid_2d(10 ** 9, 1, 132) == (132 * 8, 1)
    assert cuda_jit.grid_2d(10 ** 9, 4, 132) == (132 * 2, 4)
    assert cuda_jit.grid_2d(10 ** 9, 10 ** 6, 132) == (1, 65535)
    assert cuda_jit.grid_2d(0, 0, 132) == (1, 1)
    assert cuda_jit.sumsq_num_partials(1) == 1
    assert cuda_jit.sumsq_num_partials(2048 * 3 + 1) == 4
    assert cuda_jit.sumsq_num_partials(10 ** 9) == 256


@pytest.mark.skipif(_nvrtc.unavailable_reason() is not None, reason="NVRTC unavailable")
def test_cache_key_tracks_sources_arch_and_kernel():
    h = _nvrtc.sources_hash()
    expr = cuda_jit.fused_step_expression(torch.float16, 1, False, False, 0, False, False, True)
    k = cuda_jit.kernel_key("fused_step_f16.cu", expr, 90, h)
    assert k == cuda_jit.kernel_key("fused_step_f16.cu", expr, 90, h)
    assert k != cuda_jit.kernel_key("fused_step_f16.cu", expr, 80, h)
    assert k != cuda_jit.kernel_key("fused_step_f16.cu", expr.replace("true>", "false>"), 90, h)
    assert k != cuda_jit.kernel_key("fused_step_f16.cu", expr, 90, "0" * 64)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYDIFF_CACHE_DIR", str(tmp_path))
    assert cuda_jit.cache_dir() == tmp_path / "cuda-jit"
    monkeypatch.delenv("PYDIFF_CACHE_DIR")
    assert cuda_jit.cache_dir() == __import__("pathlib").Path(os.path.expanduser("~")) / ".cache" / "pydiff" / "cuda-jit"


def test_sources_found_from_checkout_and_install(monkeypatch, tmp_path):
    import pydiff

    checkout = _nvrtc.source_dir()
    assert (checkout / "cuda" / "fused_step_impl.cuh").is_file()
    # an install: <site-packages>/pydiff/csrc holds the package data
    pkg = tmp_path / "site" / "pydiff"
    (pkg / "csrc").mkdir(parents=True)
    shutil.copytree(checkout / "cuda", pkg / "csrc" / "cuda")
    shutil.copytree(checkout / "include", pkg / "csrc" / "include")
    (pkg / "__init__.py").write_text("")
    monkeypatch.setattr(pydiff, "__file__", str(pkg / "__init__.py"))
    assert _nvrtc.source_dir() == (pkg / "csrc").resolve()
    shutil.rmtree(pkg / "csrc")
    with pytest.raises(FileNotFoundError, match="neither in"):
        _nvrtc.source_dir()


# ---------------------------------------------------------------------------------------------- on a GPU

needs_jit = pytest.mark.skipif(not JIT_OK, reason=f"cuda-jit: {registry.unavailable_reason('cuda-jit')}")


def _ref(name):
    return registry.implementation("reference", name)


@pytest.fixture
def jit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PYDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cuda_jit._State, "functions", {})
    return tmp_path / "cuda-jit"


TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-5}


@pytest.mark.gpu
@needs_jit
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,offset", [((3, 4, 8, 8), 0), ((3, 37), 0), ((2, 5, 7), 1)],
                         ids=["packed", "odd-N", "misaligned-view"])
@pytest.mark.parametrize("K", [0, 2])
@pytest.mark.parametrize("with_m2", [False, True])
def test_fused_step_matches_reference(jit_cache, dtype, shape, offset, K, with_m2):
    g = torch.Generator(device="cuda").manual_seed(0)
    n = int(torch.tensor(shape).prod())

    def t():  # offset > 0: a view whose data pointer is not 16-byte aligned (scalar path)
        return torch.randn(n + offset, generator=g, device="cuda").to(dtype)[offset:].view(shape)

    x, m, m2 = t(), t(), t() if with_m2 else None
    hist = tuple(t() for _ in range(K))
    B = shape[0]
    row = coef_row(A=0.9, D=-0.3, B0=0.2, P=1.0, Q=-0.5, S=1.1, M1=0.7, M2=0.3, G=0.1,
                   **{f"B{k + 1}": 0.1 * (k + 1) for k in range(K)})
    coef = torch.tensor(np.stack([row] * B), dtype=torch.float32, device="cuda")
    outs = {}
    for name in ("reference", "cuda-jit"):
        out, w_out = torch.empty_like(x), torch.empty_like(x)
        registry.implementation(name, "fused_step")(x, m, coef, None, 0, 1, out, w_out, hist, None, None, 0, None,
                                                    None, m2, None)
        outs[name] = (out, w_out)
    torch.cuda.synchronize()
    for a, b in zip(outs["reference"], outs["cuda-jit"]):
        torch.testing.assert_close(b.float(), a.float(), atol=TOL[dtype], rtol=TOL[dtype])
    assert any(jit_cache.glob("*.cubin"))


@pytest.mark.gpu
@needs_jit
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_philox_noise_bit_identical_to_cpu(jit_cache, offset):
    if not registry.backend_available("cpu"):
        pytest.skip("cpu backend unavailable")
    n = 4099
    dev = torch.empty(n + offset, device="cuda")[offset:]
    cuda_jit.philox_normal(dev, 1234, 77, None)
    host = torch.empty(n)
    registry.implementation("cpu", "philox_normal")(host, 1234, 77, None)
    assert torch.equal(dev.cpu(), host)
    # fused_step with Philox noise and C = 1, everything else 0: out is the noise itself
    x = torch.zeros(1, n + offset, device="cuda")[:, offset:]
    coef = torch.tensor(coef_row(C=1.0), dtype=torch.float32, device="cuda").view(1, -1)
    out = torch.empty_like(x)
    cuda_jit.fused_step(x, x, coef, None, 0, 0, out, None, (), None, 1234, 77, None, None, None, None)
    assert torch.equal(out.cpu().view(-1), host)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "cuda-jit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_vector_and_scalar_paths_agree_bitwise(jit_cache, backend, dtype):
    """16-byte packs (aligned storage) and element-by-element (a view at storage offset 1) give the same bits,
    Philox noise included: vectorising keeps element g's arithmetic and counter."""
    if not registry.backend_available(backend):
        pytest.skip(f"{backend}: {registry.unavailable_reason(backend)}")
    B, N = 3, 1000 + 3  # N % 8 != 0: every sample has a head and a tail around its packs
    base = torch.randn(4, B * N + 1, device="cuda").to(dtype)
    row = coef_row(A=0.9, D=-0.3, B0=0.2, P=1.0, Q=-0.5, S=1.1, B1=0.25, C=0.5)
    coef = torch.tensor(np.stack([row] * B), dtype=torch.float32, device="cuda")
    fs = registry.implementation(backend, "fused_step")
    results = []
    for off in (0, 1):
        x, m, h = (base[k, off: off + B * N].view(B, N) for k in range(3))
        out = base[3, off: off + B * N].view(B, N).clone() if off == 0 else \
            torch.empty(B * N + 1, device="cuda", dtype=dtype)[1:].view(B, N)
        w_out = torch.empty_like(out)
        fs(x, m, coef, None, 0, 1, out, w_out, (h,), None, 99, 5, None, None, None, None)
        results.append((out.clone(), w_out.clone()))
    torch.cuda.synchronize()
    for a, b in zip(*results):
        assert torch.equal(a.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           b.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.gpu
@needs_jit
def test_sumsq_and_dynamic_threshold_match_reference(jit_cache):
    a = torch.randn(3, 1001, device="cuda")
    b = torch.randn(3, 1001, device="cuda")
    got = cuda_jit.sumsq(a, b, None, 0, None)
    want = _ref("sumsq")(a, b, None, 0, None)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-3)
    assert torch.equal(got, cuda_jit.sumsq(a, b, None, 0, None))  # deterministic
    from pydiff.ops import quantile_rank

    lo, hi, wt = quantile_rank(0.995, 1001)
    got = cuda_jit.dynamic_threshold(a * 3, None, None, None, 0, 0, None, lo, hi, wt, 10.0)
    want = _ref("dynamic_threshold")(a * 3, None, None, None, 0, 0, None, lo, hi, wt, 10.0)
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@needs_jit
def test_out_of_range_index_gives_nan_rows(jit_cache):
    x = torch.ones(2, 64, device="cuda")
    coef = torch.tensor(np.stack([coef_row(A=1.0)] * 3), dtype=torch.float32, device="cuda")
    index = torch.tensor([1, 3], device="cuda")
    out = torch.empty_like(x)
    cuda_jit.fused_step(x, x, coef, index, 1, 0, out, None, (), None, None, 0, None, None, None, None)
    assert torch.equal(out[0], x[0]) and torch.isnan(out[1]).all()


# ---------------------------------------------------------------------------------------------- without a GPU

def _param_sizes(ptx: str, mangled: str) -> list:
    """Byte sizes of the parameters of kernel `mangled` as the PTX declares them."""
    import re

    head = ptx[ptx.index(f".entry {mangled}("):]
    head = head[: head.index(")")]
    sizes = []
    for decl in re.findall(r"\.param\s+([^,]+)", head):
        arr = re.search(r"\.b8\s+\S+\[(\d+)\]", decl)
        sizes.append(int(arr.group(1)) if arr else int(re.search(r"\.[bsuf](\d+)\s", decl + " ").group(1)) // 8)
    return sizes


def _arg_size(a) -> int:
    return a.dtype.itemsize if hasattr(a, "dtype") else 8


def _fake_device(monkeypatch, tmp_path):
    """CPU tensors stand in for device memory (only pointers and shapes are looked at); launches are recorded."""
    monkeypatch.setenv("PYDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cuda_jit, "_device", lambda t, what: 0)
    monkeypatch.setattr(cuda_jit, "_same_device", lambda dev, **kw: None)
    monkeypatch.setattr(cuda_jit, "_sms", lambda dev: 132)
    launches = []
    monkeypatch.setattr(cuda_jit, "_launch", lambda dev, file, expr, grid, args, block=256:
                        launches.append((file, expr, grid, args, block)))
    return launches


def _check_against_the_kernels(launches):
    """Each launch names a kernel that compiles (sm_90, through the disk cache) with as many parameters, of the
    sizes, as the arguments passed."""
    for file, expr, grid, args, block in launches:
        image, lowered = cuda_jit._compile_cached(file, expr, 90)
        assert image[:4] == b"\x7fELF"
        ptx = _nvrtc.compile_program((_nvrtc.source_dir() / "cuda" / file).read_text(), file, 90,
                                     name_expressions=[expr], include_dirs=cuda_jit.include_dirs())
        assert ptx.lowered[expr] == lowered
        assert _param_sizes(ptx.image.decode(), lowered) == [_arg_size(a) for a in args], expr
        assert all(g >= 1 for g in grid) and len(grid) in (1, 2)


@pytest.mark.skipif(_nvrtc.unavailable_reason() is not None, reason="NVRTC unavailable")
def test_launches_name_real_kernels_with_matching_arguments(monkeypatch, tmp_path):
    """Every kernel the launchers ask for compiles for sm_90 under the name they use, through the disk cache,
    and they pass as many arguments, of the sizes, as the kernel declares. (CPU tensors stand in for device
    memory: only pointers and shapes are looked at; nothing is launched.)"""
    launches = _fake_device(monkeypatch, tmp_path)
    monkeypatch.setattr(cuda_jit.torch, "kthvalue", lambda v, k, dim: torch.return_types.kthvalue((v[:, 0], v[:, 0])))

    f16 = torch.zeros(4, 1024, dtype=torch.float16)
    f32 = torch.zeros(3, 37)
    coef = torch.zeros(4, 20)
    rng = torch.zeros(2, dtype=torch.int64)
    mis = torch.zeros(3 * 37 + 1)[1:].view(3, 37)  # not 16-byte aligned: the scalar path
    cuda_jit.fused_step(f16, f16, coef, None, 0, 1, f16, f16, (f16, f16), None, 5, 1, None, None, f16, None)
    cuda_jit.fused_step(mis, mis, coef, torch.zeros(1, dtype=torch.int64), 0, 0, mis, None, (), mis, None, 0, None,
                        torch.ones(3), None, mis)
    cuda_jit.sumsq(f32, None, None, 0, rng)
    cuda_jit.dynamic_threshold(f16, f16, coef, None, 0, 1, None, 10, 11, 0.5, 2.0)
    cuda_jit.philox_normal(torch.zeros(1000, dtype=torch.bfloat16), 1, 2, None)
    exprs = [e for _, e, *_ in launches]
    assert exprs[0].endswith("StepFlags<2, true, false, 2, false, true>, true>")
    assert exprs[1].endswith("StepFlags<0, false, true, 1, true, false>, false>")
    assert len(launches) == 7  # 2 fused_step, sumsq's two stages, dynamic_threshold's two, philox_normal
    _check_against_the_kernels(launches)
    cached = sorted(p.name for p in (tmp_path / "cuda-jit").iterdir())
    assert len([n for n in cached if n.endswith(".cubin")]) == len(set(exprs))
    # a second request is served from disk, not recompiled
    monkeypatch.setattr(_nvrtc, "compile_program", lambda *a, **k: pytest.fail("recompiled a cached kernel"))
    cuda_jit._compile_cached(launches[0][0], launches[0][1], 90)


def _backward_args(x, coef, **kw):
    a = dict(grad_out=x, grad_w=None, x=x, m=x, coef=coef, index=None, index_stride=0, row_stride=0, noise=None,
             seed=None, offset=0, rng=None, threshold=None, m2=None, var=None, dx=x, dm=x, dm2=None, dnoise=None,
             dvar=None)
    a.update(kw)
    return a


@pytest.mark.skipif(_nvrtc.unavailable_reason() is not None, reason="NVRTC unavailable")
def test_backward_launches_name_real_kernels_with_matching_arguments(monkeypatch, tmp_path):
    """fused_step_backward: the kernel configuration follows the optional inputs as pydiff_math.h's
    dispatch_back_flags does (Philox noise without var is the no-noise kernel), the grid is blocks_along's, and
    the kernel it names compiles with one by-value argument of FusedStepBackwardArgs' size."""
    launches = _fake_device(monkeypatch, tmp_path)
    f16 = torch.zeros(4, 1024, dtype=torch.float16)
    bf16 = torch.zeros(3, 37, dtype=torch.bfloat16)
    f32 = torch.zeros(70000, 3)  # B > 65535: the grid's y is capped, one block along each sample
    coef = torch.zeros(4, 20)
    rng = torch.zeros(2, dtype=torch.int64)
    thr = torch.ones(4)
    cuda_jit.fused_step_backward(**_backward_args(f16, coef))
    cuda_jit.fused_step_backward(**_backward_args(f16, coef, row_stride=1, grad_w=f16, m2=f16, var=f16, rng=rng,
                                                  offset=3, threshold=thr, dm2=f16, dvar=f16))
    cuda_jit.fused_step_backward(**_backward_args(bf16, coef, index=torch.zeros(3, dtype=torch.int64),
                                                  index_stride=1, noise=bf16, dnoise=bf16, m2=bf16))
    cuda_jit.fused_step_backward(**_backward_args(f32, coef, seed=7, var=None))  # Philox without var
    cuda_jit.fused_step_backward(**_backward_args(f32, coef, seed=7, var=f32))
    exprs = [e for _, e, *_ in launches]
    assert len(launches) == 5
    assert all(e.startswith("pydiff::cuda::fused_step_backward_kernel<") for e in exprs)
    assert exprs[0] == ("pydiff::cuda::fused_step_backward_kernel<__half, "
                        "pydiff::BackFlags<false, false, 0, false, false>>")
    assert exprs[1].endswith("<__half, pydiff::BackFlags<true, true, 2, true, true>>")
    assert exprs[2].endswith("<__nv_bfloat16, pydiff::BackFlags<true, false, 1, false, false>>")
    assert exprs[3].endswith("<float, pydiff::BackFlags<false, false, 0, false, false>>")
    assert exprs[4].endswith("<float, pydiff::BackFlags<false, true, 2, false, false>>")
    # grids: ceil(1024/256) = 4 blocks per sample; ceil(37/256) = 1; 70000 samples -> y = 65535, x = 2^16 // 65535
    assert [g for _, _, g, _, _ in launches] == [(4, 4), (4, 4), (1, 3), (1, 65535), (1, 65535)]
    assert all(block == cuda_jit.THREADS for *_, block in launches)
    # the struct's bytes carry the pointers and the Philox source
    raw = launches[1][3][0].tobytes()
    a = cuda_jit.FusedStepBackwardArgs.from_buffer_copy(raw)
    assert (a.B, a.N, a.R, a.row_stride) == (4, 1024, 4, 1)
    assert a.philox.on and a.philox.rng == rng.data_ptr() and a.philox.offset == 3
    assert a.threshold == thr.data_ptr() and a.dm2 == f16.data_ptr() and not a.dnoise
    _check_against_the_kernels(launches)


def test_backward_argument_checks(monkeypatch, tmp_path):
    """The ahead-of-time module's checks, by name, before anything is compiled or launched."""
    launches = _fake_device(monkeypatch, tmp_path)
    x = torch.zeros(2, 8)
    coef = torch.zeros(1, 20)
    bad = [
        (dict(dm2=x), "dm2 needs m2"),
        (dict(dnoise=x), "dnoise needs a noise tensor"),
        (dict(dvar=x), "dvar needs var"),
        (dict(noise=x, seed=1), "give at most one of noise, seed and rng"),
        (dict(seed=1, rng=torch.zeros(2, dtype=torch.int64)), "give either seed or rng, not both"),
        (dict(dx=None), "grad_out, x, m, dx and dm must not be null"),
        (dict(row_stride=1), r"row_stride=1 needs one coef row per sample \(R >= B\)"),
        (dict(index_stride=2), "index_stride must be 0 or 1"),
        (dict(row_stride=-1), "row_stride must be 0 or 1"),
        (dict(coef=torch.zeros(0, 20)), "coef must have at least one row"),
        (dict(coef=None), "coef pointer is null"),
    ]
    for over, match in bad:
        with pytest.raises(ValueError, match=match):
            over = dict(over)
            cuda_jit.fused_step_backward(**_backward_args(x, over.pop("coef", coef), **over))
    assert launches == []
    # an empty batch launches nothing and needs no coef (as the module: checks that need data come after)
    e = torch.zeros(0, 8)
    cuda_jit.fused_step_backward(**_backward_args(e, None))
    assert launches == []


def test_backward_refuses_cpu_tensors_by_name():
    x = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="cuda-jit backend runs on CUDA tensors; x is on cpu"):
        cuda_jit.fused_step_backward(**_backward_args(x, torch.zeros(1, 20)))


def test_blocks_along_rule():
    # common.cuh: ceil(N / 256) blocks along a sample, at most 2^16 blocks in the whole grid, at least one
    assert cuda_jit.blocks_along(1, 1) == 1
    assert cuda_jit.blocks_along(256, 1) == 1 and cuda_jit.blocks_along(257, 1) == 2
    assert cuda_jit.blocks_along(10 ** 9, 1) == 65536
    assert cuda_jit.blocks_along(10 ** 9, 3) == 21845  # 65536 // 3
    assert cuda_jit.blocks_along(10 ** 9, 10 ** 6) == 1  # y capped at 65535: 65536 // 65535
    assert cuda_jit.blocks_along(0, 0) == 1


@pytest.mark.gpu
@needs_jit
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("feature", ["plain", "noise_m2", "var_philox_thr_gw"])
def test_fused_step_backward_matches_reference_and_cuda(jit_cache, dtype, feature):
    """Against the reference twin, and bit for bit against the ahead-of-time cuda backend (the same source)."""
    from pydiff.ops import COL, NCOEF

    g = torch.Generator(device="cuda").manual_seed(1)
    B, N = 3, 1001
    t = lambda: torch.randn(B, N, generator=g, device="cuda").to(dtype)  # noqa: E731
    x, m, go = t(), t(), t()
    coef = torch.randn(B, NCOEF, generator=g, device="cuda")
    coef[:, COL["CLIP"]] = coef[:, COL["CLIP"]].abs() + 0.3
    coef[:, COL["VA"]] *= 0.3
    coef[:, COL["VB"]] *= 0.3
    kw = dict(grad_w=None, noise=None, seed=None, offset=0, rng=None, threshold=None, m2=None, var=None)
    if feature == "noise_m2":
        kw.update(noise=t(), m2=t())
    elif feature == "var_philox_thr_gw":
        kw.update(var=t(), seed=2 ** 40 + 7, offset=11, threshold=torch.rand(B, generator=g, device="cuda") + 0.5,
                  grad_w=t())
    results = {}
    for name in ("reference", "cuda-jit", "cuda"):
        if name == "cuda" and not (registry.backend_available("cuda")
                                   and registry.implements("cuda", "fused_step_backward")):
            continue
        outs = [torch.full_like(x, float("nan")) for _ in range(2)]
        extra = [torch.full_like(x, float("nan")) if kw[k] is not None else None for k in ("m2", "noise", "var")]
        registry.implementation(name, "fused_step_backward")(
            go, kw["grad_w"], x, m, coef, None, 0, 1, kw["noise"], kw["seed"], kw["offset"], kw["rng"],
            kw["threshold"], kw["m2"], kw["var"], *outs, *extra)
        results[name] = [o for o in outs + extra if o is not None]
    torch.cuda.synchronize()
    for got, want in zip(results["cuda-jit"], results["reference"]):
        assert not got.isnan().any()
        torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])
    if "cuda" in results:
        for a, b in zip(results["cuda-jit"], results["cuda"]):
            assert torch.equal(a, b)
    assert any(jit_cache.glob("*.cubin"))
