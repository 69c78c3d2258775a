"""Launchers of the C++/OpenMP kernels (``pydiff._C``): the ``cpu`` backend of ``pydiff.ops``.

The functions take the normalized arguments of docs/ops.md (already validated, contiguous, same
device and dtype, ``coef`` in the compute dtype); they only map dtypes to codes, pass ``data_ptr()``
integers (0 for ``None``) and allocate outputs. Importing this module never fails: without the
compiled extension ``available()`` is False.
"""
from __future__ import annotations

import torch

from ._native_common import batch_and_numel as _bn
from ._native_common import check_coef_columns, dtype_code, ptr as _ptr

try:  # the extension is optional (pure-Python installs, or a failed native build)
    from . import _C
except ImportError:  # pragma: no cover - depends on the build
    _C = None

__all__ = ["available", "fused_step", "sumsq", "dynamic_threshold", "philox_normal"]

if _C is not None:
    _DTYPE_CODE = {
        torch.float32: _C.FLOAT32,
        torch.float64: _C.FLOAT64,
        torch.float16: _C.FLOAT16,
        torch.bfloat16: _C.BFLOAT16,
    }
else:
    _DTYPE_CODE = {}


def available() -> bool:
    """True when ``pydiff._C`` was built and imports."""
    return _C is not None






def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _threads() -> int:
    return torch.get_num_threads()  # honour torch.set_num_threads






def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, threshold) -> None:
    B, N = _bn(x)
    _check_coef(coef)
    _C.fused_step(
        _code(x.dtype), B, N, _ptr(x), _ptr(m), _ptr(coef), coef.shape[0], _ptr(index), int(index_stride),
        int(row_stride), _ptr(out), _ptr(w_out), [_ptr(h) for h in hist], _ptr(noise),
        None if seed is None else int(seed), int(offset), _ptr(threshold), _threads(),
    )


def sumsq(a, b, seed, offset) -> torch.Tensor:
    B, N = _bn(a)
    S = 1 + (b is not None or seed is not None)
    out = torch.empty(S, B, dtype=_compute_dtype(a.dtype), device=a.device)
    _C.sumsq(_code(a.dtype), B, N, _ptr(a), _ptr(b), None if seed is None else int(seed), int(offset), _ptr(out),
             _threads())
    return out


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, ratio, max_val) -> torch.Tensor:
    B, N = _bn(x)
    if coef is not None:
        _check_coef(coef)
    out = torch.empty(B, dtype=_compute_dtype(x.dtype), device=x.device)
    R = coef.shape[0] if coef is not None else 0
    _C.dynamic_threshold(
        _code(x.dtype), B, N, _ptr(x), _ptr(m), _ptr(coef), R, _ptr(index), int(index_stride), int(row_stride),
        float(ratio), float(max_val), _ptr(out), _threads(),
    )
    return out


def philox_normal(out, seed, offset) -> None:
    _C.philox_normal(_code(out.dtype), out.numel(), _ptr(out), int(seed), int(offset), _threads())


def _code(dtype: torch.dtype) -> int:
    return dtype_code(_DTYPE_CODE, dtype, "cpu")


def _check_coef(coef: torch.Tensor) -> None:
    check_coef_columns(_C, coef)
