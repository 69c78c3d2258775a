"""One Langevin corrector step in two passes: the norms, then the update.

Song et al.'s corrector (score SDE, arXiv:2011.13456, Algorithms 4 and 5) takes a step whose size depends on
the norms of the score ``s = kappa m`` and of the noise ``z`` it is about to add::

    pass 1   S_m[b] = sum m_b^2,   S_z[b] = sum z_b^2                      (per sample, in the compute type)
    batch    eps_b = c_b (mean_b sqrt(S_z) / mean_b sqrt(S_m))^2           (score_sde's LangevinCorrector)
    sample   eps_b = c_b S_z[b] / S_m[b]                                   (the paper's per-sample norms)
    pass 2   x_mean = x + eps_b kappa_b m,   x' = x_mean + sqrt(2 eps_b) z

with ``(c, kappa)`` per step from a plan (``pydiff.plans.score_sde.langevin_host``: ``c = 2 alpha r^2 /
kappa^2`` for signal-to-noise ratio ``r``). Nothing between the passes leaves the device: the step sizes are
computed by the kernel from the sums (no host sync, no ``.item()``), so a whole predictor-corrector loop runs
without synchronising. With Philox noise (``seed`` or ``rng``) the second pass regenerates the very ``z`` of
the first from the same counters; no noise tensor exists. docs/ops.md, "langevin_step", is the contract.
"""
from __future__ import annotations

import torch

from . import _contract as contract, library
from ._interop import from_arrays
from ._validate import (check_data, check_like, check_noise_args, check_output, check_overlap, compute_dtype, to_int64,
                        to_uint64)
from .columns import COL, NCOEF, coef_row
from .dispatch import dispatch, resolve_backend
from .fused_step import fused_step_reference
from .sumsq import sumsq_reference

NORMS = ("batch", "sample")


def langevin_rows_reference(sums, coef, coef_stride, sample_norm):
    """``(B, NCOEF)`` fused_step rows from the sums ``(2, B)`` and the parameters ``coef`` ``(R, 2)``, in their
    dtype ``T``, with the arithmetic of ``pydiff_math.h``'s ``langevin_rows`` (the batch means add the samples in
    order: ``cumsum`` is that sequential sum)."""
    B = sums.shape[1]
    sm, sz = sums[0], sums[1]
    p = coef if coef_stride else coef[0:1].expand(B, 2)
    if sample_norm:
        eps = p[:, 0] * (sz / sm)
    else:
        nm = sm.sqrt().cumsum(0)[-1] / B
        nz = sz.sqrt().cumsum(0)[-1] / B
        r = nz / nm
        eps = p[:, 0] * (r * r)
    base = torch.as_tensor(coef_row(P=1.0, B0=1.0), dtype=sums.dtype, device=sums.device)
    rows = base.expand(B, NCOEF).clone()
    rows[:, COL["Q"]] = eps * p[:, 1]
    rows[:, COL["C"]] = torch.sqrt(2.0 * eps)
    return rows


def langevin_step_reference(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng):
    """Plain-PyTorch twin (normalized signature, docs/ops.md): sumsq, the rows, fused_step."""
    sums = sumsq_reference(m, noise, seed, offset, rng)
    rows = langevin_rows_reference(sums, coef, coef_stride, sample_norm)
    fused_step_reference(x, m, rows, None, 0, 1, out, w_out, (), noise, seed, offset, rng, None, None, None)


def _run(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng, backend):
    check_overlap((("out", out), ("w_out", w_out)), (("x", x), ("model_output", m), ("noise", noise)),
                  (("coef", coef), ("rng", rng)))
    impl = dispatch("langevin_step", resolve_backend(backend, x, "langevin_step"))
    impl(x, m, coef, int(coef_stride), bool(sample_norm), out, w_out, noise, to_uint64(seed), to_uint64(offset), rng)


def _fake(x, m, coef, coef_stride, sample_norm, out, w_out, noise, seed, offset, rng, backend):
    return None


#: ``pydiff::langevin_step``: writes ``out`` (and ``w_out``) in place
langevin_step_op = library.define(
    "langevin_step",
    "(Tensor x, Tensor m, Tensor coef, int coef_stride, bool sample_norm, Tensor(a!) out, Tensor(b!)? w_out, "
    "Tensor? noise, SymInt? seed, SymInt offset, Tensor? rng, str? backend) -> ()", _run, _fake,
    check=contract.langevin_step, mutating_inputs=(0, 1, 7))


