"""pydiff.kernels -- the Triton backend of pydiff's fused ops (one op, one module).

* ``fused_step``        (``fused_step.py``): the fused sampler update (DDIM / DDPM / DPM-Solver(++)).
* ``sumsq``             (``sumsq.py``): per-sample sums of squares of one or two sources.
* ``dynamic_threshold`` (``dynamic_threshold.py``): Imagen's dynamic-thresholding scale.
* ``philox_normal``     (``philox.py``): Philox4x32-10 normals, shared counter layout.

The functions take the normalized arguments of docs/ops.md (the ``pydiff.ops`` dispatcher validates
and normalizes first). They run on CUDA tensors, or on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1`` set before this package is imported). Float64 data is refused (TypeError).

The submodules share their op's name, so ``pydiff.kernels.fused_step`` (the attribute) is the function;
reach a module with ``importlib.import_module("pydiff.kernels.fused_step")``.

Importing this package never fails when Triton is missing or broken: ``available()`` is then False
and calling an op raises RuntimeError.
"""
from __future__ import annotations

import os

import torch

__all__ = ["available", "fused_step", "sumsq", "dynamic_threshold", "philox_normal"]

try:
    import triton  # noqa: F401

    from . import dynamic_threshold as _dynamic_threshold_mod
    from . import fused_step as _fused_step_mod
    from . import philox as _philox_mod
    from . import sumsq as _sumsq_mod

    _IMPORT_ERROR: BaseException | None = None
except Exception as exc:  # ImportError, or a triton install that fails on import
    _IMPORT_ERROR = exc


def available() -> bool:
    """True when Triton imports and can run: a CUDA device, or ``TRITON_INTERPRET=1``."""
    if _IMPORT_ERROR is not None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _unavailable(op: str):
    raise RuntimeError(
        f"pydiff.kernels.{op}: the triton backend is unavailable "
        f"({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); install triton or use another backend"
    ) from _IMPORT_ERROR


def fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist, noise, seed, offset,
               threshold) -> None:
    """See ``pydiff.kernels.fused_step`` module and docs/ops.md."""
    if _IMPORT_ERROR is not None:
        _unavailable("fused_step")
    return _fused_step_mod.fused_step(x, m, coef, index, index_stride, row_stride, out, w_out, hist,
                                      noise, seed, offset, threshold)


def sumsq(a, b, seed, offset) -> torch.Tensor:
    """See ``pydiff.kernels.sumsq`` module and docs/ops.md."""
    if _IMPORT_ERROR is not None:
        _unavailable("sumsq")
    return _sumsq_mod.sumsq(a, b, seed, offset)


def dynamic_threshold(x, m, coef, index, index_stride, row_stride, ratio, max_val) -> torch.Tensor:
    """See ``pydiff.kernels.dynamic_threshold`` module and docs/ops.md."""
    if _IMPORT_ERROR is not None:
        _unavailable("dynamic_threshold")
    return _dynamic_threshold_mod.dynamic_threshold(x, m, coef, index, index_stride, row_stride, ratio,
                                                    max_val)


def philox_normal(out, seed, offset) -> None:
    """See ``pydiff.kernels.philox`` module and docs/ops.md."""
    if _IMPORT_ERROR is not None:
        _unavailable("philox_normal")
    return _philox_mod.philox_normal(out, seed, offset)
