"""The ``cuda`` backend: launchers of the CUDA kernels (``pydiff._C_cuda``, csrc/cuda).

Same normalized signatures as the ``cpu`` backend (docs/ops.md). Kernels are enqueued on the current
torch stream of the tensors' device (``torch.cuda.current_stream(device).cuda_stream``) and never
synchronize; the ``rng`` tensor (Philox key and counter base) is read by the kernels from device memory,
so a captured CUDA graph draws new noise when ``rng[1]`` is advanced between replays.
float16/bfloat16/float32 only (compute type float32).

* ``sumsq`` is a deterministic two-stage reduction: a partials buffer (torch's caching allocator) is filled
  by stage 1 and summed in a fixed order by stage 2; no atomics.
* ``dynamic_threshold``: a kernel writes ``|x0|`` as float32 ``(B, N)``; ranks ``lo`` and ``hi`` are selected
  per sample with ``torch.kthvalue``, and a second kernel applies the quantile rule and the clamp
  (pydiff_math.h, the same code as the cpu backend) -- no host sync.

Misuse is an error that names the cause: a CPU tensor (ValueError), a GPU older than every architecture
the module was compiled for (RuntimeError naming both and the fixes: ``PYDIFF_CUDA_ARCHS`` or ``cuda-jit``).

Importing this module never fails: without the compiled extension or a GPU ``available()`` is False and
``unavailable_reason()`` says why.
"""
from __future__ import annotations

import torch

from . import _native

__all__ = ["available", "unavailable_reason", "fused_step", "sumsq", "dynamic_threshold", "philox_normal",
           "langevin_step"]

_C_cuda, _REASON = _native.load("pydiff._C_cuda")
_CODES = _native.dtype_codes(_C_cuda, float64=False) if _C_cuda is not None else {}


def unavailable_reason() -> str | None:
    """Why the backend is unavailable (not built, stale build, no CUDA device), or None."""
    if _REASON is not None:
        return _REASON
    try:
        ok = bool(torch.cuda.is_available())
    except Exception as e:  # a broken driver must not break the library
        return f"no CUDA device (torch.cuda.is_available() raised {e!r})"
    return None if ok else "no CUDA device"


def available() -> bool:
    """True when ``pydiff._C_cuda`` is built with this package's column layout and torch sees a CUDA GPU."""
    return unavailable_reason() is None


def _code(dtype: torch.dtype) -> int:
    return _native.dtype_code(_CODES, dtype, "cuda")


_ARCH_OK: dict = {}  # device ordinal -> None (runs) or the reason it cannot


def _arch_problem(dev: int) -> str | None:
    """Why the compiled kernels cannot run on device ``dev``, or None. nvcc embeds SASS for each listed
    architecture and PTX for them, which newer GPUs compile at load; a GPU older than all of them has none."""
    if dev not in _ARCH_OK:
        why = None
        try:
            built = sorted(int(a.split("-")[0]) for a in str(_C_cuda.archs()).replace(";", ",").split(",")
                           if a.strip().split("-")[0].isdigit())
        except Exception:  # an unparsable list: let the launch report what it finds
            built = []
        major, minor = torch.cuda.get_device_capability(dev)
        arch = 10 * major + minor
        if built and arch < min(built):
            why = (f"the cuda backend: this GPU ({torch.cuda.get_device_name(dev)}) is sm_{arch}, but pydiff._C_cuda "
                   f"was compiled for {', '.join(f'sm_{a}' for a in built)}; rebuild with PYDIFF_CUDA_ARCHS={arch} "
                   f"or use backend='cuda-jit'")
        _ARCH_OK[dev] = why
    return _ARCH_OK[dev]


def _dev_stream(t: torch.Tensor, what: str = "x"):
    if t.device.type != "cuda":
        raise ValueError(f"the cuda backend runs on CUDA tensors; {what} is on {t.device}")
    dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    why = _arch_problem(dev)
    if why is not None:
        raise RuntimeError(why)
    return dev, torch.cuda.current_stream(dev).cuda_stream


