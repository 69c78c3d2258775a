"""The ``cuda-jit`` backend: the kernels of ``csrc/cuda/*.cu`` compiled at run time by NVRTC, launched by CuPy.

The same sources as the ahead-of-time ``cuda`` backend (``pydiff._C_cuda``), for installs without it (no
nvcc at build time, a wheel built without CUDA): each kernel configuration the ops need is compiled on
first use for the GPU's own architecture (``sm_<major><minor>`` SASS, through ``_nvrtc``), cached on disk,
loaded with CuPy (``cupy.cuda.Module``) into the CUDA context torch uses, and launched on torch's current
stream of the tensors' device (``cupy.cuda.Stream.from_external``): nothing synchronizes, and the ``rng`` tensor
is read by the kernels, so a captured CUDA graph replays with new noise like the ``cuda`` backend.

Same normalized signatures and the same host-side work as ``cuda.py`` (docs/ops.md): grids from the SM
count, the 16-byte vector path when every data pointer is 16-byte aligned, ``sumsq``'s two-stage
deterministic reduction, ``dynamic_threshold``'s ``torch.kthvalue`` rank selection, ``fused_step_backward``'s
argument checks and grid (``blocks_along``: it has no vector path). float16, bfloat16 and float32 only.

Disk cache: ``$PYDIFF_CACHE_DIR/cuda-jit`` (default ``~/.cache/pydiff/cuda-jit``), one CUBIN per kernel,
named by the SHA-256 of the source tree (every ``.cu``/``.cuh``/``.h`` of ``csrc/cuda`` and
``csrc/include``), the NVRTC version, the architecture, the options and the kernel's name expression, so an
edited header or another GPU never reuses a stale binary. A first call compiles for about a second per
kernel configuration (a fused_step with another set of optional inputs is another configuration).

Requirements: CuPy, libnvrtc and the CUDA half-precision headers (``pip install pydiff[cupy]``:
``cupy-cuda12x``, ``nvidia-cuda-nvrtc-cu12``, ``nvidia-cuda-runtime-cu12``; a CUDA toolkit serves as well),
and a CUDA GPU that NVRTC can target. Importing this module never fails and never imports CuPy; without them
``available()`` is False and ``unavailable_reason()`` says which is missing.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import torch

from . import _native, _nvrtc
from ..columns import K_MAX, NCOEF

__all__ = ["available", "unavailable_reason", "fused_step", "sumsq", "dynamic_threshold", "philox_normal",
           "langevin_step", "fused_step_backward", "cache_dir", "include_dirs", "kernel_key", "fused_step_expression",
           "fused_step_backward_expression", "grid_2d", "blocks_along", "sumsq_num_partials", "FusedStepArgs",
           "SumsqArgs", "DynThreshArgs", "FusedStepBackwardArgs", "PhiloxSource"]

NAME = "cuda-jit"
DATA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_STORAGE = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
_FILE = {torch.float32: "fused_step_f32.cu", torch.float16: "fused_step_f16.cu",
         torch.bfloat16: "fused_step_bf16.cu"}
_VEC = {torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}  # elements per 16-byte pack (common.cuh)
_DTYPE_CODE = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 3}  # pydiff_abi.h's DType

# Launch geometry of csrc/cuda/common.cuh and reductions.cu (kThreads, kMaxGridY, kBlocksPerSM,
# kMaxPartials); test_nvrtc.py compiles static_asserts that these match the sources.
THREADS = 256
MAX_GRID_Y = 65535
BLOCKS_PER_SM = 8
MAX_PARTIALS = 256
# common.cuh's blocks_along caps a grid at 2^16 blocks in total (a host-side literal there, checked by the
# grid tests); pydiff_math.h's NoiseKind codes, checked by static_asserts in test_nvrtc.py.
MAX_BLOCKS = 1 << 16
NO_NOISE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2


# ---------------------------------------------------------------------------------------------- the ABI

# ctypes mirrors of pydiff_abi.h's argument structs: the kernels take them by value, so the bytes passed
# must have the device layout (x86-64/LP64 natural alignment, which ctypes computes the same way).
# test_nvrtc.py checks every field offset and the sizes with static_asserts compiled by NVRTC.
class PhiloxSource(ctypes.Structure):
    _fields_ = [("on", ctypes.c_bool), ("seed", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("rng", ctypes.c_void_p)]


class FusedStepArgs(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("B", ctypes.c_int64), ("N", ctypes.c_int64),
                ("x", ctypes.c_void_p), ("m", ctypes.c_void_p), ("m2", ctypes.c_void_p), ("var", ctypes.c_void_p),
                ("coef", ctypes.c_void_p), ("R", ctypes.c_int64), ("index", ctypes.c_void_p),
                ("index_stride", ctypes.c_int64), ("row_stride", ctypes.c_int64),
                ("out", ctypes.c_void_p), ("w_out", ctypes.c_void_p), ("hist", ctypes.c_void_p * K_MAX),
                ("nhist", ctypes.c_int), ("noise", ctypes.c_void_p), ("philox", PhiloxSource),
                ("threshold", ctypes.c_void_p)]


class SumsqArgs(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("B", ctypes.c_int64), ("N", ctypes.c_int64), ("a", ctypes.c_void_p),
                ("b", ctypes.c_void_p), ("philox", PhiloxSource), ("out", ctypes.c_void_p)]


class DynThreshArgs(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("B", ctypes.c_int64), ("N", ctypes.c_int64), ("x", ctypes.c_void_p),
                ("m", ctypes.c_void_p), ("m2", ctypes.c_void_p), ("coef", ctypes.c_void_p), ("R", ctypes.c_int64),
                ("index", ctypes.c_void_p), ("index_stride", ctypes.c_int64), ("row_stride", ctypes.c_int64),
                ("lo", ctypes.c_int64), ("hi", ctypes.c_int64), ("wt", ctypes.c_double),
                ("max_val", ctypes.c_double), ("out", ctypes.c_void_p)]


class FusedStepBackwardArgs(ctypes.Structure):  # pydiff_math.h
    _fields_ = [("dtype", ctypes.c_int), ("B", ctypes.c_int64), ("N", ctypes.c_int64),
                ("grad_out", ctypes.c_void_p), ("grad_w", ctypes.c_void_p), ("x", ctypes.c_void_p),
                ("m", ctypes.c_void_p), ("m2", ctypes.c_void_p), ("var", ctypes.c_void_p), ("coef", ctypes.c_void_p),
                ("R", ctypes.c_int64), ("index", ctypes.c_void_p), ("index_stride", ctypes.c_int64),
                ("row_stride", ctypes.c_int64), ("noise", ctypes.c_void_p), ("philox", PhiloxSource),
                ("threshold", ctypes.c_void_p), ("dx", ctypes.c_void_p), ("dm", ctypes.c_void_p),
                ("dm2", ctypes.c_void_p), ("dnoise", ctypes.c_void_p), ("dvar", ctypes.c_void_p)]


def _by_value(struct) -> np.ndarray:
    """A struct as a kernel argument: CuPy passes a one-element numpy array by value (its bytes)."""
    return np.frombuffer(bytes(struct), dtype=np.dtype((np.void, ctypes.sizeof(struct)))).copy()


def _philox(seed, offset, rng) -> PhiloxSource:
    if seed is not None and rng is not None:
        raise ValueError("give either seed or rng, not both")
    p = PhiloxSource()
    p.on = seed is not None or rng is not None
    p.seed = 0 if seed is None else int(seed)
    p.offset = int(offset)
    p.rng = _native.ptr(rng) or None
    return p


# ---------------------------------------------------------------------------------------------- geometry

def grid_2d(units: int, B: int, sms: int) -> tuple:
    """common.cuh's grid_2d: (blocks along a sample, samples), at most sms*BLOCKS_PER_SM blocks when B allows."""
    y = max(B, 1) if B < MAX_GRID_Y else MAX_GRID_Y
    need = (units + THREADS - 1) // THREADS
    cap = max((sms * BLOCKS_PER_SM) // y, 1)
    return max(min(need, cap), 1), y


def blocks_along(N: int, B: int) -> int:
    """common.cuh's blocks_along: blocks along a sample, at most 2^16 blocks in all (fused_step_backward's grid
    is ``(blocks_along(N, B), min(B, MAX_GRID_Y))``, independent of the SM count)."""
    need = (N + THREADS - 1) // THREADS
    batches = min(B, MAX_GRID_Y)
    cap = max(MAX_BLOCKS // (batches if batches > 0 else 1), 1)
    return max(min(need, cap), 1)


def sumsq_num_partials(N: int) -> int:
    """reductions.cu's sumsq_num_partials: blocks per sample of stage 1 (a function of N alone)."""
    per_block = THREADS * 8
    return min(max((N + per_block - 1) // per_block, 1), MAX_PARTIALS)


def _aligned(*ts) -> bool:
    return all(t is None or t.data_ptr() % 16 == 0 for t in ts)


# ---------------------------------------------------------------------------------------------- availability

def _import_cupy():
    import cupy  # noqa: F401 -- optional dependency
    import cupy.cuda  # noqa: F401

    return cupy


def unavailable_reason() -> str | None:
    """Why the backend cannot run here (CuPy, libnvrtc, the sources or a GPU missing), or None."""
    try:
        _import_cupy()
    except Exception as exc:  # ImportError, or a CuPy built for another CUDA failing at import
        return f"CuPy is not importable ({type(exc).__name__}: {exc}); pip install pydiff[cupy]"
    why = _nvrtc.unavailable_reason()
    if why is not None:
        return why
    try:
        _nvrtc.source_dir()
    except FileNotFoundError as exc:
        return str(exc)
    try:
        ok = bool(torch.cuda.is_available())
    except Exception as exc:  # a broken driver must not break the library
        return f"no CUDA device (torch.cuda.is_available() raised {exc!r})"
    if not ok:
        return "no CUDA device"
    return _nvrtc.headers_problem()


def available() -> bool:
    return unavailable_reason() is None


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$PYDIFF_CACHE_DIR/cuda-jit``, default ``~/.cache/pydiff/cuda-jit``."""
    root = os.environ.get("PYDIFF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pydiff")
    return Path(root) / "cuda-jit"


# ---------------------------------------------------------------------------------------------- compile + load

class _State:
    lock = threading.Lock()
    src_hash: str | None = None
    functions: dict = {}   # (device, key) -> cupy Function (its Module stays referenced by it)


def include_dirs() -> list:
    """NVRTC's include path for the kernel sources: csrc/cuda, csrc/include and the CUDA headers' folder."""
    root = _nvrtc.source_dir()
    dirs = [str(root / "cuda"), str(root / "include")]
    inc = _nvrtc.cuda_include_dir()
    if inc is not None:
        dirs.append(str(inc))
    return dirs


def kernel_key(file: str, expr: str, arch: int, src_hash: str | None = None) -> str:
    """The cache key of one kernel: sources, NVRTC version, arch, options, file and name expression."""
    src_hash = src_hash or _nvrtc.sources_hash()
    parts = [src_hash, ".".join(map(str, _nvrtc.version())), str(int(arch)), " ".join(_nvrtc.BASE_OPTIONS),
             file, expr]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _arch(device: int) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    arch = 10 * major + minor
    archs = _nvrtc.supported_archs()
    if arch not in archs:
        raise RuntimeError(f"the {NAME} backend: NVRTC {'.'.join(map(str, _nvrtc.version()))} cannot compile for "
                           f"this GPU (sm_{arch}, {torch.cuda.get_device_name(device)}); it targets "
                           f"{', '.join(f'sm_{a}' for a in archs)}. Install a newer nvidia-cuda-nvrtc wheel.")
    return arch


def _compile_cached(file: str, expr: str, arch: int):
    """(cubin bytes, lowered name) from the disk cache, compiling on a miss."""
    if _State.src_hash is None:
        _State.src_hash = _nvrtc.sources_hash()
    key = kernel_key(file, expr, arch, _State.src_hash)
    d = cache_dir()
    cubin, meta = d / f"{key}.cubin", d / f"{key}.json"
    try:
        name = json.loads(meta.read_text())["lowered"]
        return cubin.read_bytes(), name
    except (OSError, ValueError, KeyError):
        pass
    src = (_nvrtc.source_dir() / "cuda" / file).read_text()
    res = _nvrtc.compile_program(src, file, arch, kind="cubin", name_expressions=[expr],
                                 include_dirs=include_dirs())
    name = res.lowered[expr]
    try:  # a read-only cache is not an error: the kernel is then compiled once per process
        d.mkdir(parents=True, exist_ok=True)
        for path, data in ((cubin, res.image), (meta, json.dumps({"lowered": name, "expr": expr}).encode())):
            tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: concurrent processes never read half a file
    except OSError:
        pass
    return res.image, name


def _function(device: int, file: str, expr: str):
    arch = _arch(device)
    k = (device, file, expr)
    fn = _State.functions.get(k)
    if fn is None:
        with _State.lock:
            fn = _State.functions.get(k)
            if fn is None:
                cupy = _import_cupy()
                image, lowered = _compile_cached(file, expr, arch)
                with cupy.cuda.Device(device):
                    mod = cupy.cuda.function.Module()
                    mod.load(image)
                    fn = mod.get_function(lowered)
                _State.functions[k] = fn
    return fn


def _cupy_stream(cupy, device: int):
    """torch's current stream of ``device`` as a CuPy stream (the CUDA stream protocol where CuPy has it)."""
    ts = torch.cuda.current_stream(device)
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(ts, "__cuda_stream__"):
        return from_external(ts)
    return cupy.cuda.ExternalStream(ts.cuda_stream, device)  # CuPy < 14


def _launch(device: int, file: str, expr: str, grid, args, block: int = THREADS):
    cupy = _import_cupy()
    fn = _function(device, file, expr)
    with cupy.cuda.Device(device):
        fn(tuple(int(g) for g in grid), (int(block),), args, stream=_cupy_stream(cupy, device))


# ---------------------------------------------------------------------------------------------- checks

def _device(t: torch.Tensor, what: str) -> int:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda":
        raise ValueError(f"the {NAME} backend runs on CUDA tensors; {what} is on {t.device}")
    if t.dtype not in _STORAGE:
        raise TypeError(f"the {NAME} backend does not take {t.dtype} (it takes float16, bfloat16, float32)")
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def _same_device(dev: int, **tensors):
    for what, t in tensors.items():
        if t is not None and (t.device.type != "cuda" or (t.device.index or 0) != dev):
            raise ValueError(f"the {NAME} backend: {what} is on {t.device}, the data on cuda:{dev}")


def _sms(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _b(v) -> str:
    return "true" if v else "false"


def fused_step_expression(dtype, nhist: int, m2: bool, var: bool, noise: int, thr: bool, wout: bool,
                          vec: bool) -> str:
    """The name expression of one fused_step kernel (noise: 0 none, 1 tensor, 2 Philox)."""
    return (f"pydiff::cuda::fused_step_kernel<{_STORAGE[dtype]}, pydiff::StepFlags<{int(nhist)}, {_b(m2)}, "
            f"{_b(var)}, {int(noise)}, {_b(thr)}, {_b(wout)}>, {_b(vec)}>")


def fused_step_backward_expression(dtype, m2: bool, var: bool, noise: int, thr: bool, gw: bool) -> str:
    """The name expression of one fused_step_backward kernel (noise: 0 none, 1 tensor, 2 Philox)."""
    return (f"pydiff::cuda::fused_step_backward_kernel<{_STORAGE[dtype]}, pydiff::BackFlags<{_b(m2)}, {_b(var)}, "
            f"{int(noise)}, {_b(thr)}, {_b(gw)}>>")


# ---------------------------------------------------------------------------------------------- ops

def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng,
               threshold, m2, var) -> None:
    dev = _device(x, "x")
    hist = tuple(hist)
    if len(hist) > K_MAX:
        raise ValueError(f"hist: at most {K_MAX} history tensors, got {len(hist)}")
    if noise is not None and (seed is not None or rng is not None):
        raise ValueError("give at most one of noise, seed and rng")
    _same_device(dev, m=m, coef=coef, index=index, out=out, w_out=w_out, noise=noise, rng=rng, threshold=threshold,
                 m2=m2, var=var, **{f"hist[{k}]": h for k, h in enumerate(hist)})
    B, N = _native.batch_and_numel(x)
    if B == 0 or N == 0:
        return
    p = _native.ptr
    a = FusedStepArgs()
    a.dtype, a.B, a.N = _DTYPE_CODE[x.dtype], B, N
    a.x, a.m, a.m2, a.var = p(x) or None, p(m) or None, p(m2) or None, p(var) or None
    a.coef, a.R = p(coef), coef.shape[0]
    a.index, a.index_stride, a.row_stride = p(index) or None, int(index_stride), int(row_stride)
    a.out, a.w_out = p(out), p(w_out) or None
    for k, h in enumerate(hist):
        a.hist[k] = p(h)
    a.nhist = len(hist)
    a.noise = p(noise) or None
    a.philox = _philox(seed, offset, rng)
    a.threshold = p(threshold) or None
    vec = _aligned(x, m, m2, var, noise, out, w_out, *hist)
    V = _VEC[x.dtype]
    grid = grid_2d((N + V - 1) // V if vec else N, B, _sms(dev))
    kind = 1 if noise is not None else (2 if a.philox.on else 0)
    expr = fused_step_expression(x.dtype, len(hist), m2 is not None, var is not None, kind, threshold is not None,
                                 w_out is not None, vec)
    _launch(dev, _FILE[x.dtype], expr, grid, (_by_value(a),))


def sumsq(a, b, seed, offset, rng) -> torch.Tensor:
    dev = _device(a, "a")
    _same_device(dev, b=b, rng=rng)
    B, N = _native.batch_and_numel(a)
    S = _native.num_sources(b, seed, rng)
    out = torch.zeros(S, B, dtype=torch.float32, device=a.device)
    if B == 0 or N == 0:
        return out
    P = sumsq_num_partials(N)
    partials = torch.empty(S * B * P, dtype=torch.float32, device=a.device)
    args = SumsqArgs()
    args.dtype, args.B, args.N = _DTYPE_CODE[a.dtype], B, N
    args.a, args.b = a.data_ptr(), _native.ptr(b) or None
    args.philox = _philox(seed, offset, rng)
    args.out = out.data_ptr()
    S_ = _STORAGE[a.dtype]
    vec = _aligned(a, b)
    _launch(dev, "reductions.cu", f"pydiff::cuda::sumsq_partial_kernel<{S_}, {_b(vec)}>",
            (P, min(B, MAX_GRID_Y)), (_by_value(args), np.uint64(partials.data_ptr()), np.int64(P)))
    # stage 2: one warp per (source, sample)
    _launch(dev, "reductions.cu", "pydiff::cuda::sumsq_final_kernel", (min(B, MAX_GRID_Y), S),
            (np.uint64(partials.data_ptr()), np.int64(P), np.int64(B), np.uint64(out.data_ptr())), block=32)
    return out


def langevin_step(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng) -> None:
    """sumsq, reductions.cu's ``langevin_rows_kernel`` (one block), fused_step with one row per sample."""
    dev = _device(x, "x")
    _same_device(dev, m=m, coef=coef, out=out, w_out=w_out, noise=noise, rng=rng)
    B, N = _native.batch_and_numel(x)
    if B == 0 or N == 0:
        return
    sums = sumsq(m, noise, seed, offset, rng)
    rows = torch.empty(B, NCOEF, dtype=torch.float32, device=x.device)
    _launch(dev, "reductions.cu", "pydiff::cuda::langevin_rows_kernel", (1,),
            (np.uint64(sums.data_ptr()), np.uint64(coef.data_ptr()), np.int64(coef_stride), np.int64(B),
             np.int32(1 if sample_norm else 0), np.uint64(rows.data_ptr())))
    fused_step(x, m, rows, None, 0, 1, out, w_out, (), noise, seed, offset, rng, None, None, None)


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val) -> torch.Tensor:
    dev = _device(x, "x")
    _same_device(dev, m=m, coef=coef, index=index, m2=m2)
    if m2 is not None and m is None:
        raise ValueError("m2 needs m")
    B, N = _native.batch_and_numel(x)
    lo, hi = int(lo), int(hi)
    if B and not (0 <= lo <= hi <= lo + 1 and hi < N):
        raise ValueError(f"quantile ranks must satisfy 0 <= lo <= hi <= lo + 1 and hi < N={N}, got {lo}, {hi}")
    if not (0.0 <= float(wt) <= 1.0):
        raise ValueError(f"wt must be in [0, 1], got {wt}")
    if max_val != max_val:
        raise ValueError("max_val must not be NaN")
    out = torch.empty(B, dtype=torch.float32, device=x.device)
    if B == 0:
        return out
    v = torch.empty(B, N, dtype=torch.float32, device=x.device)
    args = DynThreshArgs()
    args.dtype, args.B, args.N = _DTYPE_CODE[x.dtype], B, N
    args.x, args.m, args.m2 = x.data_ptr(), _native.ptr(m) or None, _native.ptr(m2) or None
    args.coef, args.R = _native.ptr(coef) or None, coef.shape[0] if coef is not None else 0
    args.index, args.index_stride, args.row_stride = _native.ptr(index) or None, int(index_stride), int(row_stride)
    vec = _aligned(x, m, m2, v)
    V = _VEC[x.dtype]
    grid = grid_2d((N + V - 1) // V if vec else N, B, _sms(dev))
    expr = (f"pydiff::cuda::abs_x0_kernel<{_STORAGE[x.dtype]}, {_b(m is not None)}, {_b(m2 is not None)}, "
            f"{_b(vec)}>")
    _launch(dev, "reductions.cu", expr, grid, (_by_value(args), np.uint64(v.data_ptr())))
    v_lo = torch.kthvalue(v, lo + 1, dim=1).values.contiguous()
    v_hi = v_lo if hi == lo else torch.kthvalue(v, hi + 1, dim=1).values.contiguous()
    any_nan = torch.isnan(v).any(dim=1).to(torch.uint8)
    blocks = min((B + THREADS - 1) // THREADS, 1024)
    _launch(dev, "reductions.cu", "pydiff::cuda::dyn_thresh_finish_kernel", (blocks,),
            (np.uint64(v_lo.data_ptr()), np.uint64(v_hi.data_ptr()), np.uint64(any_nan.data_ptr()), np.int64(B),
             np.float32(wt), np.float32(max_val), np.uint64(out.data_ptr())))
    return out


def philox_normal(out, seed, offset, rng) -> None:
    dev = _device(out, "out")
    _same_device(dev, rng=rng)
    if seed is None and rng is None:
        raise ValueError("philox_normal: give seed or rng")
    n = out.numel()
    if n == 0:
        return
    vec = _aligned(out)
    V = _VEC[out.dtype]
    gx, _ = grid_2d((n + V - 1) // V if vec else n, 1, _sms(dev))
    expr = f"pydiff::cuda::philox_normal_kernel<{_STORAGE[out.dtype]}, {_b(vec)}>"
    _launch(dev, "philox_normal.cu", expr, (gx,),
            (np.uint64(out.data_ptr()), np.int64(n), _by_value(_philox(seed, offset, rng))))



def _require(ok: bool, what: str):
    # the ahead-of-time module's checks (csrc/bindings/backward_bindings.h, pydiff_checks.h), same messages
    if not ok:
        raise ValueError(f"fused_step_backward: {what}")


def fused_step_backward(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng,
                        threshold, m2, var, dx, dm, dm2, dnoise, dvar) -> None:
    dev = _device(x, "x")
    _same_device(dev, grad_out=grad_out, grad_w=grad_w, m=m, coef=coef, index=index, noise=noise, rng=rng,
                 threshold=threshold, m2=m2, var=var, dx=dx, dm=dm, dm2=dm2, dnoise=dnoise, dvar=dvar)
    philox = _philox(seed, offset, rng)
    _require(not (noise is not None and philox.on), "give at most one of noise, seed and rng")
    _require(dm2 is None or m2 is not None, "dm2 needs m2")
    _require(dnoise is None or noise is not None, "dnoise needs a noise tensor")
    _require(dvar is None or var is not None, "dvar needs var")
    B, N = _native.batch_and_numel(x)
    if B == 0 or N == 0:
        return
    _require(all(t is not None for t in (grad_out, x, m, dx, dm)), "grad_out, x, m, dx and dm must not be null")
    _require(coef is not None, "coef pointer is null")
    R = coef.shape[0]
    _require(R >= 1, "coef must have at least one row")
    _require(index_stride in (0, 1), "index_stride must be 0 or 1")
    _require(row_stride in (0, 1), "row_stride must be 0 or 1")
    if index is None and row_stride == 1:
        _require(R >= B, "row_stride=1 needs one coef row per sample (R >= B)")
    p = _native.ptr
    a = FusedStepBackwardArgs()
    a.dtype, a.B, a.N = _DTYPE_CODE[x.dtype], B, N
    a.grad_out, a.grad_w = p(grad_out), p(grad_w) or None
    a.x, a.m, a.m2, a.var = p(x), p(m), p(m2) or None, p(var) or None
    a.coef, a.R = p(coef), R
    a.index, a.index_stride, a.row_stride = p(index) or None, int(index_stride), int(row_stride)
    a.noise = p(noise) or None
    a.philox = philox
    a.threshold = p(threshold) or None
    a.dx, a.dm = p(dx), p(dm)
    a.dm2, a.dnoise, a.dvar = p(dm2) or None, p(dnoise) or None, p(dvar) or None
    # pydiff_math.h's dispatch_back_flags: Philox noise only enters dv, so without var it is the no-noise kernel
    kind = NOISE_TENSOR if noise is not None else (NOISE_PHILOX if philox.on and var is not None else NO_NOISE)
    expr = fused_step_backward_expression(x.dtype, m2 is not None, var is not None, kind, threshold is not None,
                                          grad_w is not None)
    _launch(dev, "fused_step_backward.cu", expr, (blocks_along(N, B), min(B, MAX_GRID_Y)), (_by_value(a),))
