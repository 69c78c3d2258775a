"""The fused sampler step: one pass that converts the model output and updates the sample.

Per sample ``b`` (coefficient row ``r``, columns ``pydiff.ops.COLUMNS``) and element ``g``::

    m_e   = m                       or  r.M1*m + r.M2*m2        (a second model output, e.g. CFG)
    w     = clip(r.S * (r.P * x + r.Q * m_e))                   # eps / x0 / v  ->  the solver's variable
    w_out = w                                                    # optional: pred_original_sample, or history
    e     = exp(r.VA + r.VB * v)    or  1                        # optional per-element variance input v
    x'    = r.O*(r.A*x + r.D*m_e + r.B0*w + sum_k r.Bk*h_k + r.G*e^2*m2 + r.C*e*z)

``clip`` is ``clamp(w, -CLIP, CLIP)`` (static clipping, DDPM Ho et al. 2020) or, given a per-sample
``threshold`` s, ``clamp(w, -s, s)/s`` (Imagen dynamic thresholding, Saharia et al. 2022).
DDIM (Song et al., arXiv:2010.02502, eq. 12), DDPM's posterior mean (Ho et al., arXiv:2006.11239, eq. 7),
DPM-Solver(++) (Lu et al., arXiv:2206.00927, arXiv:2211.01095), classifier-free guidance (Ho & Salimans,
arXiv:2207.12598), classifier guidance (Dhariwal & Nichol, arXiv:2105.05233, Alg. 1 and 2) and learned
variances (Nichol & Dhariwal, arXiv:2102.09672) are all this formula with different coefficients; the
coefficients come from a plan computed in float64. docs/ops.md is the exact contract.
"""
from __future__ import annotations

import math

import torch

from . import _contract as contract, library
from ._interop import from_arrays
from ._validate import (check_data, check_index_range, check_like, check_noise_args, check_output, check_overlap,
                        check_threshold, compute_dtype, normalize_rows, to_int64, to_uint64)
from .columns import COL, K_MAX
from .dispatch import dispatch, resolve_backend
from .philox import philox_normal_flat


def select_rows(coef, index, index_stride, row_stride, batch):
    """``(B, NCOEF)``: the row of every sample, with the index rule of docs/ops.md (NaN row out of range)."""
    if index is None:
        return coef if row_stride else coef.expand(batch, coef.shape[1])
    R = coef.shape[0]
    idx = index if index_stride else index.expand(batch)
    idx = torch.where(idx < 0, idx + R, idx)
    valid = (idx >= 0) & (idx < R)
    rows = coef[idx.clamp(0, R - 1)]
    return torch.where(valid[:, None], rows, torch.full_like(rows, math.nan))


def clamp_sym(w, bound):
    """``clamp(w, -bound, bound)`` propagating a NaN of ``w`` or of ``bound``."""
    return torch.maximum(torch.minimum(w, bound), -bound)


def fused_step_reference(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng,
                         threshold, m2, var):
    """Plain-PyTorch twin of the fused kernels (normalized signature, docs/ops.md)."""
    B = x.shape[0]
    T = compute_dtype(x.dtype)
    view = (B,) + (1,) * (x.ndim - 1)
    r = select_rows(coef, index, index_stride, row_stride, B).to(T)
    col = lambda name: r[:, COL[name]].view(view)  # noqa: E731
    xf, mf = x.to(T), m.to(T)
    m2f = None if m2 is None else m2.to(T)
    me = mf if m2f is None else col("M1") * mf + col("M2") * m2f
    w = col("S") * (col("P") * xf + col("Q") * me)
    if threshold is not None:
        s = threshold.to(T).view(view)
        w = clamp_sym(w, s) / s
    else:
        w = clamp_sym(w, col("CLIP"))
    e = None if var is None else torch.exp(col("VA") + col("VB") * var.to(T))
    acc = col("A") * xf + col("D") * me + col("B0") * w
    for k, h in enumerate(hist, start=1):
        acc = acc + col(f"B{k}") * h.to(T)
    if m2f is not None:
        acc = acc + (col("G") if e is None else col("G") * (e * e)) * m2f
    z = None
    if noise is not None:
        z = noise.to(T)
    elif seed is not None or rng is not None:
        g = torch.arange(x.numel(), dtype=torch.int64, device=x.device)
        z = philox_normal_flat(g, seed, offset, rng).to(T).view(x.shape)
    if z is not None:
        acc = acc + (col("C") if e is None else col("C") * e) * z
    if w_out is not None:
        w_out.copy_(w)
    out.copy_(col("O") * acc)


def _run(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng, threshold, m2, var,
         backend):
    """The operator's implementation (every dispatch key): data checks, backend choice, the backend's kernel."""
    check_index_range(coef, index)
    check_overlap((("out", out), ("w_out", w_out)),
                  (("x", x), ("model_output", m), ("noise", noise), ("m2", m2), ("var", var))
                  + tuple((f"hist[{k}]", h) for k, h in enumerate(hist)),
                  (("coef", coef), ("threshold", threshold), ("index", index), ("rng", rng)))
    impl = dispatch("fused_step", resolve_backend(backend, x))
    impl(x, m, coef, index, index_stride, row_stride, out, w_out, tuple(hist), noise, to_uint64(seed),
         to_uint64(offset), rng, threshold, m2, var)


