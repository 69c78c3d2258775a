"""Imagen's dynamic-thresholding scale in Triton + torch selection (docs/ops.md, ``dynamic_threshold``).

Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with Deep Language
Understanding" (Imagen), arXiv:2205.11487, section 2.3. Per sample ``b``::

    x0  = S*(P*x + Q*m_e)              (row selection and m_e = M1*m + M2*m2 as fused_step; x0 = x if m is None)
    q_b = quantile(|x0_b|, ratio)      the rule of docs/ops.md: ranks lo, hi and weight wt come from the host
                                       (float64 ``pos = ratio*(N-1)``), v = |x0_b| sorted ascending,
                                       q = NaN if any x0_b is NaN; v[lo] if v[lo] == v[hi] (inf == inf);
                                       inf if v[hi] = inf; v[lo] + wt*(v[hi]-v[lo]) if wt < 0.5;
                                       else v[hi] - (v[hi]-v[lo])*(1-wt)
    s_b = min(max(q_b, 1), max_val)    (torch.clamp(q, min=1, max=max_val); NaN stays NaN)

``s`` of shape ``(B,)`` float32 feeds ``fused_step(threshold=s)``, which computes ``clamp(w, -s, s) / s``.

Strategy (three launches, no host synchronisation):

1. ``abs_x0_kernel`` (grid ``(cdiv(N, BLOCK), min(B, MAX_GRID_Y))``, sample loop beyond 65535 as in
   ``fused_step``) writes ``|x0|`` in float32 into a ``(B, N)`` buffer, and per block a NaN flag
   (``(B, nblk)`` int32).
2. Selection with ``torch.kthvalue`` along dim 1 for ranks ``lo`` and ``hi`` (one call when they
   coincide): a selection (radix select on CUDA), not a full sort, and not subject to torch.quantile's
   2^24-element limit. Why not a Triton selection: a per-sample radix select is a multi-pass kernel of
   its own; the |x0| pass is the memory-bound part that fusion helps.
3. ``finish_kernel`` reduces the NaN flags (kthvalue's NaN ordering is not part of its documented
   contract, so a flagged row gets ``q = NaN`` explicitly), interpolates and clamps, one program per
   ``BLOCK_B`` samples -- instead of five elementwise torch launches.

Block size: ``BLOCK_SIZE = 1024``, ``NUM_WARPS = 4`` -- a sensible default; GPU tuning comes later.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import COL_M1, COL_M2, COL_P, COL_Q, COL_S, coef_at, row_of

BLOCK_SIZE = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535
BLOCK_B = 64     # samples per program of finish_kernel
BLOCK_FLAGS = 32  # NaN flags per sample read per loop trip of finish_kernel


@triton.jit(do_not_specialize=["R"])  # as fused_step_kernel: one compiled kernel for every table length
def abs_x0_kernel(
    x_ptr, m_ptr, m2_ptr, coef_ptr, index_ptr, a_ptr, nan_ptr, N, B, R, nblk,
    HAS_M: tl.constexpr, HAS_M2: tl.constexpr, HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr,
    ROW_STRIDE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    i = pid_n.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    for b_ in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.full([], 0, tl.int64) + b_  # int64 sample index (the loop variable is int32)
        g = b * N + i
        x = tl.load(x_ptr + g, mask=mask, other=0.0).to(tl.float32)
        if HAS_M:
            rp, ok = row_of(coef_ptr, index_ptr, b, R, HAS_INDEX, INDEX_STRIDE, ROW_STRIDE)
            m = tl.load(m_ptr + g, mask=mask, other=0.0).to(tl.float32)
            if HAS_M2:
                m2 = tl.load(m2_ptr + g, mask=mask, other=0.0).to(tl.float32)
                m = coef_at(rp, ok, COL_M1, HAS_INDEX) * m + coef_at(rp, ok, COL_M2, HAS_INDEX) * m2
            x0 = coef_at(rp, ok, COL_S, HAS_INDEX) * (coef_at(rp, ok, COL_P, HAS_INDEX) * x
                                                      + coef_at(rp, ok, COL_Q, HAS_INDEX) * m)
        else:
            x0 = x
        a = tl.abs(x0)
        tl.store(a_ptr + g, a, mask=mask)
        isnan = (a != a) & mask
        tl.store(nan_ptr + b * nblk + pid_n, tl.max(isnan.to(tl.int32), axis=0))


@triton.jit
def finish_kernel(v_lo_ptr, v_hi_ptr, nan_ptr, s_ptr, B, nblk, wt, one_minus_wt, max_val,
                  BLOCK_B: tl.constexpr, BLOCK_FLAGS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    bm = b < B
    flag = tl.zeros([BLOCK_B], dtype=tl.int32)
    for j0 in range(0, nblk, BLOCK_FLAGS):
        j = j0 + tl.arange(0, BLOCK_FLAGS)
        f = tl.load(nan_ptr + b[:, None] * nblk + j[None, :], mask=bm[:, None] & (j < nblk)[None, :], other=0)
        flag = tl.maximum(flag, tl.max(f, axis=1))
    lo = tl.load(v_lo_ptr + b, mask=bm, other=0.0)
    hi = tl.load(v_hi_ptr + b, mask=bm, other=0.0)
    d = hi - lo
    q = tl.where(wt < 0.5, lo + wt * d, hi - d * one_minus_wt)
    q = tl.where(hi == float("inf"), hi, q)  # a finite v[lo] below v[hi] = inf: inf, not inf - inf = NaN
    q = tl.where(lo == hi, lo, q)
    q = tl.where(flag > 0, float("nan"), q)
    s = tl.maximum(q, 1.0, propagate_nan=tl.PropagateNan.ALL)
    s = tl.minimum(s, max_val, propagate_nan=tl.PropagateNan.ALL)
    tl.store(s_ptr + b, s, mask=bm)
