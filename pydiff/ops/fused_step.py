"""The fused sampler step: one pass that converts the model output and updates the sample.

Per sample ``b`` (coefficient row ``r``) and element ``g``::

    w     = clip(r.S * (r.P * x + r.Q * m))              # eps / x0 / v  ->  the solver's variable
    w_out = w                                            # optional: pred_original_sample, or history
    x'    = r.O*(r.A*x + r.D*m + r.B0*w + sum_k r.Bk*h_k + r.C*z)

``clip`` is ``clamp(w, -CLIP, CLIP)`` (static clipping, DDPM Ho et al. 2020) or, given a per-sample
``threshold`` s, ``clamp(w, -s, s)/s`` (Imagen dynamic thresholding, Saharia et al. 2022).
DDIM (Song et al., arXiv:2010.02502, eq. 12), DDPM's posterior mean (Ho et al., arXiv:2006.11239,
eq. 7) and DPM-Solver(++)'s multistep updates (Lu et al., arXiv:2206.00927, arXiv:2211.01095) are all
this formula with different coefficients; the coefficients come from a plan computed in float64.
See docs/ops.md for the exact contract.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._dispatch import (
    check_data,
    check_like,
    check_output,
    check_seed_offset,
    compute_dtype,
    dispatch,
    normalize_rows,
    resolve_backend,
)
from .philox import philox_normal_flat

COLUMNS = ("P", "Q", "A", "D", "B0", "B1", "B2", "B3", "C", "CLIP", "S", "O")
NCOEF = len(COLUMNS)
COL = {name: i for i, name in enumerate(COLUMNS)}


def coef_row(**values: float) -> np.ndarray:
    """A float64 coefficient row; unnamed columns are 0 except ``CLIP`` (+inf: no clipping), ``S`` and ``O`` (1).

    >>> coef_row(P=1.0, B0=1.0)   # out = w = x
    """
    row = np.zeros(NCOEF, dtype=np.float64)
    row[COL["CLIP"]] = math.inf
    row[COL["S"]] = 1.0
    row[COL["O"]] = 1.0
    for name, value in values.items():
        if name not in COL:
            raise ValueError(f"unknown coefficient {name!r}; columns are {COLUMNS}")
        row[COL[name]] = value
    return row


def _rows(coef, index, index_stride, row_stride, batch):
    if index is not None:
        idx = index if index_stride else index.expand(batch)
        return coef[idx]
    if row_stride:
        return coef
    return coef.expand(batch, coef.shape[1])


def fused_step_reference(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, threshold):
    """Plain-PyTorch twin of the fused kernels (normalized signature, docs/ops.md)."""
    B = x.shape[0]
    T = compute_dtype(x.dtype)
    view = (B,) + (1,) * (x.ndim - 1)
    r = _rows(coef, index, index_stride, row_stride, B).to(T)
    col = lambda name: r[:, COL[name]].view(view)  # noqa: E731
    xf, mf = x.to(T), m.to(T)
    w = col("S") * (col("P") * xf + col("Q") * mf)
    if threshold is not None:
        s = threshold.to(T).view(view)
        w = torch.maximum(torch.minimum(w, s), -s) / s
    else:
        c = col("CLIP")
        w = torch.maximum(torch.minimum(w, c), -c)
    acc = col("A") * xf + col("D") * mf + col("B0") * w
    for k, h in enumerate(hist, start=1):
        acc = acc + col(f"B{k}") * h.to(T)
    if noise is not None:
        acc = acc + col("C") * noise.to(T)
    elif seed is not None:
        g = torch.arange(x.numel(), dtype=torch.int64, device=x.device)
        z = philox_normal_flat(g, seed, offset).to(T).view(x.shape)
        acc = acc + col("C") * z
    if w_out is not None:
        w_out.copy_(w)
    out.copy_(col("O") * acc)


def fused_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coef: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    w_out: torch.Tensor | None = None,
    hist=(),
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    threshold: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """One fused sampler update (see the module docstring for the formula).

    Args:
        x: current sample, shape ``(B, ...)``, float16/bfloat16/float32 (float64 on reference/cpu).
        model_output: the network output ``m``, same shape, dtype and device as ``x``.
        coef: coefficient row(s), columns ``pydiff.ops.COLUMNS``: ``(12,)`` for the whole batch,
            ``(B, 12)`` one row per sample, or a table ``(R, 12)`` indexed by ``index``.
        index: optional int64 device tensor (shape ``()``, ``(1,)`` or ``(B,)``) of table rows; lets a
            device-side step counter or timestep select the row without a host sync.
        out: where to write ``x'`` (may be ``x`` itself); a new tensor by default.
        w_out: optional output for the converted, clipped model output ``w`` (may be ``model_output``).
        hist: up to three tensors ``h1..h3`` (previous converted outputs of a multistep solver).
        noise: optional noise tensor ``z``; or ``seed`` (and ``offset``) to draw it in-kernel from Philox.
        threshold: optional per-sample dynamic-thresholding scale ``s`` (see ``dynamic_threshold``).
        backend: ``None`` (automatic), ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        ``out``.
    """
    check_data("x", x)
    m = check_like("model_output", model_output, x, "x")
    if out is not None:
        out = check_output("out", out, x, "x")
    x = x.contiguous()  # a no-op when out is x (out was checked contiguous)
    if w_out is not None:
        w_out = check_output("w_out", w_out, x, "x")
    if isinstance(hist, torch.Tensor):
        raise TypeError("hist must be a tuple or list of tensors, not a tensor")
    hist = tuple(hist)
    if len(hist) > 3:
        raise ValueError(f"hist holds at most 3 tensors, got {len(hist)}")
    hist = tuple(check_like(f"hist[{k}]", h, x, "x") for k, h in enumerate(hist))
    if noise is not None and seed is not None:
        raise ValueError("give either noise or seed, not both")
    if noise is not None:
        noise = check_like("noise", noise, x, "x")
    check_seed_offset(seed, offset)
    B = x.shape[0]
    coef, index, index_stride, row_stride = normalize_rows(coef, index, B, x, NCOEF)
    if threshold is not None:
        if not isinstance(threshold, torch.Tensor) or not threshold.is_floating_point():
            raise TypeError("threshold must be a floating tensor of shape (B,)")
        if threshold.device != x.device:
            raise ValueError(f"threshold is on {threshold.device} but x is on {x.device}")
        if threshold.numel() != B:
            raise ValueError(f"threshold must hold B={B} values, got shape {tuple(threshold.shape)}")
        threshold = threshold.reshape(B).to(compute_dtype(x.dtype)).contiguous()
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    impl = dispatch("fused_step", resolve_backend(backend, x))
    impl(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, threshold)
    return out
