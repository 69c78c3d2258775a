"""The backward of the fused sampler step: vector-Jacobian products of ``fused_step`` in one pass.

``fused_step`` (see its module docstring and docs/ops.md) computes, per sample ``b`` (row ``r``) and element::

    m_e = m  or  M1*m + M2*m2,     w' = S*(P*x + Q*m_e),     w = clip(w'),     e = exp(VA + VB*v)  or  1
    x'  = O*(A*x + D*m_e + B0*w + sum_k Bk*h_k + G*e^2*m2 + C*e*z)

It is linear in ``x, m, m2, h_k, z`` apart from the clip of ``w'`` and the exp of ``v``, so with ``g = O*dL/dx'``
and ``dL/dw`` (the gradient reaching the ``w_out`` output, ``grad_w``; 0 when not given)::

    dw   = B0*g + grad_w
    dw'  = dw * scale      where -bound <= w' <= bound,  else 0      (bound, scale = s, 1/s with a threshold s,
                                                                       else CLIP, 1; NaN w' gives 0)
    dm_e = D*g + S*Q*dw'
    dx   = A*g + S*P*dw'
    dm   = dm_e  (no m2)   or  M1*dm_e,     dm2 = M2*dm_e + G*e^2*g
    dz   = C*e*g
    dv   = VB*g*(2*G*e^2*m2 + C*e*z)       (the terms whose inputs are present)

The clip is the subgradient that passes the gradient inside the closed interval: at ``w' = +-bound`` exactly it
passes all of it (torch.clamp's backward, while ``torch.minimum``/``maximum`` would split it in half). The
threshold ``s`` is treated as a constant (``dynamic_threshold`` is a quantile: its gradient is sparse and
rarely wanted). Gradients w.r.t. the history tensors are ``O*Bk*dL/dx'``, one scaled copy each, left to the
caller. With Philox noise (``seed`` or ``rng``) ``z`` is regenerated exactly as the forward drew it, so ``dv``
needs no stored noise.
"""
from __future__ import annotations

import torch

from . import _contract as contract, library
from ._validate import (check_data, check_index_range, check_like, check_noise_args, check_threshold,
                        compute_dtype, normalize_rows, to_int64, to_uint64)
from .columns import COL
from .dispatch import dispatch, resolve_backend
from .fused_step import select_rows
from .philox import philox_normal_flat


def fused_step_backward_reference(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset,
                                  rng, threshold, m2, var, dx, dm, dm2, dnoise, dvar):
    """Plain-PyTorch twin of the backward kernels (normalized signature): writes dx, dm (and dm2, dnoise, dvar
    when given) in place, in the compute dtype, in the order of the module docstring."""
    B = x.shape[0]
    T = compute_dtype(x.dtype)
    view = (B,) + (1,) * (x.ndim - 1)
    r = select_rows(coef, index, index_stride, row_stride, B).to(T)
    col = lambda name: r[:, COL[name]].view(view)  # noqa: E731
    g = col("O") * grad_out.to(T)
    xf, mf = x.to(T), m.to(T)
    m2f = None if m2 is None else m2.to(T)
    me = mf if m2f is None else col("M1") * mf + col("M2") * m2f
    wp = col("S") * (col("P") * xf + col("Q") * me)
    bound = col("CLIP") if threshold is None else threshold.to(T).view(view)
    inside = (wp >= -bound) & (wp <= bound)  # False for a NaN w' (or a NaN bound)
    dw = col("B0") * g
    if grad_w is not None:
        dw = dw + grad_w.to(T)
    if threshold is not None:
        dw = dw / bound
    dwp = torch.where(inside, dw, torch.zeros_like(dw))
    dme = col("D") * g + col("S") * col("Q") * dwp
    dx.copy_(col("A") * g + col("S") * col("P") * dwp)
    e = None if var is None else torch.exp(col("VA") + col("VB") * var.to(T))
    if m2f is None:
        dm.copy_(dme)
    else:
        dm.copy_(col("M1") * dme)
        if dm2 is not None:
            gee = col("G") if e is None else col("G") * e * e
            dm2.copy_(col("M2") * dme + gee * g)
    z = None
    if noise is not None:
        z = noise.to(T)
    elif seed is not None or rng is not None:
        flat = torch.arange(x.numel(), dtype=torch.int64, device=x.device)
        z = philox_normal_flat(flat, seed, offset, rng).to(T).view(x.shape)
    ce = col("C") if e is None else col("C") * e
    if dnoise is not None:
        dnoise.copy_(ce * g)
    if dvar is not None:
        term = torch.zeros_like(g)
        if m2f is not None:
            term = term + 2.0 * col("G") * e * e * m2f
        if z is not None:
            term = term + ce * z
        dvar.copy_(col("VB") * g * term)


