"""Pieces shared by the Triton kernels: the column layout as constants, the row loader of the index rule,
NaN-propagating clamp, the float32 transcendentals, and the host-side packing of 64-bit seeds and offsets.

Columns come from ``pydiff.ops.columns`` (the single source of the layout, docs/ops.md); a kernel reads
``coef[row, COL_P]``, never a literal offset, so a layout change cannot leave a kernel reading a stale column.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from pydiff.ops.columns import COL, K_MAX, NCOEF

_MASK32 = 0xFFFFFFFF

# A @triton.jit function may only read globals that are tl.constexpr.
NCOEF_C = tl.constexpr(NCOEF)
COL_M1 = tl.constexpr(COL["M1"])
COL_M2 = tl.constexpr(COL["M2"])
COL_P = tl.constexpr(COL["P"])
COL_Q = tl.constexpr(COL["Q"])
COL_S = tl.constexpr(COL["S"])
COL_CLIP = tl.constexpr(COL["CLIP"])
COL_A = tl.constexpr(COL["A"])
COL_D = tl.constexpr(COL["D"])
COL_B0 = tl.constexpr(COL["B0"])
COL_B1 = tl.constexpr(COL["B1"])
COL_B2 = tl.constexpr(COL["B2"])
COL_B3 = tl.constexpr(COL["B3"])
COL_B4 = tl.constexpr(COL["B4"])
COL_B5 = tl.constexpr(COL["B5"])
COL_B6 = tl.constexpr(COL["B6"])
COL_G = tl.constexpr(COL["G"])
COL_C = tl.constexpr(COL["C"])
COL_VA = tl.constexpr(COL["VA"])
COL_VB = tl.constexpr(COL["VB"])
COL_O = tl.constexpr(COL["O"])
# The fused_step kernel spells out h1..h6 (one pointer argument each); a longer history in the layout needs
# a kernel change, so fail at import rather than silently ignore columns.
if K_MAX != 6:
    raise ImportError(f"kernels/fused_step.py handles 6 history tensors, the column layout has K_MAX = {K_MAX}")


@triton.jit
def row_of(coef_ptr, index_ptr, b, R, HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr,
           ROW_STRIDE: tl.constexpr):
    """``(pointer to the row of sample b, in-range flag)`` under the index rule of docs/ops.md.

    With ``index``: ``r = index[b*INDEX_STRIDE]``; ``r`` in ``[-R, 0)`` means ``r + R``; outside ``[-R, R)``
    the flag is False and the pointer is row 0 (never outside ``coef``; the caller's loads are masked and
    read NaN). Without ``index`` the row is ``b*ROW_STRIDE``, in range by construction (the flag is unused).
    """
    if HAS_INDEX:
        r = tl.load(index_ptr + b * INDEX_STRIDE).to(tl.int64)
        R64 = tl.full([], 0, tl.int64) + R
        r = tl.where(r < 0, r + R64, r)
        ok = (r >= 0) & (r < R64)
        r = tl.where(ok, r, 0)
    else:
        r = b * ROW_STRIDE
        ok = r == r
    return coef_ptr + r * NCOEF_C, ok


@triton.jit
def coef_at(rp, ok, COLUMN: tl.constexpr, CHECKED: tl.constexpr):
    """Coefficient ``COLUMN`` of the row at ``rp``; NaN when ``CHECKED`` and the row is out of range."""
    if CHECKED:
        v = tl.load(rp + COLUMN, mask=ok, other=float("nan"))
    else:
        v = tl.load(rp + COLUMN)
    return v


@triton.jit
def clamp_nan(w, lo, hi):
    """``maximum(minimum(w, hi), lo)`` propagating NaN from every operand (torch.clamp with tensor bounds)."""
    w = tl.minimum(w, hi, propagate_nan=tl.PropagateNan.ALL)
    return tl.maximum(w, lo, propagate_nan=tl.PropagateNan.ALL)


# Transcendentals. On GPUs tl.exp/tl.log/tl.cos lower to the approximate PTX instructions (ex2/lg2/cos.approx:
# cos.approx has an absolute error up to 2^-20.5, hundreds of ulp where cos is near 0), so the kernels call
# libdevice's correctly-rounded-to-1-2-ulp expf/logf/cosf/sinf instead, which docs/ops.md's "a few ulp" assumes.
# The interpreter does not implement libdevice; there tl.* is numpy's float32 libm.
INTERPRETED = bool(triton.knobs.runtime.interpret)

if INTERPRETED:
    @triton.jit
    def exp_f32(x):
        return tl.exp(x)

    @triton.jit
    def log_f32(x):
        return tl.log(x)

    @triton.jit
    def cos_f32(x):
        return tl.cos(x)

    @triton.jit
    def sin_f32(x):
        return tl.sin(x)
else:
    @triton.jit
    def exp_f32(x):
        return libdevice.exp(x)

    @triton.jit
    def log_f32(x):
        return libdevice.log(x)

    @triton.jit
    def cos_f32(x):
        return libdevice.cos(x)

    @triton.jit
    def sin_f32(x):
        return libdevice.sin(x)


def split_u64(v: int) -> tuple[int, int]:
    """``v`` in [0, 2^64) -> (low word, high word), each as a signed int32 bit pattern.

    Passed to ``do_not_specialize`` kernel parameters, every such value has Triton type ``i32``
    whatever its magnitude, so a new seed/offset never selects another compiled kernel; the kernel
    bit-casts the words back to uint32.
    """
    v = int(v)
    if not 0 <= v < 1 << 64:
        raise ValueError(f"expected an int in [0, 2**64), got {v}")
    lo, hi = v & _MASK32, v >> 32

    def s32(w):
        return w - (1 << 32) if w >= 1 << 31 else w

    return s32(lo), s32(hi)
