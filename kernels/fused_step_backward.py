"""The backward of the fused sampler step in Triton (pydiff/ops/fused_step_backward.py has the derivation).

Per sample ``b`` with coefficient row ``r = coef[row(b)]`` and flat element ``g = b*N + i``::

    g_   = r.O*grad_out
    m_e  = m  or  r.M1*m + r.M2*m2,      w' = r.S*(r.P*x + r.Q*m_e)
    dw   = r.B0*g_ + grad_w                                         (grad_w optional)
    dw'  = dw/s or dw   where -bound <= w' <= bound, else 0         (bound = s with a threshold, else r.CLIP)
    e    = exp(r.VA + r.VB*v)  or 1
    dm_e = r.D*g_ + r.S*r.Q*dw',    dx = r.A*g_ + r.S*r.P*dw'
    dm   = dm_e  or  r.M1*dm_e,     dm2 = r.M2*dm_e + r.G*e*e*g_
    dz   = r.C*e*g_,                dv = r.VB*g_*(2*r.G*e*e*m2 + r.C*e*z)

Kernel design as ``fused_step.py``: 2-D grid ``(cdiv(N, BLOCK), min(B, MAX_GRID_Y))``, a program owns one block
of one sample and reads its row once (``_common.row_of``: out-of-range rows read as NaN, so the sample's
gradients are NaN); optional inputs and outputs are ``tl.constexpr`` flags (an absent one costs nothing);
int64 offsets; float32 arithmetic with the same order as the reference and the C++ header; every load before
any store. ``z`` only enters ``dv``, so the noise tensor is read, or the Philox normal regenerated (the
forward's key and counter words, ``philox.key_and_counter``), only when ``dv`` is written (``NEED_Z``, set by
the launcher).

Block size: ``BLOCK_SIZE = 1024``, ``NUM_WARPS = 4``, as the forward.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import (
    COL_A, COL_B0, COL_C, COL_CLIP, COL_D, COL_G, COL_M1, COL_M2, COL_O, COL_P, COL_Q, COL_S, COL_VA, COL_VB,
    coef_at, exp_f32, row_of,
)
from .philox import key_and_counter, philox_normal_words

BLOCK_SIZE = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y


@triton.jit
def _load(ptr, g, mask):
    return tl.load(ptr + g, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store(ptr, g, v, mask):
    tl.store(ptr + g, v.to(ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["R", "seed_lo", "seed_hi", "off_lo", "off_hi"])
def fused_step_backward_kernel(
    go_ptr, gw_ptr, x_ptr, m_ptr, m2_ptr, var_ptr, noise_ptr, coef_ptr, index_ptr, rng_ptr, thr_ptr,
    dx_ptr, dm_ptr, dm2_ptr, dnoise_ptr, dvar_ptr,
    N, B, R,
    seed_lo, seed_hi, off_lo, off_hi,
    HAS_INDEX: tl.constexpr, INDEX_STRIDE: tl.constexpr, ROW_STRIDE: tl.constexpr,
    HAS_GW: tl.constexpr, HAS_M2: tl.constexpr, HAS_VAR: tl.constexpr, HAS_NOISE: tl.constexpr,
    HAS_PHILOX: tl.constexpr, HAS_RNG: tl.constexpr, HAS_THRESHOLD: tl.constexpr,
    WRITE_DM2: tl.constexpr, WRITE_DNOISE: tl.constexpr, WRITE_DVAR: tl.constexpr, NEED_Z: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    if NEED_Z and HAS_PHILOX:
        k0, k1, o0, o1 = key_and_counter(seed_lo, seed_hi, off_lo, off_hi, rng_ptr, HAS_RNG)
    for b_ in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.full([], 0, tl.int64) + b_
        rp, ok = row_of(coef_ptr, index_ptr, b, R, HAS_INDEX, INDEX_STRIDE, ROW_STRIDE)
        g = b * N + i

        # ---- every load first (an output may be the storage of an input)
        go = _load(go_ptr, g, mask)
        x = _load(x_ptr, g, mask)
        m = _load(m_ptr, g, mask)
        if HAS_GW:
            gw = _load(gw_ptr, g, mask)
        if HAS_M2:
            m2 = _load(m2_ptr, g, mask)
        if HAS_VAR:
            v = _load(var_ptr, g, mask)
        if NEED_Z:
            if HAS_NOISE:
                z = _load(noise_ptr, g, mask)
            else:
                z = philox_normal_words(g, k0, k1, o0, o1)

        gg = coef_at(rp, ok, COL_O, HAS_INDEX) * go
        if HAS_M2:
            me = coef_at(rp, ok, COL_M1, HAS_INDEX) * m + coef_at(rp, ok, COL_M2, HAS_INDEX) * m2
        else:
            me = m
        cs = coef_at(rp, ok, COL_S, HAS_INDEX)
        cp = coef_at(rp, ok, COL_P, HAS_INDEX)
        cq = coef_at(rp, ok, COL_Q, HAS_INDEX)
        wp = cs * (cp * x + cq * me)
        dw = coef_at(rp, ok, COL_B0, HAS_INDEX) * gg
        if HAS_GW:
            dw = dw + gw
        if HAS_THRESHOLD:
            s = tl.load(thr_ptr + b)
            inside = (wp >= -s) & (wp <= s)  # False for NaN
            dw = tl.div_rn(dw, s)
        else:
            c = coef_at(rp, ok, COL_CLIP, HAS_INDEX)
            inside = (wp >= -c) & (wp <= c)
        dwp = tl.where(inside, dw, 0.0)
        dme = coef_at(rp, ok, COL_D, HAS_INDEX) * gg + cs * cq * dwp
        dx = coef_at(rp, ok, COL_A, HAS_INDEX) * gg + cs * cp * dwp
        cg = coef_at(rp, ok, COL_G, HAS_INDEX)
        cc = coef_at(rp, ok, COL_C, HAS_INDEX)
        if HAS_VAR:
            e = exp_f32(coef_at(rp, ok, COL_VA, HAS_INDEX) + coef_at(rp, ok, COL_VB, HAS_INDEX) * v)
            gee = cg * e * e
            ce = cc * e
        else:  # e = 1: the products by e are exact and left out
            gee = cg
            ce = cc

        # ---- stores last
        if HAS_M2:
            _store(dm_ptr, g, coef_at(rp, ok, COL_M1, HAS_INDEX) * dme, mask)
            if WRITE_DM2:
                _store(dm2_ptr, g, coef_at(rp, ok, COL_M2, HAS_INDEX) * dme + gee * gg, mask)
        else:
            _store(dm_ptr, g, dme, mask)
        _store(dx_ptr, g, dx, mask)
        if WRITE_DNOISE:
            _store(dnoise_ptr, g, ce * gg, mask)
        if WRITE_DVAR:
            term = tl.zeros_like(gg)
            if HAS_M2:
                term = 2.0 * cg * e * e * m2
            if NEED_Z:
                if HAS_M2:
                    term = term + ce * z
                else:
                    term = ce * z
            _store(dvar_ptr, g, coef_at(rp, ok, COL_VB, HAS_INDEX) * gg * term, mask)
