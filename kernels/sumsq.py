"""Per-sample sums of squares in Triton (docs/ops.md, ``sumsq``).

For a batch tensor ``a`` of shape ``(B, ...)`` with ``N`` elements per sample::

    out[0, b] = sum_i a[b, i]^2
    out[1, b] = sum_i y[b, i]^2        y = the tensor ``b``, or the Philox normals z (Salmon et al., SC'11)
                                       of (seed, offset) or of the device ``rng``, that fused_step would
                                       add with the same key and offset, regenerated instead of stored

The result is ``(S, B)`` float32, ``S`` = 1 or 2. These norms feed step-size rules such as the
Langevin corrector's ``eps = 2 (snr ||z|| / ||score||)^2`` (Song et al., arXiv:2011.13456) and
DPM-Solver's adaptive-step error norms (Lu et al., arXiv:2206.00927).

Strategy: **per-block partial sums, then a torch sum** (no atomics).
Grid ``(cdiv(N, BLOCK), min(B, MAX_GRID_Y))`` (samples beyond 65535 handled by a loop in the
program, as in ``fused_step``); each program squares and ``tl.sum``-reduces its block in float32
and writes one partial into a ``(S, B, nblk)`` float32 buffer; ``torch.sum(dim=-1)`` finishes.
Why: the result is deterministic (bitwise identical run to run -- float atomics are not, their
order varies), the buffer needs no zero-fill launch, every level of the reduction is a tree
(tl.sum within a block, torch's cascade sum across blocks), which keeps float32 rounding error low
for large ``N``, and the extra buffer is tiny (``4*S*B*N/BLOCK`` bytes, 1/256 of ``a`` in float32).
The Philox source costs no memory traffic: ``z`` is regenerated from ``g = b*N + i``.
The torch sum runs on the device stream: no host synchronisation.

Block size: ``BLOCK_SIZE = 1024``, ``NUM_WARPS = 4`` -- a sensible default; GPU tuning comes later.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .philox import key_and_counter, philox_normal_block

BLOCK_SIZE = 1024
NUM_WARPS = 4
MAX_GRID_Y = 65535


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def sumsq_kernel(
    a_ptr, b_ptr, rng_ptr, part_ptr, N, B, nblk, plane,
    seed_lo, seed_hi, off_lo, off_hi,
    HAS_B: tl.constexpr, HAS_PHILOX: tl.constexpr, HAS_RNG: tl.constexpr, BLOCK: tl.constexpr,
    PHILOX_TILE: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    i = pid_n.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    if HAS_PHILOX:
        k0, k1, o0, o1 = key_and_counter(seed_lo, seed_hi, off_lo, off_hi, rng_ptr, HAS_RNG)
    for s_ in range(tl.program_id(1), B, tl.num_programs(1)):
        s = tl.full([], 0, tl.int64) + s_  # int64 sample index (the loop variable is int32)
        g = s * N + i
        p = s * nblk + pid_n
        a = tl.load(a_ptr + g, mask=mask, other=0.0).to(tl.float32)
        tl.store(part_ptr + p, tl.sum(a * a, axis=0))
        if HAS_B:
            y = tl.load(b_ptr + g, mask=mask, other=0.0).to(tl.float32)
            tl.store(part_ptr + plane + p, tl.sum(y * y, axis=0))
        if HAS_PHILOX:
            zp = philox_normal_block(g, s * N + pid_n.to(tl.int64) * BLOCK, k0, k1, o0, o1, PHILOX_TILE, BLOCK)
            z = tl.where(mask, zp, 0.0)
            tl.store(part_ptr + plane + p, tl.sum(z * z, axis=0))
