"""Per-sample sums of squares, for step sizes that depend on norms of the data.

Song et al.'s Langevin corrector (score SDE, arXiv:2011.13456, Algorithm 4) needs
``eps = 2 alpha (r ||z|| / ||g||)^2`` before it can add ``z``; with Philox (``seed`` or ``rng``), the second source
is the noise ``z`` that a later ``fused_step`` with the same key and offset adds, regenerated rather than stored.
Sums are accumulated in the compute type (float32, float64 for float64 data).
"""
from __future__ import annotations

import torch

from ._validate import check_data, check_like, check_noise_args, compute_dtype
from .dispatch import dispatch, resolve_backend
from .philox import philox_normal_flat


def sumsq_reference(a, b, seed, offset, rng):
    """Plain-PyTorch twin (normalized signature, docs/ops.md): ``(S, B)`` sums of squares."""
    T = compute_dtype(a.dtype)
    B = a.shape[0]
    rows = [a.to(T).reshape(B, -1).square().sum(dim=1)]
    if b is not None:
        rows.append(b.to(T).reshape(B, -1).square().sum(dim=1))
    elif seed is not None or rng is not None:
        g = torch.arange(a.numel(), dtype=torch.int64, device=a.device)
        z = philox_normal_flat(g, seed, offset, rng).to(T)
        rows.append(z.reshape(B, -1).square().sum(dim=1))
    return torch.stack(rows)


def sumsq(a: torch.Tensor, b: torch.Tensor | None = None, *, seed: int | None = None, offset: int = 0, rng=None,
          backend=None):
    """Per-sample ``sum(a**2)`` and, optionally, ``sum(b**2)`` or ``sum(z**2)`` of Philox noise ``z``.

    Args:
        a: tensor of shape ``(B, ...)``.
        b: optional second tensor, same shape, dtype and device as ``a``.
        seed, offset, rng: instead of ``b``, the Philox stream whose noise over ``a``'s shape is summed
            (as in ``fused_step``).
        backend: as for ``fused_step``.

    Returns:
        ``(B,)`` when only ``a`` is given, else a tuple ``(sum_a, sum_b)`` of ``(B,)`` tensors, in float32
        (float64 for float64 input).
    """
    check_data("a", a)
    a = a.contiguous()
    if b is not None:
        b = check_like("b", b, a, "a")
    seed, offset, rng = check_noise_args(seed, offset, rng, a, b, "b")
    B = a.shape[0]
    n_src = 1 + (b is not None or seed is not None or rng is not None)
    if a.numel() == 0:
        res = torch.zeros(n_src, B, dtype=compute_dtype(a.dtype), device=a.device)
    else:
        res = dispatch("sumsq", resolve_backend(backend, a))(a, b, seed, offset, rng)
    return res[0] if n_src == 1 else (res[0], res[1])
