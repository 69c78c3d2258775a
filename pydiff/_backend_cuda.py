"""Launchers of the CUDA kernels (``pydiff._C_cuda``): the ``cuda`` backend of ``pydiff.ops``.

Same normalized signatures as ``pydiff._backend_cpu`` (docs/ops.md). Kernels are enqueued on the
current torch stream of the tensors' device (``torch.cuda.current_stream(device).cuda_stream``) and
never synchronize. float16/bfloat16/float32 only (compute type float32).

* ``sumsq`` is a deterministic two-stage reduction: a partials buffer (allocated here through torch's
  caching allocator) is filled by stage 1 and summed in a fixed order by stage 2; no atomics.
* ``dynamic_threshold``: a kernel writes ``|x0|`` as float32 ``(B, N)``; the per-sample quantile is then
  selected here with ``torch.kthvalue`` (two ranks, torch.quantile's interpolation, NaN -> NaN) and
  clamped with ``torch.clamp`` -- no host sync.

Importing this module never fails: without the compiled extension or a usable GPU ``available()`` is False.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._native_common import batch_and_numel as _bn
from ._native_common import check_coef_columns, dtype_code, ptr as _ptr

try:
    from . import _C_cuda
except ImportError:  # pragma: no cover - depends on the build
    _C_cuda = None

__all__ = ["available", "fused_step", "sumsq", "dynamic_threshold", "philox_normal"]

if _C_cuda is not None:
    _DTYPE_CODE = {torch.float32: _C_cuda.FLOAT32, torch.float16: _C_cuda.FLOAT16, torch.bfloat16: _C_cuda.BFLOAT16}
else:
    _DTYPE_CODE = {}


def available() -> bool:
    """True when ``pydiff._C_cuda`` was built and torch sees a CUDA GPU."""
    if _C_cuda is None:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:
        return False






def _dev_stream(t: torch.Tensor):
    dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return dev, torch.cuda.current_stream(dev).cuda_stream






def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, threshold) -> None:
    B, N = _bn(x)
    _check_coef(coef)
    dev, stream = _dev_stream(x)
    _C_cuda.fused_step(
        _code(x.dtype), B, N, _ptr(x), _ptr(m), _ptr(coef), coef.shape[0], _ptr(index), int(index_stride),
        int(row_stride), _ptr(out), _ptr(w_out), [_ptr(h) for h in hist], _ptr(noise),
        None if seed is None else int(seed), int(offset), _ptr(threshold), dev, stream,
    )


def sumsq(a, b, seed, offset) -> torch.Tensor:
    B, N = _bn(a)
    S = 1 + (b is not None or seed is not None)
    dev, stream = _dev_stream(a)
    out = torch.empty(S, B, dtype=torch.float32, device=a.device)
    partials = torch.empty(max(S * B * _C_cuda.sumsq_num_partials(N), 1), dtype=torch.float32, device=a.device)
    _C_cuda.sumsq(_code(a.dtype), B, N, _ptr(a), _ptr(b), None if seed is None else int(seed), int(offset),
                  _ptr(out), _ptr(partials), dev, stream)
    return out


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, ratio, max_val) -> torch.Tensor:
    B, N = _bn(x)
    if coef is not None:
        _check_coef(coef)
    dev, stream = _dev_stream(x)
    v = torch.empty(B, N, dtype=torch.float32, device=x.device)
    R = coef.shape[0] if coef is not None else 0
    _C_cuda.abs_x0(_code(x.dtype), B, N, _ptr(x), _ptr(m), _ptr(coef), R, _ptr(index), int(index_stride),
                   int(row_stride), _ptr(v), dev, stream)
    # torch.quantile's rank arithmetic, in float32: pos = ratio*(N-1), lo = floor, hi = ceil
    pos = np.float32(ratio) * np.float32(N - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    weight = float(np.float32(pos) - np.float32(lo))
    v_lo = torch.kthvalue(v, lo + 1, dim=1).values
    v_hi = v_lo if hi == lo else torch.kthvalue(v, hi + 1, dim=1).values
    q = torch.lerp(v_lo, v_hi, weight)
    q = torch.where(torch.isnan(v).any(dim=1), torch.full_like(q, math.nan), q)
    return torch.clamp(q, min=1.0, max=float(max_val))


def philox_normal(out, seed, offset) -> None:
    dev, stream = _dev_stream(out)
    _C_cuda.philox_normal(_code(out.dtype), out.numel(), _ptr(out), int(seed), int(offset), dev, stream)


def _code(dtype: torch.dtype) -> int:
    return dtype_code(_DTYPE_CODE, dtype, "cuda")


def _check_coef(coef: torch.Tensor) -> None:
    check_coef_columns(_C_cuda, coef)
