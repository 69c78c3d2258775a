"""The CUDA sources compile through NVRTC, with no GPU: every ``csrc/cuda/*.cu`` to PTX for compute_80 and
compute_90, the kernels the ``cuda-jit`` backend instantiates by name, the 128-bit vector path, and the
argument-struct layout that ``cuda_jit.py`` mirrors in ctypes (checked by static_asserts the device compiler
evaluates). Skips when libnvrtc cannot be loaded (``pip install nvidia-cuda-nvrtc-cu12`` provides it) or
cuda_fp16.h cannot be found (a CUDA toolkit, or ``pip install nvidia-cuda-runtime-cu12``).
"""
import ctypes
import re

import pytest
import torch

from pydiff.ops.backends import _nvrtc

_WHY = _nvrtc.unavailable_reason() or _nvrtc.headers_problem()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"NVRTC unavailable: {_WHY}")

ARCHS = (80, 90)


def _jit():
    from pydiff.ops.backends import cuda_jit  # imports without CuPy
    return cuda_jit


def _includes():
    return _jit().include_dirs()


def _compile(file_or_source, arch, exprs=(), name=None):
    root = _nvrtc.source_dir()
    if name is None:
        name, src = file_or_source, (root / "cuda" / file_or_source).read_text()
    else:
        src = file_or_source
    return _nvrtc.compile_program(src, name, arch, kind="ptx", name_expressions=list(exprs), include_dirs=_includes())


def _representative_exprs(file):
    """Kernels of `file` as cuda_jit names them: fused_step with no / all optional inputs, both paths."""
    jit = _jit()
    dt = {"fused_step_f32.cu": torch.float32, "fused_step_f16.cu": torch.float16,
          "fused_step_bf16.cu": torch.bfloat16}
    if file in dt:
        d = dt[file]
        return [jit.fused_step_expression(d, 0, False, False, 0, False, False, True),
                jit.fused_step_expression(d, 0, False, False, 0, False, False, False),
                jit.fused_step_expression(d, 6, True, True, 2, True, True, True),
                jit.fused_step_expression(d, 3, False, False, 1, False, True, True)]
    if file == "reductions.cu":
        return (["pydiff::cuda::sumsq_final_kernel", "pydiff::cuda::dyn_thresh_finish_kernel",
                 "pydiff::cuda::langevin_rows_kernel", "pydiff::cuda::langevin_small_kernel<float, true, true>",
                 "pydiff::cuda::langevin_small_kernel<__half, false, false>",
                 "pydiff::cuda::langevin_small_kernel<__nv_bfloat16, true, false>"]
                + [f"pydiff::cuda::sumsq_partial_kernel<{s}, {v}>" for s in ("float", "__half", "__nv_bfloat16")
                   for v in ("true", "false")]
                + [f"pydiff::cuda::abs_x0_kernel<{s}, {hm}, {m2}, true>" for s in ("float", "__half")
                   for hm, m2 in (("false", "false"), ("true", "false"), ("true", "true"))]
                + ["pydiff::cuda::abs_x0_kernel<__nv_bfloat16, true, true, false>"])
    if file == "fused_step_backward.cu":
        # no / every optional input per storage type, Philox noise (only with var) and tensor noise
        return ([jit.fused_step_backward_expression(d, False, False, 0, False, False) for d in jit.DATA_DTYPES]
                + [jit.fused_step_backward_expression(d, True, True, 2, True, True) for d in jit.DATA_DTYPES]
                + [jit.fused_step_backward_expression(torch.float16, False, True, 1, False, True),
                   jit.fused_step_backward_expression(torch.bfloat16, True, False, 1, True, False)])
    if file == "philox_normal.cu":
        return [f"pydiff::cuda::philox_normal_kernel<{s}, {v}>" for s in ("float", "__half", "__nv_bfloat16")
                for v in ("true", "false")]
    return []


CU_FILES = sorted(p.name for p in (_nvrtc.source_dir() / "cuda").glob("*.cu"))


