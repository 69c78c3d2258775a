"""The normalized signature each operator's implementation requires (docs/ops.md), checked on raw calls.

The public functions of ``pydiff.ops`` turn their arguments into this form (``_validate``) and, in plain eager
mode, call the implementation directly. A call of the operator itself -- ``torch.ops.pydiff.fused_step(...)``, a
compiled graph, ``opcheck`` -- runs these checks first: the backends take raw pointers, so a tensor of another
shape, dtype or layout would be read or written out of bounds. Metadata only (shapes, dtypes, strides, devices):
about 1-2 us a call, paid only off the direct eager path.
"""
from __future__ import annotations

import torch

from ._validate import FLOAT_DTYPES, check_like, compute_dtype
from .columns import K_MAX, NCOEF


def _tensor(name: str, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def data(name: str, t) -> torch.Tensor:
    """The reference tensor of a call: a contiguous float tensor with a batch dimension."""
    _tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (ndim >= 1), got a scalar")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the operator takes normalized arguments; pydiff.ops.* "
                         "normalizes them)")
    return t


def like(name: str, t, ref: torch.Tensor, ref_name: str) -> None:
    """``t`` (None allowed) has ``ref``'s shape, dtype and device and is contiguous."""
    if t is None:
        return
    check_like(name, t, ref, ref_name)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def small(name: str, t, x: torch.Tensor, dtype: torch.dtype, shape: tuple) -> None:
    """A small side input (``coef``, ``threshold``, ``rng``, ``index``): exact dtype and shape, contiguous, on
    ``x``'s device. ``None`` in ``shape`` matches any size."""
    if t is None:
        return
    _tensor(name, t)
    if t.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but the data is on {x.device}")
    if t.ndim != len(shape) or any(s is not None and n != s for n, s in zip(t.shape, shape)):
        want = "(" + ", ".join("R" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def rows(coef, index, index_stride: int, row_stride: int, x: torch.Tensor, width: int = NCOEF) -> None:
    """A coefficient table ``(R, width)`` in the compute dtype and the row rule of docs/ops.md."""
    B = x.shape[0]
    small("coef", coef, x, compute_dtype(x.dtype), (None, width))
    if coef.shape[0] == 0:
        raise ValueError("coef has no rows")
    if index_stride not in (0, 1) or row_stride not in (0, 1):
        raise ValueError(f"index_stride and row_stride must be 0 or 1, got {index_stride}, {row_stride}")
    if index is not None:
        small("index", index, x, torch.int64, (B if index_stride else 1,))
        if row_stride:
            raise ValueError("row_stride must be 0 with an index")
    elif row_stride and coef.shape[0] != B:
        raise ValueError(f"coef has {coef.shape[0]} rows but row_stride=1 needs one per sample (B={B})")


def noise(tensor, seed, rng, x: torch.Tensor, tensor_name: str = "noise", need_one: bool = False) -> None:
    """At most one noise source (exactly one with ``need_one``); ``rng`` an int64 ``(2,)`` on ``x``'s device."""
    given = [n for n, v in ((tensor_name, tensor), ("seed", seed), ("rng", rng)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give either {given[0]} or {given[1]}, not both")
    if need_one and not given:
        raise ValueError("give seed or rng")
    small("rng", rng, x, torch.int64, (2,))


def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise_t, seed, offset, rng, threshold,
               m2, var, backend=None) -> None:
    data("x", x)
    for name, t in (("model_output", m), ("out", out), ("w_out", w_out), ("noise", noise_t), ("m2", m2),
                    ("var", var)):
        like(name, t, x, "x")
    if len(hist) > K_MAX:
        raise ValueError(f"hist holds at most {K_MAX} tensors, got {len(hist)}")
    for k, h in enumerate(hist):
        like(f"hist[{k}]", h, x, "x")
    rows(coef, index, index_stride, row_stride, x)
    noise(noise_t, seed, rng, x)
    small("threshold", threshold, x, compute_dtype(x.dtype), (x.shape[0],))


def fused_step_functional(x, m, coef, index, index_stride, row_stride, hist, noise_t, seed, offset, rng, threshold,
                          m2, var, want_w, backend=None) -> None:
    fused_step(x, m, coef, index, index_stride, row_stride, None, None, hist, noise_t, seed, offset, rng, threshold,
               m2, var)


def fused_step_backward(grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise_t, seed, offset, rng,
                        threshold, m2, var, need_dnoise, need_dvar, backend=None) -> None:
    fused_step(x, m, coef, index, index_stride, row_stride, None, None, (), noise_t, seed, offset, rng, threshold, m2,
               var)
    like("grad_out", grad_out, x, "x")
    like("grad_w", grad_w, x, "x")


def sumsq(a, b, seed, offset, rng, backend=None) -> None:
    data("a", a)
    like("b", b, a, "a")
    noise(b, seed, rng, a, "b")


def philox_normal(out, seed, offset, rng, backend=None) -> None:
    _tensor("out", out)
    if out.dtype not in FLOAT_DTYPES:
        raise TypeError(f"out must be float16, bfloat16, float32 or float64, got {out.dtype}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous (it is written in place)")
    noise(None, seed, rng, out, need_one=True)


def langevin_step(x, m, coef, coef_stride, sample_norm, out, w_out, noise_t, seed, offset, rng, backend=None) -> None:
    data("x", x)
    for name, t in (("model_output", m), ("out", out), ("w_out", w_out), ("noise", noise_t)):
        like(name, t, x, "x")
    small("coef", coef, x, compute_dtype(x.dtype), (None, 2))
    if coef_stride not in (0, 1):
        raise ValueError(f"coef_stride must be 0 or 1, got {coef_stride}")
    if coef.shape[0] < (x.shape[0] if coef_stride else 1):
        raise ValueError(f"coef has {coef.shape[0]} rows, fewer than coef_stride={coef_stride} needs")
    noise(noise_t, seed, rng, x)


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, m2, lo, hi, wt, max_val, backend=None) -> None:
    data("x", x)
    like("model_output", m, x, "x")
    like("m2", m2, x, "x")
    if coef is not None:
        rows(coef, index, index_stride, row_stride, x)
    n = x[0].numel() if x.shape[0] else 0
    if n and not 0 <= lo <= hi < n:
        raise ValueError(f"lo and hi must be ranks with 0 <= lo <= hi < {n} (the sample size), got {lo}, {hi}")
