"""The memory layout a reference's sample would have, so that its ``randn_like(x)`` can be drawn in that layout.

``torch.randn_like(x)`` fills ``x``'s memory in order: for a channels_last or transposed ``x`` the same generator
gives a different *logical* tensor than for a contiguous one. The fused steps keep their sample contiguous, while
a reference written as tensor arithmetic carries a layout along (an elementwise result takes the stride order of its
first operand that is not broadcast: torch's TensorIterator rule). A face that reproduces such a reference tracks
that layout with ``follow`` and draws with ``randn_in_layout``; both run on ``meta`` tensors or allocate only
the draw itself, so a contiguous run pays nothing.
"""
from __future__ import annotations

import torch


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def row_major(*tensors) -> bool:
    """True when every tensor (None skipped) orders its dimensions as a contiguous tensor does (strides
    non-increasing over the dimensions of size > 1; a slice such as ``out[:, :C]`` counts). Arithmetic on such
    operands gives a contiguous result, so a face skips ``follow`` (meta tensors cost milliseconds a step)."""
    for t in tensors:
        if t is None or t.is_contiguous():
            continue
        st = [s for s, n in zip(t.stride(), t.shape) if n > 1]
        if any(a < b for a, b in zip(st, st[1:])):
            return False
    return True


def follow(*operands: torch.Tensor) -> torch.Tensor:
    """A ``meta`` tensor with the strides of ``operands[0] + operands[1] + ...`` (same shapes): the layout torch's
    elementwise arithmetic gives a result computed from them in this order."""
    out = _meta(operands[0]) * 1  # a unary op: a non-dense operand comes out dense in its own stride order
    for t in operands[1:]:
        out = out + _meta(t)
    return out


def randn_in_layout(like: torch.Tensor, *, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.randn_like(x, dtype=dtype)`` for an ``x`` with ``like``'s shape and strides, from the global generator
    of ``device``. ``like`` is the reference's tensor itself, or a ``meta`` tensor from ``follow`` (dense by
    construction). Returned as drawn (callers make it contiguous when they need to)."""
    if like.device.type != "meta":
        return torch.randn_like(like, dtype=dtype, device=device)
    if like.is_contiguous():
        return torch.randn(like.shape, dtype=dtype, device=device)
    return torch.empty_strided(like.shape, like.stride(), dtype=dtype, device=device).normal_()
