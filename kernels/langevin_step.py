"""The rows of a Langevin corrector step in Triton (docs/ops.md, ``langevin_step``).

``langevin_step`` is three launches on this backend: ``sumsq`` of the score and the noise, this kernel, and
``fused_step`` with one row per sample. From the sums ``(2, B)`` (``S_m``, ``S_z``) and the parameters
``(R, 2)`` = ``(c, kappa)`` it writes, per sample (Song et al., arXiv:2011.13456, Algorithms 4/5)::

    batch    eps_b = c_b (mean_b sqrt(S_z) / mean_b sqrt(S_m))^2
    sample   eps_b = c_b S_z[b] / S_m[b]
    row_b    P = 1, Q = eps_b kappa_b, B0 = 1, C = sqrt(2 eps_b)   (defaults elsewhere: M1 = S = O = 1, CLIP = inf)

One program: the batch means add the samples in order (a scalar loop, as csrc/include/pydiff_math.h does), so
the step sizes round as on the cpu and cuda backends; square roots and divisions are the correctly rounded
``sqrt_rn`` / ``div_rn``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import COL_B0, COL_C, COL_CLIP, COL_M1, COL_O, COL_P, COL_Q, COL_S, NCOEF_C


@triton.jit
def langevin_rows_kernel(sums_ptr, coef_ptr, rows_ptr, B, COEF_STRIDE: tl.constexpr, SAMPLE: tl.constexpr,
                         NC_BLOCK: tl.constexpr):
    ratio2 = tl.full([], 0.0, tl.float32)
    if not SAMPLE:
        nm = tl.full([], 0.0, tl.float32)
        nz = tl.full([], 0.0, tl.float32)
        for b in range(0, B):
            nm += tl.sqrt_rn(tl.load(sums_ptr + b))
            nz += tl.sqrt_rn(tl.load(sums_ptr + B + b))
        Bf = tl.full([], 0.0, tl.float32) + B
        r = tl.div_rn(tl.div_rn(nz, Bf), tl.div_rn(nm, Bf))
        ratio2 = r * r
    cols = tl.arange(0, NC_BLOCK)
    one = tl.full([NC_BLOCK], 1.0, tl.float32)
    zero = tl.zeros([NC_BLOCK], tl.float32)
    base = tl.where((cols == COL_M1) | (cols == COL_S) | (cols == COL_O) | (cols == COL_P) | (cols == COL_B0),
                    one, zero)
    base = tl.where(cols == COL_CLIP, float("inf"), base)
    for b in range(0, B):
        b64 = tl.full([], 0, tl.int64) + b
        c = tl.load(coef_ptr + 2 * b64 * COEF_STRIDE)
        kappa = tl.load(coef_ptr + 2 * b64 * COEF_STRIDE + 1)
        if SAMPLE:
            eps = c * tl.div_rn(tl.load(sums_ptr + B + b64), tl.load(sums_ptr + b64))
        else:
            eps = c * ratio2
        row = tl.where(cols == COL_Q, eps * kappa, base)
        row = tl.where(cols == COL_C, tl.sqrt_rn(2.0 * eps), row)
        tl.store(rows_ptr + b64 * NCOEF_C + cols, row, mask=cols < NCOEF_C)
