"""Imagen's dynamic thresholding scale (Saharia et al., arXiv:2205.11487, section 2.3).

Per sample ``b``::

    x0  = S*(P*x + Q*m_e)                        (the predicted clean sample; x itself when m is None)
    q_b = quantile(|x0_b|, ratio)                (linear interpolation, quantile_rank's rule)
    s_b = clamp(q_b, min=1, max=max_val)

``fused_step(..., threshold=s)`` then uses ``clamp(x0, -s, s) / s``. With ``s = 1`` this is plain clipping
to [-1, 1]; pixels are pushed inwards only when more than ``1 - ratio`` of them saturate.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from . import _contract as contract, library
from ._interop import from_arrays
from ._validate import check_data, check_index_range, check_like, compute_dtype, normalize_rows
from .columns import COL
from .dispatch import dispatch, resolve_backend
from .fused_step import select_rows


def quantile_rank(ratio: float, n: int):
    """``(lo, hi, wt)``: the two sorted positions and the interpolation weight of the ``ratio`` quantile of ``n``
    values, in float64 (docs/ops.md): ``pos = ratio (n-1)``, ``lo = floor(pos)``, ``hi = min(ceil(pos), n-1)``.

    float64 keeps the rank exact where float32 does not: at n = 3*2^20 float32 rounding of ``pos`` moves the
    weight from 0.5 to 0.365, and at n > 2^24 with ratio near 1 it rounds ``pos`` past the last element.
    """
    pos = float(ratio) * float(n - 1)
    lo = min(int(math.floor(pos)), n - 1)
    hi = min(int(math.ceil(pos)), n - 1)
    return lo, hi, pos - lo


def dynamic_threshold_reference(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val):
    """Plain-PyTorch twin (normalized signature, docs/ops.md): ``(B,)`` scales."""
    B = x.shape[0]
    T = compute_dtype(x.dtype)
    x0 = x.to(T).reshape(B, -1)
    if m is not None:
        r = select_rows(coef, index, index_stride, row_stride, B).to(T)
        c = lambda name: r[:, COL[name], None]  # noqa: E731
        me = m.to(T).reshape(B, -1)
        if m2 is not None:
            me = c("M1") * me + c("M2") * m2.to(T).reshape(B, -1)
        x0 = c("S") * (c("P") * x0 + c("Q") * me)
    v = x0.abs().sort(dim=1).values
    v_lo, v_hi = v[:, lo], v[:, hi]
    np_t = np.float64 if T == torch.float64 else np.float32
    w = np_t(wt)  # the weight rounded once to T; 1 - w is then computed in T, as the kernels do
    d = v_hi - v_lo
    q = v_lo + float(w) * d if w < 0.5 else v_hi - d * float(np_t(1) - w)
    q = torch.where(v_hi == math.inf, v_hi, q)
    q = torch.where(v_lo == v_hi, v_lo, q)
    q = torch.where(x0.isnan().any(dim=1), torch.full_like(q, math.nan), q)
    return torch.clamp(q, min=1.0, max=max_val)


def _run(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val, backend):
    if coef is not None:
        check_index_range(coef, index)
    impl = dispatch("dynamic_threshold", resolve_backend(backend, x, "dynamic_threshold"))
    return impl(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val)


def _fake(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val, backend):
    return x.new_empty((x.shape[0],), dtype=compute_dtype(x.dtype))


#: ``pydiff::dynamic_threshold``: ``(B,)`` scales; no backward (the quantile's derivative is not implemented)
dynamic_threshold_op = library.define(
    "dynamic_threshold", "(Tensor x, Tensor? m, Tensor? coef, Tensor? index, int index_stride, int row_stride, "
    "Tensor? m2, SymInt lo, SymInt hi, float wt, float max_val, str? backend) -> Tensor", _run, _fake,
    check=contract.dynamic_threshold)
library.no_backward("dynamic_threshold", "x, model_output or m2")


def dynamic_threshold(
    x: torch.Tensor,
    model_output: torch.Tensor | None = None,
    coef: torch.Tensor | None = None,
    *,
    index: torch.Tensor | None = None,
    m2: torch.Tensor | None = None,
    ratio: float = 0.995,
    max_val: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-sample dynamic-thresholding scale ``s`` of ``x0 = S*(P*x + Q*m_e)`` (or of ``x``).

    Args:
        x: ``(B, ...)`` tensor; the predicted ``x0`` itself when ``model_output`` is None.
        model_output, coef, index, m2: as for ``fused_step``; only columns M1, M2, P, Q and S are read.
        ratio: the quantile of ``|x0|``, in (0, 1] (Imagen: 0.995).
        max_val: upper bound of ``s`` (diffusers' ``sample_max_value``), > 0.

    Returns:
        ``(B,)`` tensor (float32; float64 for float64 input) to pass as ``fused_step(threshold=...)``. Runs the
        operator ``torch.ops.pydiff.dynamic_threshold``; it has no backward (a gradient through it raises).
    """
    if not isinstance(x, torch.Tensor):
        return from_arrays(dynamic_threshold, x, model_output, coef, index=index, m2=m2, ratio=ratio,
                           max_val=max_val, backend=backend)
    check_data("x", x)
    for name, v in (("ratio", ratio), ("max_val", max_val)):  # Python or NumPy real numbers
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    ratio, max_val = float(ratio), float(max_val)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    if not max_val > 0:
        raise ValueError(f"max_val must be a positive number, got {max_val!r}")
    x = x.contiguous()
    B = x.shape[0]
    if model_output is None:
        if coef is not None or index is not None or m2 is not None:
            raise ValueError("coef, index and m2 are only used together with model_output")
        m, index_stride, row_stride = None, 0, 0
    else:
        m = check_like("model_output", model_output, x, "x")
        if coef is None:
            raise ValueError("coef is required when model_output is given")
        coef, index, index_stride, row_stride = normalize_rows(coef, index, B, x)
        if m2 is not None:
            m2 = check_like("m2", m2, x, "x")
    if x.numel() == 0:
        return torch.ones(B, dtype=compute_dtype(x.dtype), device=x.device).clamp(max=max_val)
    if library.needs_grad(x, m, m2):
        raise RuntimeError("pydiff.ops.dynamic_threshold has no backward: its inputs must not require grad (detach "
                           "them, or threshold with differentiable torch operations)")
    lo, hi, wt = quantile_rank(ratio, x.numel() // B)
    run = _run if library.eager(x) else dynamic_threshold_op
    return run(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, float(max_val), backend)
