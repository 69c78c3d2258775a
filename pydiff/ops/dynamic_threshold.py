"""Imagen's dynamic thresholding scale (Saharia et al., arXiv:2205.11487, section 2.3).

Per sample ``b``::

    x0  = S*(P*x + Q*m)                          (the predicted clean sample; x itself when m is None)
    q_b = quantile(|x0_b|, ratio)                (linear interpolation, as torch.quantile)
    s_b = clamp(q_b, min=1, max=max_val)

``fused_step(..., threshold=s)`` then uses ``clamp(x0, -s, s) / s``. With ``s = 1`` this is plain clipping
to [-1, 1]; pixels are pushed inwards only when more than ``1 - ratio`` of them saturate.
"""
from __future__ import annotations

import torch

from ._dispatch import check_data, check_like, compute_dtype, dispatch, normalize_rows, resolve_backend
from .fused_step import COL, NCOEF, _rows


def dynamic_threshold_reference(x, m, coef, index, index_stride, row_stride, ratio, max_val):
    """Plain-PyTorch twin (normalized signature, docs/ops.md): ``(B,)`` scales."""
    B = x.shape[0]
    T = compute_dtype(x.dtype)
    x0 = x.to(T).reshape(B, -1)
    if m is not None:
        r = _rows(coef, index, index_stride, row_stride, B).to(T)
        x0 = r[:, COL["S"], None] * (r[:, COL["P"], None] * x0 + r[:, COL["Q"], None] * m.to(T).reshape(B, -1))
    q = torch.quantile(x0.abs(), ratio, dim=1)
    return torch.clamp(q, min=1.0, max=max_val)


def dynamic_threshold(
    x: torch.Tensor,
    model_output: torch.Tensor | None = None,
    coef: torch.Tensor | None = None,
    *,
    index: torch.Tensor | None = None,
    ratio: float = 0.995,
    max_val: float = 1.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-sample dynamic-thresholding scale ``s`` of ``x0 = S*(P*x + Q*model_output)`` (or of ``x``).

    Args:
        x: ``(B, ...)`` tensor; the predicted ``x0`` itself when ``model_output`` is None.
        model_output, coef, index: as for ``fused_step``; only columns P, Q and S are read.
        ratio: the quantile of ``|x0|``, in (0, 1] (Imagen: 0.995).
        max_val: upper bound of ``s`` (diffusers' ``sample_max_value``), > 0.

    Returns:
        ``(B,)`` tensor (float32; float64 for float64 input) to pass as ``fused_step(threshold=...)``.
    """
    check_data("x", x)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    if isinstance(max_val, bool) or not isinstance(max_val, (int, float)) or not max_val > 0:
        raise ValueError(f"max_val must be a positive number, got {max_val!r}")
    x = x.contiguous()
    B = x.shape[0]
    if model_output is None:
        if coef is not None or index is not None:
            raise ValueError("coef/index are only used together with model_output")
        m, index_stride, row_stride = None, 0, 0
    else:
        m = check_like("model_output", model_output, x, "x")
        if coef is None:
            raise ValueError("coef is required when model_output is given")
        coef, index, index_stride, row_stride = normalize_rows(coef, index, B, x, NCOEF)
    if x.numel() == 0:
        return torch.ones(B, dtype=compute_dtype(x.dtype), device=x.device).clamp(max=max_val)
    impl = dispatch("dynamic_threshold", resolve_backend(backend, x))
    return impl(x, m, coef, index, index_stride, row_stride, float(ratio), float(max_val))
