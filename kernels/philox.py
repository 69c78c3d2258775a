"""Philox4x32-10 counter-based normals in Triton (shared by fused_step and sumsq).

Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.
Layout and transform are the ones of docs/ops.md, so every backend draws the same ``z``::

    key = (k mod 2^32, k >> 32)                    k = seed, or uint64(rng[0])
    ctr = (c mod 2^32, c >> 32, o mod 2^32, o >> 32)
          c = g >> 2, g = flat element index (int64), o = offset, or (uint64(rng[1]) + offset) mod 2^64
    10 rounds:  hi0:lo0 = 0xD2511F53*ctr0,  hi1:lo1 = 0xCD9E8D57*ctr2   (hi via tl.umulhi)
                ctr = (hi1 ^ ctr1 ^ key0, lo1, hi0 ^ ctr3 ^ key1, lo0)
                key = (key0 + 0x9E3779B9, key1 + 0xBB67AE85)             (uint32, wrapping)
    (a, b) = (r0, r1) for g mod 4 in {0, 1}, (r2, r3) for {2, 3}
    u1 = ((a >> 8) + 0.5) * 2^-24,  u2 = ((b >> 8) + 0.5) * 2^-24      (float32 ops, in this order)
    z  = sqrt(-2 ln u1) * (cos if g even else sin)(6.2831855 * u2)       (Box-Muller, float32)

Implementation notes:

* All Philox arithmetic is uint32 (``tl.umulhi`` for the high words, wrapping ``*``/``+``), so the integers
  are those of every other backend.
* Host ``seed`` and ``offset`` (ints in [0, 2^64)) are split on the host into four 32-bit words and
  passed as *signed int32 bit patterns* (``_common.split_u64``), bit-cast back to uint32 in the kernel.
  Every such value has Triton type ``i32`` whatever its magnitude, and the parameters are listed in
  ``do_not_specialize``, so neither the "== 1" nor the "divisible by 16" specialization nor a type
  change (i32/i64/u64 by magnitude) can trigger a recompile when a sampler bumps ``offset`` every step.
* The device ``rng`` tensor is loaded by the kernel (``key_and_counter``): its values are data, not
  kernel arguments, so changing them never recompiles and a captured graph sees the new values.
* A tile whose first element is a multiple of 4 (``philox_normal``; ``fused_step`` and ``sumsq`` when the
  sample size N is) draws whole blocks and interleaves each block's four normals into element order with
  ``tl.join`` (:func:`philox_normal_tile`); other tiles draw one block per element and take their element's
  word pair and cos or sin (:func:`philox_normal_words`). The same operations on the same words: the same bits.
* ``sqrt`` is ``tl.sqrt_rn`` (IEEE); ``ln``/``cos``/``sin`` are libdevice's ``logf``/``cosf``/``sinf`` on GPUs (not the
  approximate ``tl.log``/``tl.cos``, see ``_common``) and numpy's under the interpreter, which may differ from
  the other backends' polynomials by a few float32 ulp, as docs/ops.md allows.

Block size: ``BLOCK_SIZE = 1024`` elements per program with ``NUM_WARPS = 4``; a sensible default,
GPU tuning comes later.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import cos_f32, log_f32, sin_f32, split_u64  # noqa: F401  (split_u64 re-exported for the launchers)

BLOCK_SIZE = 1024
NUM_WARPS = 4


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 words (tensors or scalars, broadcast); returns the 4 output words."""
    M0 = tl.full([], 0xD2511F53, tl.uint32)
    M1 = tl.full([], 0xCD9E8D57, tl.uint32)
    W0 = tl.full([], 0x9E3779B9, tl.uint32)
    W1 = tl.full([], 0xBB67AE85, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(M0, c0)
        lo0 = c0 * M0
        hi1 = tl.umulhi(M1, c2)
        lo1 = c2 * M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + W0
        k1 = k1 + W1
    return c0, c1, c2, c3


@triton.jit
def key_and_counter(seed_lo, seed_hi, off_lo, off_hi, rng_ptr, HAS_RNG: tl.constexpr):
    """The uint32 words ``(key0, key1, o0, o1)`` of docs/ops.md.

    Host seed: the words are the int32 bit patterns of ``split_u64(seed)`` and ``split_u64(offset)``.
    ``HAS_RNG``: ``key = uint64(rng[0])``, ``o = uint64(rng[1]) + offset`` (uint64, wrapping mod 2^64);
    ``seed_lo``/``seed_hi`` are then unused.
    """
    o_lo = off_lo.to(tl.uint32, bitcast=True)
    o_hi = off_hi.to(tl.uint32, bitcast=True)
    if HAS_RNG:
        key = tl.load(rng_ptr).to(tl.uint64, bitcast=True)
        base = tl.load(rng_ptr + 1).to(tl.uint64, bitcast=True)
        o = base + ((o_hi.to(tl.uint64) << 32) | o_lo.to(tl.uint64))
        k0 = key.to(tl.uint32)  # truncation: the low word
        k1 = (key >> 32).to(tl.uint32)
        o_lo = o.to(tl.uint32)
        o_hi = (o >> 32).to(tl.uint32)
    else:
        k0 = seed_lo.to(tl.uint32, bitcast=True)
        k1 = seed_hi.to(tl.uint32, bitcast=True)
    return k0, k1, o_lo, o_hi


@triton.jit
def philox_radius(r):
    """sqrt(-2 ln u) of a Philox word (pydiff_math.h's philox_radius). (r >> 8) < 2^24: exact in int32 and
    float32; + 0.5 and * 2^-24 are float32 ops, as in ops.md."""
    u = ((r >> 8).to(tl.int32).to(tl.float32) + 0.5) * 5.960464477539063e-08
    return tl.sqrt_rn(-2.0 * log_f32(u))


@triton.jit
def philox_angle(r):
    """2 pi u of a Philox word (the argument of Box-Muller's cos and sin)."""
    return 6.2831855 * (((r >> 8).to(tl.int32).to(tl.float32) + 0.5) * 5.960464477539063e-08)


@triton.jit
def philox_normal_words(g, k0, k1, o0, o1):
    """Standard normal (float32) for int64 flat indices ``g`` under the uint32 key/counter words."""
    g = g.to(tl.int64)
    c = (g >> 2) & 0x3FFFFFFFFFFFFFFF  # the block counter (g's bit pattern shifted right logically)
    c0 = c.to(tl.uint32)  # truncation: c mod 2^32
    c1 = (c >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + o0
    c3 = tl.zeros_like(c0) + o1
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    second = (g & 2) != 0
    angle = philox_angle(tl.where(second, r3, r1))
    trig = tl.where((g & 1) != 0, sin_f32(angle), cos_f32(angle))
    return philox_radius(tl.where(second, r2, r0)) * trig


@triton.jit
def philox_normal_tile(g0, k0, k1, o0, o1, BLOCK: tl.constexpr):
    """Standard normals (float32) of the elements ``g0 .. g0 + BLOCK - 1`` for an int64 ``g0`` that is a multiple
    of 4: ``BLOCK // 4`` Philox blocks, each giving its four elements (both word pairs, cos and sin), put in
    element order by ``tl.join``; the values of :func:`philox_normal_words` on those elements, bit for bit (the
    same operations), for a quarter of its Philox rounds and half its logarithms."""
    c = (g0 >> 2) + tl.arange(0, BLOCK // 4).to(tl.int64)
    c0 = c.to(tl.uint32)  # truncation: c mod 2^32
    c1 = (c >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + o0
    c3 = tl.zeros_like(c0) + o1
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    rad0, rad1 = philox_radius(r0), philox_radius(r2)
    a0, a1 = philox_angle(r1), philox_angle(r3)
    # tl.join adds a last axis: join(join(z0, z2), join(z1, z3)) has shape (BLOCK // 4, 2, 2) with [i, p, q] =
    # z_{2p + q} of counter i, so row-major it is element 4i + 2p + q
    z = tl.join(tl.join(rad0 * cos_f32(a0), rad1 * cos_f32(a1)), tl.join(rad0 * sin_f32(a0), rad1 * sin_f32(a1)))
    return tl.reshape(z, (BLOCK,))


@triton.jit
def philox_normal_block(g, g0, k0, k1, o0, o1, TILE: tl.constexpr, BLOCK: tl.constexpr):
    """The normals of a kernel's tile ``g = g0 + arange(BLOCK)``: whole Philox blocks where ``TILE`` (``g0`` a
    multiple of 4, the launcher's promise), one block per element otherwise; the same values either way."""
    if TILE:
        return philox_normal_tile(g0, k0, k1, o0, o1, BLOCK)
    else:
        return philox_normal_words(g, k0, k1, o0, o1)


@triton.jit
def philox_normal_at(g, seed_lo, seed_hi, off_lo, off_hi):
    """Standard normal (float32) for int64 flat indices ``g``; the four key/offset words are the
    int32 bit patterns from :func:`split_u64`."""
    return philox_normal_words(g, seed_lo.to(tl.uint32, bitcast=True), seed_hi.to(tl.uint32, bitcast=True),
                               off_lo.to(tl.uint32, bitcast=True), off_hi.to(tl.uint32, bitcast=True))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "off_lo", "off_hi"])
def philox_normal_kernel(out_ptr, rng_ptr, numel, seed_lo, seed_hi, off_lo, off_hi,
                         HAS_RNG: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = g < numel
    k0, k1, o0, o1 = key_and_counter(seed_lo, seed_hi, off_lo, off_hi, rng_ptr, HAS_RNG)
    z = philox_normal_tile(tl.program_id(0).to(tl.int64) * BLOCK, k0, k1, o0, o1, BLOCK)  # BLOCK % 4 == 0
    tl.store(out_ptr + g, z.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def philox_raw_kernel(ctr_ptr, key_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Raw Philox4x32-10 blocks (known-answer tests): int64 words in, int64 words out."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    c0 = tl.load(ctr_ptr + 4 * i + 0, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(ctr_ptr + 4 * i + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(ctr_ptr + 4 * i + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(ctr_ptr + 4 * i + 3, mask=mask, other=0).to(tl.uint32)
    k0 = tl.load(key_ptr + 2 * i + 0, mask=mask, other=0).to(tl.uint32)
    k1 = tl.load(key_ptr + 2 * i + 1, mask=mask, other=0).to(tl.uint32)
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + 4 * i + 0, r0.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * i + 1, r1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * i + 2, r2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * i + 3, r3.to(tl.int64), mask=mask)