def _fake(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset, rng, threshold, m2,
          var, backend):
    return None


_ARGS = ("Tensor x, Tensor m, Tensor coef, Tensor? index, int index_stride, int row_stride")
_TAIL = ("Tensor? noise, SymInt? seed, SymInt offset, Tensor? rng, Tensor? threshold, Tensor? m2, Tensor? var")

#: ``pydiff::fused_step``: writes ``out`` (and ``w_out``) in place; not differentiable (see the functional form)
fused_step_op = library.define(
    "fused_step", f"({_ARGS}, Tensor(a!) out, Tensor(b!)? w_out, Tensor[] hist, {_TAIL}, str? backend) -> ()",
    _run, _fake, check=contract.fused_step, mutating_inputs=(0, 1, 8, 9, 14, 15))


def _run_functional(x, m, coef, index, index_stride, row_stride, hist, noise, seed, offset, rng, threshold, m2, var,
                    want_w, backend):
    out = torch.empty_like(x)
    w = torch.empty_like(x) if want_w else x.new_empty(0)
    _run(x, m, coef, index, index_stride, row_stride, out, w if want_w else None, hist, noise, seed, offset, rng,
         threshold, m2, var, backend)
    return out, w


def _fake_functional(x, m, coef, index, index_stride, row_stride, hist, noise, seed, offset, rng, threshold, m2,
                     var, want_w, backend):
    return torch.empty_like(x), (torch.empty_like(x) if want_w else x.new_empty(0))


#: ``pydiff::fused_step_functional``: returns ``(x', w)`` (``w`` empty unless ``want_w``); differentiable in x, m,
#: the history, the noise tensor, m2 and var
fused_step_functional_op = library.define(
    "fused_step_functional", f"({_ARGS}, Tensor[] hist, {_TAIL}, bool want_w, str? backend) -> (Tensor, Tensor)",
    _run_functional, _fake_functional, check=contract.fused_step_functional)


def _setup_context(ctx, inputs, output):
    (x, m, coef, index, index_stride, row_stride, hist, noise, seed, offset, rng, threshold, m2, var, want_w,
     backend) = inputs
    ctx.save_for_backward(x, m, coef, index, noise, rng, threshold, m2, var)
    ctx.meta = (index_stride, row_stride, len(hist), seed, offset, want_w, backend)


def _backward(ctx, grad_out, grad_w):
    from .fused_step_backward import fused_step_backward_op

    x, m, coef, index, noise, rng, threshold, m2, var = ctx.saved_tensors
    index_stride, row_stride, n_hist, seed, offset, want_w, backend = ctx.meta
    need = ctx.needs_input_grad  # inputs: x m coef index is rs hist noise seed offset rng threshold m2 var ...
    grad_out = grad_out.contiguous()
    grad_w = grad_w.contiguous() if (want_w and grad_w is not None) else None
    dx, dm, dm2, dnoise, dvar = fused_step_backward_op(
        grad_out, grad_w, x, m, coef, index, index_stride, row_stride, noise, seed, offset, rng, threshold, m2, var,
        bool(need[7] and noise is not None), bool(need[13] and var is not None), backend)
    dhist = []
    if n_hist:
        # h_k enters as O*Bk*h_k: its gradient is a per-sample scaling of grad_out
        B = x.shape[0]
        r = select_rows(coef, index, index_stride, row_stride, B)
        view = (B,) + (1,) * (x.ndim - 1)
        T = compute_dtype(x.dtype)
        dhist = [(r[:, COL["O"]] * r[:, COL[f"B{k}"]]).view(view) * grad_out.to(T) for k in range(1, n_hist + 1)]
        dhist = [d.to(x.dtype) for d in dhist]
    return (dx, dm, None, None, None, None, dhist, dnoise if noise is not None and need[7] else None, None, None,
            None, None, dm2 if m2 is not None else None, dvar if var is not None and need[13] else None, None, None)


torch.library.register_autograd("pydiff::fused_step_functional", _backward, setup_context=_setup_context,
                                lib=library.LIB)


