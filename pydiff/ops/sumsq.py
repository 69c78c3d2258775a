"""Per-sample sums of squares, for step sizes that depend on norms of the data.

Song et al.'s Langevin corrector (score SDE, arXiv:2011.13456, Algorithm 4) needs
``eps = 2 alpha (r ||z|| / ||g||)^2`` before it can add ``z``; with Philox (``seed`` or ``rng``), the second source
is the noise ``z`` that a later ``fused_step`` with the same key and offset adds, regenerated rather than stored.
Sums are accumulated in the compute type (float32, float64 for float64 data).
"""
from __future__ import annotations

import torch

from . import _contract as contract, library
from ._interop import from_arrays
from ._validate import check_data, check_like, check_noise_args, compute_dtype, to_int64, to_uint64
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


def _run(a, b, seed, offset, rng, backend):
    impl = dispatch("sumsq", resolve_backend(backend, a, "sumsq"))
    return impl(a, b, to_uint64(seed), to_uint64(offset), rng)


def _fake(a, b, seed, offset, rng, backend):
    n_src = 1 + (b is not None or seed is not None or rng is not None)
    return a.new_empty((n_src, a.shape[0]), dtype=compute_dtype(a.dtype))


#: ``pydiff::sumsq``: ``(S, B)`` sums of squares (S = 1, or 2 with ``b`` or a Philox key)
sumsq_op = library.define("sumsq", "(Tensor a, Tensor? b, SymInt? seed, SymInt offset, Tensor? rng, str? backend) "
                          "-> Tensor", _run, _fake, check=contract.sumsq)


def _setup_context(ctx, inputs, output):
    a, b = inputs[0], inputs[1]
    ctx.save_for_backward(a, b)


def _backward(ctx, grad):
    # d/da sum(a^2) = 2a: a per-sample scaling, computed in the compute type and rounded to a's dtype
    a, b = ctx.saved_tensors
    B = a.shape[0]
    view = (B,) + (1,) * (a.ndim - 1)
    T = grad.dtype
    da = (2.0 * grad[0].view(view) * a.to(T)).to(a.dtype) if ctx.needs_input_grad[0] else None
    db = None
    if b is not None and ctx.needs_input_grad[1]:
        db = (2.0 * grad[1].view(view) * b.to(T)).to(b.dtype)
    return da, db, None, None, None, None


torch.library.register_autograd("pydiff::sumsq", _backward, setup_context=_setup_context, lib=library.LIB)


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
        (float64 for float64 input). Differentiable in ``a`` and ``b`` (``2 a`` times the incoming gradient);
        runs the operator ``torch.ops.pydiff.sumsq``.
    """
    if not isinstance(a, torch.Tensor):
        return from_arrays(sumsq, a, b, seed=seed, offset=offset, rng=rng, backend=backend)
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
        direct = library.eager(a) and not library.needs_grad(a, b)
        res = (_run if direct else sumsq_op)(a, b, to_int64(seed), to_int64(offset), rng, backend)
    return res[0] if n_src == 1 else (res[0], res[1])