def check_langevin_coef(coef, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``coef`` as a contiguous ``(R, 2)`` table of ``(c, kappa)`` in the compute dtype on ``x``'s device, and its
    row stride (0: one pair for the batch, 1: one per sample)."""
    T = compute_dtype(x.dtype)
    if not isinstance(coef, torch.Tensor):
        raise TypeError(f"coef must be a torch.Tensor of (c, kappa), got {type(coef).__name__}")
    if coef.dtype != T:
        raise TypeError(f"coef must be {T} for {x.dtype} data (the compute dtype), got {coef.dtype}")
    if coef.device != x.device:
        raise ValueError(f"coef is on {coef.device} but x is on {x.device}")
    B = x.shape[0]
    if coef.shape == (2,):
        return coef.reshape(1, 2).contiguous(), 0
    if coef.shape == (B, 2):
        return coef.contiguous(), 1
    raise ValueError(f"coef must have shape (2,) or (B, 2) = ({B}, 2) of (c, kappa), got {tuple(coef.shape)}")


def langevin_step(x: torch.Tensor, model_output: torch.Tensor, coef: torch.Tensor, *, norm: str = "batch",
                  out: torch.Tensor | None = None, w_out: torch.Tensor | None = None,
                  noise: torch.Tensor | None = None, seed: int | None = None, offset: int = 0, rng=None,
                  backend: str | None = None) -> torch.Tensor:
    """One Langevin corrector step (formula in the module docstring; contract in docs/ops.md).

    Args:
        x: current sample, shape ``(B, ...)``, float16/bfloat16/float32 (float64 on reference/cpu).
        model_output: ``m``, same shape, dtype and device; the score is ``kappa m``.
        coef: ``(2,)`` tensor ``(c, kappa)`` for the whole batch or ``(B, 2)`` per sample, in the compute dtype
            (float32; float64 for float64 data) on ``x``'s device: ``eps = c (||z|| / ||m||)^2``, ``Q = eps kappa``.
        norm: ``'batch'`` (the norms are batch means of per-sample L2 norms, as score_sde and diffusers compute
            them) or ``'sample'`` (each sample its own norms, Algorithms 4/5 of the paper).
        out: where to write ``x'`` (may be ``x``); a new tensor by default.
        w_out: optional output for ``x_mean`` (may be ``model_output``).
        noise: the noise ``z`` as a tensor; or ``seed`` (and ``offset``), or ``rng`` (an int64 device tensor
            ``[key bits, offset base]``), to generate it inside both passes (Philox, as ``fused_step``). Exactly
            one of ``noise``, ``seed`` and ``rng``.
        backend: as for ``fused_step``.

    Returns:
        ``out``. Runs the operator ``torch.ops.pydiff.langevin_step`` (``torch.compile`` sees it without a graph
        break). Not differentiable: asking for a gradient raises. A zero score (``S_m = 0``) makes the step
        infinite and ``x + eps s`` = inf * 0 = NaN, as score_sde's and diffusers' correctors give it (their
        step size divides by the norm too): an all-zero score has no Langevin step.
    """
    if not isinstance(x, torch.Tensor):
        return from_arrays(langevin_step, x, model_output, coef, norm=norm, out=out, w_out=w_out, noise=noise,
                           seed=seed, offset=offset, rng=rng, backend=backend)
    check_data("x", x)
    m = check_like("model_output", model_output, x, "x")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if out is not None:
        out = check_output("out", out, x, "x")
    x = x.contiguous()
    if w_out is not None:
        w_out = check_output("w_out", w_out, x, "x")
    if noise is not None:
        noise = check_like("noise", noise, x, "x")
    seed, offset, rng = check_noise_args(seed, offset, rng, x, noise)
    if noise is None and seed is None and rng is None:
        raise ValueError("langevin_step needs its noise: give noise, seed or rng")
    coef, coef_stride = check_langevin_coef(coef, x)
    if library.needs_grad(x, m, noise, coef):
        raise RuntimeError("pydiff.ops.langevin_step has no backward: no gradient flows to x, model_output, noise "
                           "or coef. Detach its inputs, or compute the step with differentiable torch operations "
                           "(sumsq and fused_step are differentiable in the data).")
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    seed, offset = to_int64(seed), to_int64(offset)
    (_run if library.eager(x) else langevin_step_op)(x, m, coef, coef_stride, norm == "sample", out, w_out, noise,
                                                     seed, offset, rng, backend)
    return out