def test_every_source_is_listed():
    assert {"fused_step_f32.cu", "fused_step_f16.cu", "fused_step_bf16.cu", "reductions.cu",
            "philox_normal.cu", "fused_step_backward.cu"} <= set(CU_FILES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", CU_FILES)
def test_source_compiles_to_ptx(file, arch):
    exprs = _representative_exprs(file)
    res = _compile(file, arch, exprs)
    ptx = res.image.decode()
    assert f".target sm_{arch}" in ptx
    assert set(res.lowered) == set(exprs)
    for mangled in res.lowered.values():
        assert re.search(rf"\.entry\s+{re.escape(mangled)}\s*\(", ptx), mangled


def _entry_body(ptx, mangled):
    start = re.search(rf"\.entry\s+{re.escape(mangled)}\s*\(", ptx).start()
    nxt = ptx.find(".entry", start + 1)
    return ptx[start: nxt if nxt > 0 else len(ptx)]


@pytest.mark.parametrize("file", ["fused_step_f32.cu", "fused_step_f16.cu", "fused_step_bf16.cu"])
def test_vector_path_uses_128_bit_accesses(file):
    """VEC kernels load and store 16-byte packs (ld.global.cg.v4 / st.global.v4); the scalar path never does."""
    jit = _jit()
    d = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[file[len("fused_step_"):-3]]
    vec = jit.fused_step_expression(d, 2, True, False, 0, False, True, True)
    sca = jit.fused_step_expression(d, 2, True, False, 0, False, True, False)
    res = _compile(file, 90, [vec, sca])
    ptx = res.image.decode()
    body_v, body_s = _entry_body(ptx, res.lowered[vec]), _entry_body(ptx, res.lowered[sca])
    # x, m, m2, h1, h2 -> five 128-bit loads; out, w_out -> two 128-bit stores
    assert len(re.findall(r"ld\.global(?:\.cg)?\.v4\.(?:u32|b32|f32)", body_v)) >= 5
    assert len(re.findall(r"st\.global\.v4\.(?:u32|b32|f32)", body_v)) >= 2
    assert not re.search(r"\.global\.v4\.", body_s)


@pytest.mark.parametrize("file,vec,loads,stores", [
    ("philox_normal.cu", "pydiff::cuda::philox_normal_kernel<__half, {}>", 0, 1),
    ("reductions.cu", "pydiff::cuda::sumsq_partial_kernel<__nv_bfloat16, {}>", 2, 0),
    ("reductions.cu", "pydiff::cuda::abs_x0_kernel<__half, true, true, {}>", 3, 2),  # 8 floats: 2 stores
])
def test_other_kernels_vector_path(file, vec, loads, stores):
    res = _compile(file, 80, [vec.format("true"), vec.format("false")])
    ptx = res.image.decode()
    body_v = _entry_body(ptx, res.lowered[vec.format("true")])
    body_s = _entry_body(ptx, res.lowered[vec.format("false")])
    assert len(re.findall(r"ld\.global(?:\.cg)?\.v4\.", body_v)) >= loads
    assert len(re.findall(r"st\.global\.v4\.", body_v)) >= stores
    assert re.search(r"\.global(?:\.cg)?\.v4\.", body_v)
    assert not re.search(r"\.global(?:\.cg)?\.v4\.", body_s)


def _size_asserts(struct, cname):
    return [f"static_assert(sizeof(pydiff::{cname}) == {ctypes.sizeof(struct)}, \"sizeof {cname}\");",
            f"static_assert(alignof(pydiff::{cname}) == {ctypes.alignment(struct)}, \"alignof {cname}\");"]


STRUCTS = ("PhiloxSource", "FusedStepArgs", "SumsqArgs", "DynThreshArgs", "FusedStepBackwardArgs")


@pytest.mark.parametrize("arch", ARCHS)
def test_ctypes_argument_structs_match_the_device_structs(arch):
    """cuda_jit passes the argument structs as raw bytes: sizes and alignments as the device compiler has
    them (NVRTC has no offsetof; the field offsets are checked against the host compiler below, and CUDA
    gives host and device code the same struct layout), and the launch constants it mirrors."""
    jit = _jit()
    from pydiff.ops.columns import K_MAX, NCOEF

    lines = ['#include "common.cuh"', '#include "reductions.cu"']
    for cname in STRUCTS:
        lines += _size_asserts(getattr(jit, cname), cname)
    lines += [
        f"static_assert(pydiff::cuda::kThreads == {jit.THREADS}, \"kThreads\");",
        f"static_assert(pydiff::cuda::kMaxGridY == {jit.MAX_GRID_Y}, \"kMaxGridY\");",
        f"static_assert(pydiff::cuda::kBlocksPerSM == {jit.BLOCKS_PER_SM}, \"kBlocksPerSM\");",
        f"static_assert(pydiff::cuda::kMaxPartials == {jit.MAX_PARTIALS}, \"kMaxPartials\");",
        f"static_assert(pydiff::kNCoef == {NCOEF} && pydiff::kKMax == {K_MAX}, \"columns\");",
        f"static_assert(pydiff::cuda::Pack<float>::kVec == {jit._VEC[torch.float32]}, \"vec f32\");",
        f"static_assert(pydiff::cuda::Pack<__half>::kVec == {jit._VEC[torch.float16]}, \"vec f16\");",
        f"static_assert(pydiff::cuda::Pack<__nv_bfloat16>::kVec == {jit._VEC[torch.bfloat16]}, \"vec bf16\");",
        f"static_assert(pydiff::kFloat32 == {jit._DTYPE_CODE[torch.float32]} && pydiff::kFloat16 == "
        f"{jit._DTYPE_CODE[torch.float16]} && pydiff::kBFloat16 == {jit._DTYPE_CODE[torch.bfloat16]}, \"dtype codes\");",
        f"static_assert(pydiff::kNoNoise == {jit.NO_NOISE} && pydiff::kNoiseTensor == {jit.NOISE_TENSOR} && "
        f"pydiff::kNoisePhilox == {jit.NOISE_PHILOX}, \"noise kinds\");",
    ]
    _compile("\n".join(lines) + "\n", arch, name="layout_check.cu")


def test_ctypes_field_offsets_match_the_host_compiler(tmp_path):
    """Every field offset of the ctypes mirrors equals offsetof() in pydiff_abi.h as the C++ compiler lays it out."""
    import shutil
    import subprocess

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    jit = _jit()
    body, expect = [], []
    for cname in STRUCTS:
        struct = getattr(jit, cname)
        for fname, _ in struct._fields_:
            body.append(f'  std::printf("%zu\\n", offsetof(pydiff::{cname}, {fname}));')
            expect.append(getattr(struct, fname).offset)
        body.append(f'  std::printf("%zu\\n", sizeof(pydiff::{cname}));')
        expect.append(ctypes.sizeof(struct))
    src = tmp_path / "layout.cpp"
    src.write_text("#include <cstddef>\n#include <cstdio>\n#include \"pydiff_abi.h\"\n#include \"pydiff_math.h\"\n"
                   "int main() {\n"
                   + "\n".join(body) + "\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cxx, "-std=c++17", f"-I{_nvrtc.source_dir() / 'include'}", str(src), "-o", str(exe)], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    assert got == expect


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_kernels_are_external_entries(arch):
    """cuda_jit loads a backward kernel by its lowered name: a plain namespace-qualified symbol, a .weak/.visible
    PTX entry (an anonymous namespace would make it an internal entry with a per-file hash in its name)."""
    exprs = _representative_exprs("fused_step_backward.cu")
    res = _compile("fused_step_backward.cu", arch, exprs)
    ptx = res.image.decode()
    for expr, mangled in res.lowered.items():
        assert mangled.startswith("_ZN6pydiff4cuda26fused_step_backward_kernelI"), (expr, mangled)
        assert re.search(rf"\.(?:weak|visible)\s+\.entry\s+{re.escape(mangled)}\s*\(", ptx), expr


def test_layout_check_can_fail():
    """A wrong offset is a compile error (the layout test above is not vacuous)."""
    src = '#include "common.cuh"\nstatic_assert(sizeof(pydiff::FusedStepArgs) == 8, "sizeof FusedStepArgs");\n'
    with pytest.raises(_nvrtc.NvrtcError, match="sizeof FusedStepArgs"):
        _compile(src, 80, name="bad_layout.cu")


def test_compile_errors_carry_the_log():
    with pytest.raises(_nvrtc.NvrtcError, match="identifier"):
        _compile("__global__ void k() { undeclared_thing(); }\n", 80, name="broken.cu")


def test_unsupported_arch_is_refused_by_name():
    with pytest.raises(ValueError, match="cannot target sm_1"):
        _compile("__global__ void k() {}\n", 1, name="k.cu")


def test_host_only_code_is_hidden_from_nvrtc():
    """ops_cuda.h and the C++ library headers must not reach NVRTC (it has neither)."""
    for f in CU_FILES + ["common.cuh", "fused_step_impl.cuh"]:
        text = (_nvrtc.source_dir() / "cuda" / f).read_text()
        for inc in re.findall(r"#include\s+<([^>]+)>", text):
            if inc in ("cuda_fp16.h", "cuda_bf16.h"):
                continue
            # every other system include sits inside an !__CUDACC_RTC__ block
            head = text[: text.index(f"<{inc}>")]
            assert head.count("#if !defined(__CUDACC_RTC__)") > head.count("#endif"), (f, inc)


def test_missing_half_headers_are_named(monkeypatch):
    monkeypatch.setattr(_nvrtc, "cuda_include_dir", lambda: None)
    monkeypatch.setattr(_nvrtc, "_HEADERS", {})
    why = _nvrtc.headers_problem()
    if why is None:
        pytest.skip("this NVRTC has builtin cuda_fp16.h")
    assert "nvidia-cuda-runtime-cu12" in why


def test_sources_hash_tracks_every_header(tmp_path):
    import shutil

    root = _nvrtc.source_dir()
    copy = tmp_path / "csrc"
    shutil.copytree(root / "cuda", copy / "cuda")
    shutil.copytree(root / "include", copy / "include")
    h0 = _nvrtc.sources_hash(copy)
    assert h0 == _nvrtc.sources_hash(root)
    hdr = copy / "include" / "pydiff_math.h"
    hdr.write_text(hdr.read_text() + "\n// edited\n")
    assert _nvrtc.sources_hash(copy) != h0