def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng,
               threshold, m2, var) -> None:
    B, N = _native.batch_and_numel(x)
    dev, stream = _dev_stream(x)
    p = _native.ptr
    _C_cuda.fused_step(
        _code(x.dtype), B, N, p(x), p(m), p(coef), coef.shape[0], p(index), int(index_stride), int(row_stride),
        p(out), p(w_out), [p(h) for h in hist], p(noise), _native.seed_arg(seed), int(offset), p(rng),
        p(threshold), p(m2), p(var), dev, stream,
    )


def sumsq(a, b, seed, offset, rng) -> torch.Tensor:
    B, N = _native.batch_and_numel(a)
    S = _native.num_sources(b, seed, rng)
    dev, stream = _dev_stream(a, "a")
    out = torch.empty(S, B, dtype=torch.float32, device=a.device)
    partials = torch.empty(max(S * B * _C_cuda.sumsq_num_partials(N), 1), dtype=torch.float32, device=a.device)
    p = _native.ptr
    _C_cuda.sumsq(_code(a.dtype), B, N, p(a), p(b), _native.seed_arg(seed), int(offset), p(rng), p(out),
                  p(partials), dev, stream)
    return out


def langevin_step(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng) -> None:
    B, N = _native.batch_and_numel(x)
    dev, stream = _dev_stream(x)
    sums = torch.empty(2, B, dtype=torch.float32, device=x.device)
    rows = torch.empty(B, _C_cuda.NCOEF, dtype=torch.float32, device=x.device)
    partials = torch.empty(max(2 * B * _C_cuda.sumsq_num_partials(N), 1), dtype=torch.float32, device=x.device)
    p = _native.ptr
    _C_cuda.langevin_step(_code(x.dtype), B, N, p(x), p(m), p(coef), int(coef_stride), bool(sample_norm), p(out),
                          p(w_out), p(noise), _native.seed_arg(seed), int(offset), p(rng), p(sums), p(rows),
                          p(partials), dev, stream)


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val) -> torch.Tensor:
    B, N = _native.batch_and_numel(x)
    dev, stream = _dev_stream(x)
    v = torch.empty(B, N, dtype=torch.float32, device=x.device)
    R = coef.shape[0] if coef is not None else 0
    p = _native.ptr
    _C_cuda.abs_x0(_code(x.dtype), B, N, p(x), p(m), p(coef), R, p(index), int(index_stride), int(row_stride),
                   p(m2), p(v), dev, stream)
    lo, hi = int(lo), int(hi)
    if not (0 <= lo <= hi <= lo + 1 and hi < N):
        raise ValueError(f"quantile ranks must satisfy 0 <= lo <= hi <= lo + 1 and hi < N={N}, got {lo}, {hi}")
    v_lo = torch.kthvalue(v, lo + 1, dim=1).values.contiguous()
    v_hi = v_lo if hi == lo else torch.kthvalue(v, hi + 1, dim=1).values.contiguous()
    any_nan = torch.isnan(v).any(dim=1).to(torch.uint8)
    out = torch.empty(B, dtype=torch.float32, device=x.device)
    _C_cuda.dyn_thresh_finish(B, p(v_lo), p(v_hi), p(any_nan), float(wt), float(max_val), p(out), dev, stream)
    return out


def philox_normal(out, seed, offset, rng) -> None:
    dev, stream = _dev_stream(out, "out")
    _C_cuda.philox_normal(_code(out.dtype), out.numel(), out.data_ptr(), _native.seed_arg(seed), int(offset),
                          _native.ptr(rng), dev, stream)


def fused_step_backward(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng,
                        threshold, m2, var, dx, dm, dm2, dnoise, dvar) -> None:
    B, N = _native.batch_and_numel(x)
    dev, stream = _dev_stream(x)
    p = _native.ptr
    _C_cuda.fused_step_backward(
        _code(x.dtype), B, N, p(grad_out), p(grad_w), p(x), p(m), p(coef), coef.shape[0], p(index),
        int(index_stride), int(row_stride), p(noise), _native.seed_arg(seed), int(offset), p(rng), p(threshold),
        p(m2), p(var), p(dx), p(dm), p(dm2), p(dnoise), p(dvar), dev, stream,
    )


__all__ += ["fused_step_backward"]
