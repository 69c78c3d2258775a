"""The fused sampler step in Triton: one pass over the sample and the model output(s) (docs/ops.md, v2).

Per sample ``b`` with coefficient row ``r = coef[row(b)]`` and flat element ``g = b*N + i``::

    m_e = m                    (no m2)       |   r.M1*m + r.M2*m2              (given m2)
    w   = r.S*(r.P*x + r.Q*m_e)
    w   = clamp(w, -s_b, s_b) / s_b          given a per-sample threshold s (Imagen, arXiv:2205.11487)
        = clamp(w, -r.CLIP, r.CLIP)          otherwise (static clipping; CLIP = +inf: none)
    w_out[g] = w                             (optional)
    e   = exp(r.VA + r.VB*v[g])              given the variance input v, else 1
    acc = r.A*x + r.D*m_e + r.B0*w + r.B1*h1 + ... + r.BK*hK          (K = 0..6 history tensors)
    acc += r.G*(e*e)*m2                      given m2
    acc += r.C*e*z                           z = noise[g], or Philox (see philox.py), or no term
    out[g] = r.O*acc

DDIM (Song et al., arXiv:2010.02502, eq. 12), DDPM's posterior mean and ancestral step (Ho et al.,
arXiv:2006.11239), DPM-Solver(++) (Lu et al., arXiv:2206.00927, arXiv:2211.01095), classifier-free guidance
(Ho & Salimans 2022: M1 = 1 - s, M2 = s), classifier guidance (Dhariwal & Nichol 2021: m2 = the gradient,
G = the variance) and learned variances (Nichol & Dhariwal 2021: VA, VB) are this formula with different
rows. ``row(b) = index[b*index_stride]`` given ``index`` (the index rule of ``_common.row_of``: negative
rows wrap, out-of-range rows read as NaN), else ``b*row_stride``.

Kernel design:

* 2-D grid ``(cdiv(N, BLOCK), min(B, MAX_GRID_Y))``: a program owns one block of one sample, so it
  reads its coefficients (scalar loads) once and broadcasts them. CUDA limits grid dims 1/2 to
  65535, so each program loops ``for b in range(pid_1, B, num_programs(1))`` -- one trip when
  ``B <= 65535``.
* Optional inputs (index, w_out, h1..h6, noise, seed/rng, threshold, m2, var) are ``tl.constexpr``
  flags or counts; an absent one generates no load, no store and no arithmetic (its pointer argument is a
  dummy). ``index_stride``/``row_stride`` (each 0 or 1) are constexpr too, and so is whether the row can
  be out of range (only with ``index``: the coefficient loads are masked then, plain loads otherwise).
* Offsets are int64 (``b*N`` may exceed 2^31). Everything is computed in float32 (the launcher refuses
  float64 data); only the stores round to the data dtype. ``w`` in the update is the unrounded float32
  value. The division by ``s`` is ``tl.div_rn`` (IEEE, as the reference's ``/``).
* Aliasing (``out is x``; ``w_out is m``, ``m2`` or a history tensor): every load of a program comes
  before its stores, and an element is only touched by the program that owns it.
* Host ``seed``/``offset`` are passed as four int32 bit patterns in ``do_not_specialize`` parameters, so a
  new offset every step reuses the compiled kernel; ``rng`` is read from device memory. The table's row
  count ``R`` is not specialised either.

Block size: ``BLOCK_SIZE = 1024``, ``NUM_WARPS = 4`` -- a sensible default; GPU tuning comes later.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import (
    COL_A, COL_B0, COL_B1, COL_B2, COL_B3, COL_B4, COL_B5, COL_B6, COL_C, COL_CLIP, COL_D, COL_G, COL_M1,
    COL_M2, COL_O, COL_P, COL_Q, COL_S, COL_VA, COL_VB, clamp_nan, coef_at, exp_f32, row_of,
)
from .philox import key_and_counter, philox_normal_block

BLOCK_SIZE = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y; tests lower it to exercise the sample loop


@triton.jit
def _load(ptr, g, mask):
    return tl.load(ptr + g, mask=mask, other=0.0).to(tl.float32)


# R (the table's row count) only bounds the index check: not specialising it keeps plans of different lengths
# (a 25- and a 50-step table) on one compiled kernel.
@triton.jit(do_not_specialize=["R", "seed_lo", "seed_hi", "off_lo", "off_hi"])
def fused_step_kernel(
    x_ptr, m_ptr, m2_ptr, var_ptr, coef_ptr, index_ptr, out_ptr, w_out_ptr,
    h1_ptr, h2_ptr, h3_ptr, h4_ptr, h5_ptr, h6_ptr, noise_ptr, rng_ptr, thr_ptr,
    N, B, R,
    seed_lo, seed_hi, off_lo, off_hi,
    HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr, ROW_STRIDE: tl.constexpr,
    HAS_W_OUT: tl.constexpr, NHIST: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_PHILOX: tl.constexpr,
    HAS_RNG: tl.constexpr, HAS_THRESHOLD: tl.constexpr, HAS_M2: tl.constexpr, HAS_VAR: tl.constexpr,
    BLOCK: tl.constexpr, PHILOX_TILE: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    i = pid_n.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    if HAS_PHILOX:  # the same key and counter words for every sample: read rng once per program
        k0, k1, o0, o1 = key_and_counter(seed_lo, seed_hi, off_lo, off_hi, rng_ptr, HAS_RNG)
    for b_ in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.full([], 0, tl.int64) + b_  # int64 sample index (the loop variable is int32)
        rp, ok = row_of(coef_ptr, index_ptr, b, R, HAS_INDEX, INDEX_STRIDE, ROW_STRIDE)
        g = b * N + i

        # ---- every load first (aliasing: out may be x, w_out may be m, m2 or a history tensor)
        x = _load(x_ptr, g, mask)
        m = _load(m_ptr, g, mask)
        if HAS_M2:
            m2 = _load(m2_ptr, g, mask)
        if HAS_VAR:
            v = _load(var_ptr, g, mask)
        if NHIST >= 1:
            h1 = _load(h1_ptr, g, mask)
        if NHIST >= 2:
            h2 = _load(h2_ptr, g, mask)
        if NHIST >= 3:
            h3 = _load(h3_ptr, g, mask)
        if NHIST >= 4:
            h4 = _load(h4_ptr, g, mask)
        if NHIST >= 5:
            h5 = _load(h5_ptr, g, mask)
        if NHIST >= 6:
            h6 = _load(h6_ptr, g, mask)
        if HAS_NOISE:
            z = _load(noise_ptr, g, mask)

        # ---- effective model output and converted output w
        if HAS_M2:
            m = coef_at(rp, ok, COL_M1, HAS_INDEX) * m + coef_at(rp, ok, COL_M2, HAS_INDEX) * m2
        w = coef_at(rp, ok, COL_S, HAS_INDEX) * (coef_at(rp, ok, COL_P, HAS_INDEX) * x
                                                 + coef_at(rp, ok, COL_Q, HAS_INDEX) * m)
        if HAS_THRESHOLD:
            s = tl.load(thr_ptr + b)
            w = tl.div_rn(clamp_nan(w, -s, s), s)
        else:
            c = coef_at(rp, ok, COL_CLIP, HAS_INDEX)
            w = clamp_nan(w, -c, c)

        # ---- update, in the order of docs/ops.md
        acc = coef_at(rp, ok, COL_A, HAS_INDEX) * x + coef_at(rp, ok, COL_D, HAS_INDEX) * m
        acc = acc + coef_at(rp, ok, COL_B0, HAS_INDEX) * w
        if NHIST >= 1:
            acc = acc + coef_at(rp, ok, COL_B1, HAS_INDEX) * h1
        if NHIST >= 2:
            acc = acc + coef_at(rp, ok, COL_B2, HAS_INDEX) * h2
        if NHIST >= 3:
            acc = acc + coef_at(rp, ok, COL_B3, HAS_INDEX) * h3
        if NHIST >= 4:
            acc = acc + coef_at(rp, ok, COL_B4, HAS_INDEX) * h4
        if NHIST >= 5:
            acc = acc + coef_at(rp, ok, COL_B5, HAS_INDEX) * h5
        if NHIST >= 6:
            acc = acc + coef_at(rp, ok, COL_B6, HAS_INDEX) * h6
        if HAS_VAR:
            e = exp_f32(coef_at(rp, ok, COL_VA, HAS_INDEX) + coef_at(rp, ok, COL_VB, HAS_INDEX) * v)
            if HAS_M2:
                acc = acc + coef_at(rp, ok, COL_G, HAS_INDEX) * (e * e) * m2
            if HAS_NOISE:
                acc = acc + coef_at(rp, ok, COL_C, HAS_INDEX) * e * z
            if HAS_PHILOX:
                zp = philox_normal_block(g, b * N + pid_n.to(tl.int64) * BLOCK, k0, k1, o0, o1, PHILOX_TILE, BLOCK)
                acc = acc + coef_at(rp, ok, COL_C, HAS_INDEX) * e * zp
        else:  # e = 1: G*(1*1)*m2 and C*1*z are exactly G*m2 and C*z
            if HAS_M2:
                acc = acc + coef_at(rp, ok, COL_G, HAS_INDEX) * m2
            if HAS_NOISE:
                acc = acc + coef_at(rp, ok, COL_C, HAS_INDEX) * z
            if HAS_PHILOX:
                zp = philox_normal_block(g, b * N + pid_n.to(tl.int64) * BLOCK, k0, k1, o0, o1, PHILOX_TILE, BLOCK)
                acc = acc + coef_at(rp, ok, COL_C, HAS_INDEX) * zp

        # ---- stores last
        if HAS_W_OUT:
            tl.store(w_out_ptr + g, w.to(w_out_ptr.dtype.element_ty), mask=mask)
        acc = coef_at(rp, ok, COL_O, HAS_INDEX) * acc
        tl.store(out_ptr + g, acc.to(out_ptr.dtype.element_ty), mask=mask)
