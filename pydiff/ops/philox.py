"""Counter-based Gaussian noise: Philox4x32-10 keyed by (seed), counted by (element, offset).

Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.

The layout (docs/ops.md) is shared by every backend, so the same ``(seed, offset)`` gives the same
noise on reference, cpu, cuda and triton, and a kernel can regenerate element ``g`` of a noise tensor
from ``g`` alone instead of storing it (the Langevin corrector's step size needs ``||z||`` before the
update that adds ``z``)::

    key = (seed mod 2^32, seed >> 32)
    ctr = (g mod 2^32, g >> 32, offset mod 2^32, offset >> 32)
    10 rounds of  ctr = (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0)),
                  key += (W0, W1)
    u1 = ((r0 >> 8) + 0.5) / 2^24,  u2 = ((r1 >> 8) + 0.5) / 2^24
    z  = sqrt(-2 ln u1) * cos(2 pi u2)          (Box-Muller, float32)
"""
from __future__ import annotations

import torch

from ._dispatch import dispatch, check_seed_offset, resolve_backend

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF


def _mulhilo(a: int, c: torch.Tensor):
    # c holds uint32 values in int64; a*c < 2^64 wraps in int64 two's complement, and the low 64 bits
    # are exact, so shifting and masking recovers both 32-bit halves.
    p = c * a
    return (p >> 32) & _MASK, p & _MASK


def philox4x32_10_reference(c0, c1, c2, c3, k0: int, k1: int):
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


def philox_normal_flat(g: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Standard normals (float32) for int64 flat element indices ``g`` under ``(seed, offset)``."""
    zero = torch.zeros_like(g)
    r0, r1, _, _ = philox4x32_10_reference(
        g & _MASK, (g >> 32) & _MASK, zero + (offset & _MASK), zero + (offset >> 32), seed & _MASK, seed >> 32
    )
    scale = 2.0 ** -24
    u1 = ((r0 >> 8).to(torch.float32) + 0.5) * scale
    u2 = ((r1 >> 8).to(torch.float32) + 0.5) * scale
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.2831855 * u2)


def philox_normal_reference(out: torch.Tensor, seed: int, offset: int) -> None:
    """Normalized backend entry: fill ``out`` (contiguous) with Philox normals, element i = flat index."""
    g = torch.arange(out.numel(), dtype=torch.int64, device=out.device)
    out.copy_(philox_normal_flat(g, seed, offset).view(out.shape))


def philox_normal(shape, *, seed: int, offset: int = 0, dtype=torch.float32, device=None, backend=None):
    """Draw a standard-normal tensor from the shared Philox stream.

    Args:
        shape: output shape; element ``g`` (flat, row-major) gets counter ``(g, offset)``.
        seed: integer key in ``[0, 2**64)``.
        offset: integer in ``[0, 2**64)``; samplers use one offset per step.
        dtype: float16, bfloat16, float32 or float64 (values are computed in float32 and rounded).
        device: target device (default: CPU).
        backend: ``None`` (automatic), ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        A new tensor; ``philox_normal(s, seed=k, offset=o)`` equals the noise that
        ``fused_step(..., seed=k, offset=o)`` adds to a tensor of shape ``s``.
    """
    check_seed_offset(seed, offset)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"philox_normal: dtype must be a floating dtype, got {dtype}")
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    impl = dispatch("philox_normal", resolve_backend(backend, out))
    impl(out, int(seed), int(offset))
    return out
