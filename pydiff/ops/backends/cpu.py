"""The ``cpu`` backend: launchers of the C++/OpenMP kernels (``pydiff._C``, csrc/cpu).

The functions take the normalized arguments of docs/ops.md (already validated, contiguous, same device
and dtype, ``coef`` in the compute dtype); they only map dtypes to codes, pass ``data_ptr()`` integers and
allocate outputs. The kernels release the GIL and use ``torch.get_num_threads()`` OpenMP threads. The
element loops were compiled for several x86-64 levels; ``pydiff._C.isa()`` names the one in use
(``PYDIFF_CPU_ISA=baseline|avx2|avx512`` forces one). Importing this module never fails: without a usable
extension ``available()`` is False and ``unavailable_reason()`` says why.
"""
from __future__ import annotations

import torch

from . import _native

__all__ = ["available", "unavailable_reason", "fused_step", "sumsq", "dynamic_threshold", "philox_normal",
           "langevin_step"]

_C, _REASON = _native.load("pydiff._C")
_CODES = _native.dtype_codes(_C, float64=True) if _C is not None else {}


def available() -> bool:
    """True when ``pydiff._C`` is built, imports and has this package's column layout."""
    return _REASON is None


def unavailable_reason() -> str | None:
    """Why the backend is unavailable (not built, failed import, stale build), or None."""
    return _REASON


def _code(dtype: torch.dtype) -> int:
    return _native.dtype_code(_CODES, dtype, "cpu")


def _threads() -> int:
    return torch.get_num_threads()  # honour torch.set_num_threads


def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng,
               threshold, m2, var) -> None:
    B, N = _native.batch_and_numel(x)
    p = _native.ptr
    _C.fused_step(
        _code(x.dtype), B, N, p(x), p(m), p(coef), coef.shape[0], p(index), int(index_stride), int(row_stride),
        p(out), p(w_out), [p(h) for h in hist], p(noise), _native.seed_arg(seed), int(offset), p(rng),
        p(threshold), p(m2), p(var), _threads(),
    )


def sumsq(a, b, seed, offset, rng) -> torch.Tensor:
    B, N = _native.batch_and_numel(a)
    out = torch.empty(_native.num_sources(b, seed, rng), B, dtype=_native.compute_dtype(a.dtype), device=a.device)
    p = _native.ptr
    _C.sumsq(_code(a.dtype), B, N, p(a), p(b), _native.seed_arg(seed), int(offset), p(rng), p(out), _threads())
    return out


def langevin_step(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng) -> None:
    B, N = _native.batch_and_numel(x)
    T = _native.compute_dtype(x.dtype)
    sums = torch.empty(2, B, dtype=T)
    rows = torch.empty(B, _C.NCOEF, dtype=T)
    p = _native.ptr
    _C.langevin_step(_code(x.dtype), B, N, p(x), p(m), p(coef), int(coef_stride), bool(sample_norm), p(out),
                     p(w_out), p(noise), _native.seed_arg(seed), int(offset), p(rng), p(sums), p(rows), _threads())


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val) -> torch.Tensor:
    B, N = _native.batch_and_numel(x)
    out = torch.empty(B, dtype=_native.compute_dtype(x.dtype), device=x.device)
    R = coef.shape[0] if coef is not None else 0
    p = _native.ptr
    _C.dynamic_threshold(
        _code(x.dtype), B, N, p(x), p(m), p(coef), R, p(index), int(index_stride), int(row_stride), p(m2),
        int(lo), int(hi), float(wt), float(max_val), p(out), _threads(),
    )
    return out


def philox_normal(out, seed, offset, rng) -> None:
    _C.philox_normal(_code(out.dtype), out.numel(), out.data_ptr(), _native.seed_arg(seed), int(offset),
                     _native.ptr(rng), _threads())


def fused_step_backward(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng,
                        threshold, m2, var, dx, dm, dm2, dnoise, dvar) -> None:
    B, N = _native.batch_and_numel(x)
    p = _native.ptr
    _C.fused_step_backward(
        _code(x.dtype), B, N, p(grad_out), p(grad_w), p(x), p(m), p(coef), coef.shape[0], p(index),
        int(index_stride), int(row_stride), p(noise), _native.seed_arg(seed), int(offset), p(rng), p(threshold),
        p(m2), p(var), p(dx), p(dm), p(dm2), p(dnoise), p(dvar), _threads(),
    )


__all__ += ["fused_step_backward"]
