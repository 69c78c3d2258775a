"""Counter-based Gaussian noise: Philox4x32-10 keyed by a 64-bit key, counted by (element, offset).

Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.

The layout (docs/ops.md) is shared by every backend, so the same key and offset give the same noise on
reference, cpu, cuda and triton, and a kernel can regenerate element ``g`` of a noise tensor from ``g`` alone
instead of storing it (the Langevin corrector's step size needs ``||z||`` before the update that adds ``z``)::

    key = (k mod 2^32, k >> 32)
    ctr = (c mod 2^32, c >> 32, o mod 2^32, o >> 32)        c = g >> 2: one block per 4 elements
    10 rounds of  ctr = (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0)),
                  key += (W0, W1)
    (a, b) = (r0, r1) for g mod 4 in {0, 1},  (r2, r3) for g mod 4 in {2, 3}
    u1 = ((a >> 8) + 0.5) / 2^24,  u2 = ((b >> 8) + 0.5) / 2^24
    z  = sqrt(-2 ln u1) * cos(2 pi u2)  for even g,  sqrt(-2 ln u1) * sin(2 pi u2)  for odd g
                                                (Box-Muller on both word pairs, float32)

``k``/``o`` are the host ``seed``/``offset``, or read from a device tensor ``rng = [key bits, offset base]``
(``o = rng[1] + offset``), so that a captured graph draws fresh noise after the caller advances ``rng[1]``.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _contract as contract, library
from ._validate import check_noise_args, to_int64, to_uint64
from .dispatch import dispatch, resolve_backend

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def _mulhilo(a: int, c: torch.Tensor):
    # c holds uint32 values in int64; a*c < 2^64 wraps in int64 two's complement, and the low 64 bits
    # are exact, so shifting and masking recovers both 32-bit halves.
    p = c * a
    return (p >> 32) & _MASK, p & _MASK


def philox4x32_10_reference(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on int64 tensors holding uint32 words; returns the four output words."""
    k0 = torch.as_tensor(k0, dtype=torch.int64)
    k1 = torch.as_tensor(k1, dtype=torch.int64)
    for _ in range(10):
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + W0) & _MASK
        k1 = (k1 + W1) & _MASK
    return c0, c1, c2, c3


def _split(v):
    """An unsigned 64-bit value (a Python int, or an int64 tensor holding its bits) as (low, high) words."""
    if isinstance(v, torch.Tensor):
        return v & _MASK, (v >> 32) & _MASK  # arithmetic shift, then mask: the high word of the bit pattern
    return v & _MASK, v >> 32


def philox_key_offset(seed, offset: int, rng):
    """``(key, ctr_offset)`` of docs/ops.md: host ints, or int64 tensors read from ``rng`` (no host sync)."""
    if rng is None:
        return seed, offset
    off = offset - (1 << 64) if offset >= 1 << 63 else offset  # the host offset's int64 bit pattern
    return rng[0], rng[1] + off  # int64 addition wraps modulo 2^64, as the contract says


def philox_normal_flat(g: torch.Tensor, seed, offset, rng=None) -> torch.Tensor:
    """Standard normals (float32) for int64 flat element indices ``g`` (docs/ops.md counter layout)."""
    key, off = philox_key_offset(seed, offset, rng)
    k0, k1 = _split(key)
    c2, c3 = _split(off)
    c = (g >> 2) & ((1 << 62) - 1)  # the block counter of element g (g's uint64 bit pattern shifted)
    zero = torch.zeros_like(g)
    r0, r1, r2, r3 = philox4x32_10_reference(c & _MASK, c >> 32, zero + c2, zero + c3, k0, k1)
    second = (g & 2) != 0
    scale = 2.0 ** -24
    u1 = ((torch.where(second, r2, r0) >> 8).to(torch.float32) + 0.5) * scale
    u2 = ((torch.where(second, r3, r1) >> 8).to(torch.float32) + 0.5) * scale
    angle = 6.2831855 * u2
    trig = torch.where((g & 1) != 0, torch.sin(angle), torch.cos(angle))
    return torch.sqrt(-2.0 * torch.log(u1)) * trig


def philox_normal_reference(out: torch.Tensor, seed, offset: int, rng) -> None:
    """Normalized backend entry: fill ``out`` (contiguous) with Philox normals, element i = flat index."""
    g = torch.arange(out.numel(), dtype=torch.int64, device=out.device)
    out.copy_(philox_normal_flat(g, seed, offset, rng).view(out.shape))


def _run(out, seed, offset, rng, backend):
    impl = dispatch("philox_normal", resolve_backend(backend, out, "philox_normal"))
    impl(out, to_uint64(seed), to_uint64(offset), rng)


def _fake(out, seed, offset, rng, backend):
    return None


#: ``pydiff::philox_normal``: fills ``out`` in place
philox_normal_op = library.define(
    "philox_normal", "(Tensor(a!) out, SymInt? seed, SymInt offset, Tensor? rng, str? backend) -> ()", _run, _fake,
    check=contract.philox_normal)


def philox_normal(shape, *, seed=None, offset: int = 0, rng=None, dtype=torch.float32, device=None, backend=None):
    """Draw a standard-normal tensor from the shared Philox stream.

    Args:
        shape: output shape; element ``g`` (flat, row-major) gets counter ``(g, offset)``.
        seed: integer key in ``[0, 2**64)`` (or its int64 bit pattern); or
        rng: an int64 tensor ``[key bits, offset base]`` on ``device``, read by the kernel (graph capture).
        offset: integer in ``[0, 2**64)``; samplers use one offset per step.
        dtype: float16, bfloat16, float32 or float64 (values are computed in float32 and rounded).
        device: target device (default: CPU; ``rng``'s device when ``rng`` is given).
        backend: ``None`` (automatic), ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        A new tensor; ``philox_normal(s, seed=k, offset=o)`` equals the noise that
        ``fused_step(..., seed=k, offset=o)`` adds to a tensor of shape ``s``.
    """
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    if device is None and isinstance(rng, torch.Tensor):
        device = rng.device
    shape = (shape,) if isinstance(shape, (int, np.integer, torch.SymInt)) else tuple(shape)
    if not all(isinstance(n, (int, np.integer, torch.SymInt)) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"shape must hold non-negative ints, got {shape!r}")
    out = torch.empty(shape, dtype=dtype, device=device)
    if seed is None and rng is None:
        raise TypeError("philox_normal needs seed= or rng=")
    seed, offset, rng = check_noise_args(seed, offset, rng, out)
    if out.numel() == 0:
        return out
    (_run if library.eager(out) else philox_normal_op)(out, to_int64(seed), to_int64(offset), rng, backend)
    return out