def fused_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    coef: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    w_out: torch.Tensor | None = None,
    hist=(),
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    rng: torch.Tensor | None = None,
    threshold: torch.Tensor | None = None,
    m2: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """One fused sampler update (see the module docstring for the formula, docs/ops.md for the contract).

    Args:
        x: current sample, shape ``(B, ...)``, float16/bfloat16/float32 (float64 on reference/cpu).
        model_output: the network output ``m``, same shape, dtype and device as ``x``.
        coef: coefficient row(s), columns ``pydiff.ops.COLUMNS``: ``(NCOEF,)`` for the whole batch,
            ``(B, NCOEF)`` one row per sample, or a table ``(R, NCOEF)`` indexed by ``index``.
        index: optional int64 tensor (shape ``()``, ``(1,)`` or ``(B,)``) of table rows; lets a device-side step
            counter or timestep select the row without a host sync. Negative rows count from the end; a row
            outside ``[-R, R)`` raises IndexError for a CPU index and gives NaN outputs on an accelerator.
        out: where to write ``x'`` (may be ``x`` itself); a new tensor by default.
        w_out: optional output for the converted, clipped model output ``w`` (may be an input, e.g. ``model_output``
            or a history tensor).
        hist: up to six tensors ``h1..h6`` (earlier converted outputs, solver stages).
        noise: optional noise tensor ``z``; or ``seed`` (and ``offset``) to draw it in-kernel from Philox; or
            ``rng``, an int64 device tensor ``[key bits, offset base]`` read by the kernel (graph replays).
        threshold: optional per-sample dynamic-thresholding scale ``s`` (see ``dynamic_threshold``).
        m2: optional second model output (CFG: the conditional output with ``m`` the unconditional one; classifier
            guidance: the gradient), weighted by columns ``M1``, ``M2`` and ``G``.
        var: optional per-element variance input ``v`` (learned variances), through columns ``VA``, ``VB``.
        backend: ``None`` (automatic), ``"reference"``, ``"cpu"``, ``"cuda"``, ``"cuda-jit"`` or ``"triton"``.

    Returns:
        ``out`` (a new tensor unless given). The call goes through the PyTorch operator ``torch.ops.pydiff.fused_step``
        (``pydiff.ops.library``), so it compiles under ``torch.compile`` without a graph break. When autograd
        records (a differentiable input requires grad) it runs ``torch.ops.pydiff.fused_step_functional``, whose
        backward is the fused ``fused_step_backward`` op: gradients flow to x, model_output, hist, noise, m2 and
        var (the clip/threshold masks them as ``clamp`` does; ``coef`` and ``threshold`` are constants and must not
        require grad). Arrays of other libraries (NumPy, CuPy: anything with ``__dlpack__``) are taken zero-copy
        and the result is returned in the same library.
    """
    if not isinstance(x, torch.Tensor):
        return from_arrays(fused_step, x, model_output, coef, index=index, out=out, w_out=w_out, hist=hist,
                           noise=noise, seed=seed, offset=offset, rng=rng, threshold=threshold, m2=m2, var=var,
                           backend=backend)
    check_data("x", x)
    m = check_like("model_output", model_output, x, "x")
    if out is not None:
        out = check_output("out", out, x, "x")
    x = x.contiguous()  # a no-op when out is x (out was checked contiguous)
    if w_out is not None:
        w_out = check_output("w_out", w_out, x, "x")
    if isinstance(hist, torch.Tensor):
        raise TypeError("hist must be a tuple or list of tensors, not a tensor")
    hist = tuple(hist)
    if len(hist) > K_MAX:
        raise ValueError(f"hist holds at most {K_MAX} tensors, got {len(hist)}")
    hist = tuple(check_like(f"hist[{k}]", h, x, "x") for k, h in enumerate(hist))
    if noise is not None:
        noise = check_like("noise", noise, x, "x")
    seed, offset, rng = check_noise_args(seed, offset, rng, x, noise)
    if m2 is not None:
        m2 = check_like("m2", m2, x, "x")
    if var is not None:
        var = check_like("var", var, x, "x")
    B = x.shape[0]
    coef, index, index_stride, row_stride = normalize_rows(coef, index, B, x)
    if threshold is not None:
        threshold = check_threshold(threshold, x)
    if x.numel() == 0:
        return torch.empty_like(x) if out is None else out
    seed, offset = to_int64(seed), to_int64(offset)
    if library.needs_grad(x, m, noise, m2, var, coef, threshold, *hist):
        if library.needs_grad(coef, threshold):
            raise ValueError("fused_step does not differentiate with respect to coef or threshold: pass them "
                             "detached (they are constants of a plan)")
        for name, t in (("x", x), ("model_output", m), ("noise", noise), ("m2", m2), ("var", var)) + tuple(
                (f"hist[{k}]", h) for k, h in enumerate(hist)):
            for oname, o in (("out", out), ("w_out", w_out)):
                if o is not None and o is t:
                    raise ValueError(f"{oname} is {name} while autograd records: the gradient needs {name}'s "
                                     f"values, so it cannot be overwritten in place; leave {oname}=None (a new "
                                     "tensor), or sample under torch.no_grad()")
        res, w = fused_step_functional_op(x, m, coef, index, index_stride, row_stride, hist, noise, seed, offset,
                                          rng, threshold, m2, var, w_out is not None, backend)
        if w_out is not None:
            w_out.copy_(w)
        if out is None:
            return res
        return out.copy_(res)
    if out is None:
        out = torch.empty_like(x)
    (_run if library.eager(x) else fused_step_op)(x, m, coef, index, index_stride, row_stride, out, w_out, hist,
                                                  noise, seed, offset, rng, threshold, m2, var, backend)
    return out
