"""Imagen dynamic-thresholding scale in Triton + torch selection (docs/ops.md, ``dynamic_threshold``).

Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding" (Imagen), arXiv:2205.11487, section 2.3. Per sample ``b``::

    x0  = S*(P*x + Q*m)                   (coefficient row selection as fused_step; x0 = x if m is None)
    q_b = quantile(|x0_b|, ratio)       linear interpolation: pos = ratio*(N-1), lo = floor(pos),
                                        hi = ceil(pos), q = v[lo] + (pos-lo)*(v[hi]-v[lo]),
                                        v = |x0_b| sorted ascending
    s_b = min(max(q_b, 1), max_val)     (torch.clamp(q, min=1, max=max_val))

returns ``s`` of shape ``(B,)`` float32; it feeds ``fused_step(threshold=s)``, which computes
``clamp(w, -s, s) / s``.

Strategy:

1. A Triton kernel (grid ``(cdiv(N, BLOCK), min(B, MAX_GRID_Y))``, sample loop beyond 65535 as in
   ``fused_step``) computes ``|S*(P*x + Q*m)|`` in float32 into a ``(B, N)`` float32 buffer, and per block
   a NaN flag (``(B, nblk)`` int32).
2. Selection with torch on the device: ``torch.kthvalue`` along dim 1 for ranks ``lo`` and ``hi``
   (one call when they coincide). ``pos``, ``lo``, ``hi`` depend only on ``ratio`` and ``N`` and are
   computed on the host in float64, so nothing is read back from the device: no ``.item()``, no
   synchronisation. kthvalue is a selection (O(N) per row on CPU, radix select on CUDA) rather than a
   full sort, and it is not subject to torch.quantile's 2^24-element input limit.
   Why not a Triton selection: a per-sample radix select in Triton is a multi-pass kernel of its own;
   the |x0| pass is the memory-bound part that fusion helps, the selection is left to torch's tuned
   kernel (a GPU-side select can come later).
3. NaN: torch.quantile returns NaN for a row holding a NaN; kthvalue's NaN ordering is not part of its
   documented contract, so a row whose NaN flag is set gets ``q = NaN`` explicitly (then ``s = NaN``,
   as torch.clamp propagates it).
4. ``q = v_lo + frac*(v_hi - v_lo)`` in float32 with ``frac = pos - lo`` (a float64 host value rounded
   to float32), then ``torch.clamp(q, min=1, max=max_val)``.

Block size: ``BLOCK_SIZE = 1024``, ``NUM_WARPS = 4`` -- a sensible default; GPU tuning comes later.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .fused_step import load_row
from ._common import check_dtype, check_f32, check_index

BLOCK_SIZE = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535
NCOEF = 12


@triton.jit
def _abs_x0_kernel(
    x_ptr, m_ptr, coef_ptr, index_ptr, a_ptr, nan_ptr, N, B, nblk,
    HAS_M: tl.constexpr, HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr, ROW_STRIDE: tl.constexpr,
    NCOEF: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    i = pid_n.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    for b_ in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.full([], 0, tl.int64) + b_  # int64 sample index (the loop variable is int32)
        g = b * N + i
        x = tl.load(x_ptr + g, mask=mask, other=0.0).to(tl.float32)
        if HAS_M:
            r = load_row(coef_ptr, index_ptr, b, HAS_INDEX, INDEX_STRIDE, ROW_STRIDE, NCOEF)
            m = tl.load(m_ptr + g, mask=mask, other=0.0).to(tl.float32)
            x0 = tl.load(r + 10) * (tl.load(r + 0) * x + tl.load(r + 1) * m)
        else:
            x0 = x
        a = tl.abs(x0)
        tl.store(a_ptr + g, a, mask=mask)
        isnan = (a != a) & mask
        tl.store(nan_ptr + b * nblk + pid_n, tl.max(isnan.to(tl.int32), axis=0))


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, ratio, max_val) -> torch.Tensor:
    """Normalized backend entry (docs/ops.md): per-sample thresholds ``s`` of shape ``(B,)`` float32."""
    check_dtype("x", x)
    B = x.shape[0]
    numel = x.numel()
    if B == 0:
        return torch.empty((0,), dtype=torch.float32, device=x.device)
    N = numel // B
    if N == 0:
        raise ValueError("dynamic_threshold: samples have no elements (the quantile is undefined)")
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"dynamic_threshold: ratio must be in [0, 1], got {ratio}")
    if m is not None and coef is None:
        raise ValueError("dynamic_threshold: coef is required with m")
    if m is not None:
        check_f32("coef", coef)
        check_index(index)
    block = BLOCK_SIZE
    nblk = triton.cdiv(N, block)
    absx0 = torch.empty((B, N), dtype=torch.float32, device=x.device)
    nan_flag = torch.empty((B, nblk), dtype=torch.int32, device=x.device)
    has_m = m is not None
    _abs_x0_kernel[(nblk, min(B, MAX_GRID_Y))](
        x, m if has_m else x, coef if has_m else x, index if (has_m and index is not None) else x,
        absx0, nan_flag, N, B, nblk,
        HAS_M=has_m, HAS_INDEX=has_m and index is not None,
        INDEX_STRIDE=int(index_stride), ROW_STRIDE=int(row_stride),
        NCOEF=NCOEF, BLOCK=block, num_warps=NUM_WARPS,
    )
    pos = ratio * (N - 1)
    lo = min(int(math.floor(pos)), N - 1)
    hi = min(int(math.ceil(pos)), N - 1)
    v_lo = torch.kthvalue(absx0, lo + 1, dim=1).values
    if hi == lo:
        q = v_lo
    else:
        v_hi = torch.kthvalue(absx0, hi + 1, dim=1).values
        q = v_lo + (pos - lo) * (v_hi - v_lo)
    q = torch.where(nan_flag.amax(dim=1) > 0, torch.full_like(q, math.nan), q)
    if max_val is None:
        return torch.clamp(q, min=1.0)
    return torch.clamp(q, min=1.0, max=float(max_val))
