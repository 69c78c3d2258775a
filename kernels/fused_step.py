"""The fused sampler step in Triton: one pass over ``x`` and ``m`` (docs/ops.md, ``fused_step``).

Per sample ``b`` with coefficient row ``r = coef[row(b)]`` and flat element ``g = b*N + i``::

    w   = r.S*(r.P*x + r.Q*m)
    w   = clamp(w, -s_b, s_b) / s_b        given a per-sample threshold s (Imagen, arXiv:2205.11487)
        = clamp(w, -r.CLIP, r.CLIP)        otherwise (static clipping; CLIP = +inf: none)
    w_out[g] = w                           (optional)
    out[g]   = r.O*(r.A*x + r.D*m + r.B0*w + r.B1*h1 + r.B2*h2 + r.B3*h3 + r.C*z)

with ``z`` = ``noise[g]``, or the Philox normal of ``(seed, offset, g)`` (Salmon et al., SC'11; see
``philox.py``), or absent. DDIM (Song et al., arXiv:2010.02502, eq. 12), DDPM's posterior mean and
DPM-Solver(++) multistep updates (Lu et al., arXiv:2206.00927, arXiv:2211.01095) are this formula
with different coefficient rows. ``row(b) = index[b*index_stride]`` given ``index``, else
``b*row_stride``.

Kernel design:

* 2-D grid ``(cdiv(N, BLOCK), min(B, MAX_GRID_Y))``: a program owns one block of one sample, so it
  reads its coefficient row (scalar loads) once and broadcasts it. CUDA limits grid dims 1/2 to
  65535, so each program loops ``for b in range(pid_1, B, num_programs(1))`` -- one trip when
  ``B <= 65535``.
* Optional inputs (index, w_out, 0-3 history tensors, noise, seed, threshold) are ``tl.constexpr``
  flags; an absent one generates no load, no store and no arithmetic (its pointer argument is a
  dummy). ``index_stride``/``row_stride`` (each 0 or 1) are constexpr too.
* Offsets are int64 (``b*N`` may exceed 2^31). Everything is computed in float32 (float64 data is
  refused with TypeError); only the stores round to the data dtype. ``w`` in the update is the
  unrounded float32 value. clamp is ``maximum(minimum(w, hi), lo)`` with NaN propagation (torch
  semantics); the division by ``s`` is ``tl.div_rn`` (IEEE).
* Aliasing (``out is x``, ``w_out is m`` or a history tensor): every load of a program comes before
  its stores, and an element is only touched by the program that owns it.
* ``seed``/``offset`` are passed as four int32 bit patterns in ``do_not_specialize`` parameters, so a
  new offset every step reuses the compiled kernel.

Block size: ``BLOCK_SIZE = 1024``, ``NUM_WARPS = 4`` -- a sensible default; GPU tuning comes later.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import check_dtype, check_f32, check_index, split_u64
from .philox import philox_normal_at

BLOCK_SIZE = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y; tests lower it to exercise the sample loop
NCOEF = 12


@triton.jit
def load_row(coef_ptr, index_ptr, b, HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr,
             ROW_STRIDE: tl.constexpr, NCOEF: tl.constexpr):
    """Pointer to the coefficient row of sample ``b`` (docs/ops.md row selection)."""
    if HAS_INDEX:
        row = tl.load(index_ptr + b * INDEX_STRIDE).to(tl.int64)
    else:
        row = b * ROW_STRIDE
    return coef_ptr + row * NCOEF


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def _fused_step_kernel(
    x_ptr, m_ptr, coef_ptr, index_ptr, out_ptr, w_out_ptr,
    h1_ptr, h2_ptr, h3_ptr, noise_ptr, thr_ptr,
    N, B,
    seed_lo, seed_hi, off_lo, off_hi,
    HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr, ROW_STRIDE: tl.constexpr,
    HAS_W_OUT: tl.constexpr, NHIST: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_SEED: tl.constexpr,
    HAS_THRESHOLD: tl.constexpr, NCOEF: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_n = tl.program_id(0)
    i = pid_n.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    for b_ in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.full([], 0, tl.int64) + b_  # int64 sample index (the loop variable is int32)
        r = load_row(coef_ptr, index_ptr, b, HAS_INDEX, INDEX_STRIDE, ROW_STRIDE, NCOEF)
        g = b * N + i

        # ---- every load first (aliasing: out may be x, w_out may be m or a history tensor)
        x = tl.load(x_ptr + g, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + g, mask=mask, other=0.0).to(tl.float32)
        if NHIST >= 1:
            h1 = tl.load(h1_ptr + g, mask=mask, other=0.0).to(tl.float32)
        if NHIST >= 2:
            h2 = tl.load(h2_ptr + g, mask=mask, other=0.0).to(tl.float32)
        if NHIST >= 3:
            h3 = tl.load(h3_ptr + g, mask=mask, other=0.0).to(tl.float32)
        if HAS_NOISE:
            z = tl.load(noise_ptr + g, mask=mask, other=0.0).to(tl.float32)

        # ---- converted output w
        w = tl.load(r + 10) * (tl.load(r + 0) * x + tl.load(r + 1) * m)
        if HAS_THRESHOLD:
            s = tl.load(thr_ptr + b)
            w = tl.maximum(tl.minimum(w, s, propagate_nan=tl.PropagateNan.ALL), -s,
                           propagate_nan=tl.PropagateNan.ALL)
            w = tl.div_rn(w, s)
        else:
            c = tl.load(r + 9)
            w = tl.maximum(tl.minimum(w, c, propagate_nan=tl.PropagateNan.ALL), -c,
                           propagate_nan=tl.PropagateNan.ALL)

        # ---- update, in the order of docs/ops.md
        acc = tl.load(r + 2) * x + tl.load(r + 3) * m + tl.load(r + 4) * w
        if NHIST >= 1:
            acc = acc + tl.load(r + 5) * h1
        if NHIST >= 2:
            acc = acc + tl.load(r + 6) * h2
        if NHIST >= 3:
            acc = acc + tl.load(r + 7) * h3
        if HAS_NOISE:
            acc = acc + tl.load(r + 8) * z
        if HAS_SEED:
            acc = acc + tl.load(r + 8) * philox_normal_at(g, seed_lo, seed_hi, off_lo, off_hi)

        # ---- stores last
        if HAS_W_OUT:
            tl.store(w_out_ptr + g, w.to(w_out_ptr.dtype.element_ty), mask=mask)
        acc = tl.load(r + 11) * acc
        tl.store(out_ptr + g, acc.to(out_ptr.dtype.element_ty), mask=mask)


def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset,
               threshold) -> None:
    """Normalized backend entry (docs/ops.md): writes ``out`` (and ``w_out``) in place."""
    check_dtype("x", x)
    check_f32("coef", coef)
    check_f32("threshold", threshold)
    check_index(index)
    hist = tuple(hist)
    if len(hist) > 3:
        raise ValueError(f"hist holds at most 3 tensors, got {len(hist)}")
    if noise is not None and seed is not None:
        raise ValueError("give either noise or seed, not both")
    B = x.shape[0]
    numel = x.numel()
    if numel == 0:
        return
    N = numel // B
    seed_lo = seed_hi = 0
    if seed is not None:
        seed_lo, seed_hi = split_u64(seed)
    off_lo, off_hi = split_u64(offset)
    h = hist + (x,) * (3 - len(hist))  # dummies for absent history
    block = BLOCK_SIZE
    grid = (triton.cdiv(N, block), min(B, MAX_GRID_Y))
    _fused_step_kernel[grid](
        x, m, coef,
        index if index is not None else coef,
        out,
        w_out if w_out is not None else out,
        h[0], h[1], h[2],
        noise if noise is not None else x,
        threshold if threshold is not None else coef,
        N, B,
        seed_lo, seed_hi, off_lo, off_hi,
        HAS_INDEX=index is not None, INDEX_STRIDE=int(index_stride), ROW_STRIDE=int(row_stride),
        HAS_W_OUT=w_out is not None, NHIST=len(hist), HAS_NOISE=noise is not None,
        HAS_SEED=seed is not None, HAS_THRESHOLD=threshold is not None,
        NCOEF=NCOEF, BLOCK=block, num_warps=NUM_WARPS,
    )