def _run(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng, threshold, m2, var,
         need_dnoise, need_dvar, backend):
    """The operator's implementation: allocates the gradients (an empty tensor where one is not computed)."""
    check_index_range(coef, index)
    dx, dm = torch.empty_like(x), torch.empty_like(x)
    dm2 = torch.empty_like(x) if m2 is not None else None
    dnoise = torch.empty_like(x) if noise is not None and need_dnoise else None
    dvar = torch.empty_like(x) if var is not None and need_dvar else None
    if x.numel() > 0:
        impl = dispatch("fused_step_backward", resolve_backend(backend, x, "fused_step_backward"))
        impl(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, to_uint64(seed), to_uint64(offset),
             rng, threshold, m2, var, dx, dm, dm2, dnoise, dvar)
    empty = x.new_empty(0)
    return dx, dm, _or(dm2, empty), _or(dnoise, empty), _or(dvar, empty)


def _or(t, empty):
    return empty if t is None else t


def _fake(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng, threshold, m2, var,
          need_dnoise, need_dvar, backend):
    empty = x.new_empty(0)
    like = torch.empty_like(x)
    return (like, torch.empty_like(x), torch.empty_like(x) if m2 is not None else empty,
            torch.empty_like(x) if noise is not None and need_dnoise else empty,
            torch.empty_like(x) if var is not None and need_dvar else empty)


#: ``pydiff::fused_step_backward``: ``(dx, dm, dm2, dnoise, dvar)``, an empty tensor for each one not computed
fused_step_backward_op = library.define(
    "fused_step_backward",
    "(Tensor grad_out, Tensor? grad_w, Tensor x, Tensor m, Tensor coef, Tensor? index, int index_stride, "
    "int row_stride, Tensor? noise, SymInt? seed, SymInt offset, Tensor? rng, Tensor? threshold, Tensor? m2, "
    "Tensor? var, bool need_dnoise, bool need_dvar, str? backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _run, _fake, check=contract.fused_step_backward)
library.no_backward("fused_step_backward", "the inputs of fused_step's backward (double backward)")


def fused_step_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    model_output: torch.Tensor,
    coef: torch.Tensor,
    *,
    grad_w: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    rng: torch.Tensor | None = None,
    threshold: torch.Tensor | None = None,
    m2: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
    noise_grad: bool = True,
    var_grad: bool = True,
    backend: str | None = None,
):
    """Gradients of one ``fused_step`` w.r.t. its inputs, given the gradients of its outputs.

    The forward's arguments (``x, model_output, coef, index, noise, seed, offset, rng, threshold, m2, var``) are
    passed again exactly as the forward got them (the noise is regenerated from ``seed``/``rng``).

    Args:
        grad_out: ``dL/dx'``, the gradient w.r.t. the step's output, same shape, dtype and device as ``x``.
        grad_w: optional ``dL/dw``, the gradient w.r.t. the forward's ``w_out`` output (same shape).
        noise_grad: compute ``dL/dnoise`` (only with a ``noise`` tensor).
        var_grad: compute ``dL/dvar`` (only with ``var``).
        backend: as for ``fused_step``.

    Returns:
        ``(dx, dm, dm2, dnoise, dvar)`` in ``x``'s dtype; ``dm2`` is None without ``m2``, ``dnoise`` None without a
        ``noise`` tensor (or with ``noise_grad=False``), ``dvar`` None without ``var`` (or with ``var_grad=False``).
        The history tensors' gradients are ``O*Bk*grad_out`` (not computed here).
    """
    check_data("x", x)
    x = x.contiguous()
    m = check_like("model_output", model_output, x, "x")
    grad_out = check_like("grad_out", grad_out, x, "x")
    if grad_w is not None:
        grad_w = check_like("grad_w", grad_w, x, "x")
    if noise is not None:
        noise = check_like("noise", noise, x, "x")
    seed, offset, rng = check_noise_args(seed, offset, rng, x, noise)
    if m2 is not None:
        m2 = check_like("m2", m2, x, "x")
    if var is not None:
        var = check_like("var", var, x, "x")
    for name, flag in (("noise_grad", noise_grad), ("var_grad", var_grad)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    coef, index, index_stride, row_stride = normalize_rows(coef, index, x.shape[0], x)
    if threshold is not None:
        threshold = check_threshold(threshold, x)
    args = (grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, to_int64(seed), to_int64(offset),
            rng, threshold, m2, var, bool(noise_grad), bool(var_grad), backend)
    direct = library.eager(x) and not library.needs_grad(grad_out, grad_w, x, m, noise, m2, var)
    dx, dm, dm2, dnoise, dvar = (_run if direct else fused_step_backward_op)(*args)
    return (dx, dm, dm2 if m2 is not None else None, dnoise if noise is not None and noise_grad else None,
            dvar if var is not None and var_grad else None)
